//! One operator at a time: `up` and `down` hold a per-stack lock, an object that S3
//! creates only if it does not exist (a conditional put, `If-None-Match: *`, which S3
//! makes atomic). It names who holds it, since when and for what; a second run stops with
//! that line. A run that dies leaves it behind: `--force-unlock` takes it over.

use anyhow::Context;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use crate::aws::Aws;

/// Where the lock lives in the stack's bucket.
pub const LOCK_KEY: &str = "locks/stack.json";

/// A held lock; [`Lock::release`] gives it back.
#[derive(Debug)]
pub struct Lock {
    bucket: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Holder {
    who: String,
    since: String,
    command: String,
}

impl Aws {
    /// Takes the stack's lock for `command`, or says who holds it. With `force`, a lock
    /// left by a run that died is taken over. Without a bucket yet (a first `up` before
    /// any publish) there is nothing to lock in: `Ok(None)`.
    pub async fn lock(
        &self,
        bucket: &str,
        command: &str,
        force: bool,
    ) -> anyhow::Result<Option<Lock>> {
        let holder = Holder {
            who: self.caller.clone(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: command.to_owned(),
        };
        let body = serde_json::to_vec(&holder)?;
        let mut put = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(LOCK_KEY)
            .content_type("application/json")
            .body(ByteStream::from(body));
        if !force {
            put = put.if_none_match("*");
        }
        match put.send().await {
            Ok(_) => Ok(Some(Lock {
                bucket: bucket.to_owned(),
            })),
            Err(e) if e.code() == Some("NoSuchBucket") => Ok(None),
            Err(e) if e.code() == Some("PreconditionFailed") => {
                let held = self.lock_holder(bucket).await?;
                anyhow::bail!(
                    "stack {} is locked: {} has run `{}` since {}. Wait for it to end and run \
                     again; if that run is dead (killed, its machine gone), add --force-unlock",
                    self.stack,
                    held.who,
                    held.command,
                    held.since
                )
            }
            Err(e) => Err(e).with_context(|| format!("take the lock s3://{bucket}/{LOCK_KEY}")),
        }
    }

    async fn lock_holder(&self, bucket: &str) -> anyhow::Result<Holder> {
        let object = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(LOCK_KEY)
            .send()
            .await
            .with_context(|| format!("read the lock s3://{bucket}/{LOCK_KEY}"))?;
        let bytes = object.body.collect().await?.into_bytes();
        serde_json::from_slice(&bytes)
            .with_context(|| format!("s3://{bucket}/{LOCK_KEY} is no lock"))
    }
}

impl Lock {
    /// Gives the lock back (a bucket `down` deleted took it along).
    pub async fn release(self, aws: &Aws) -> anyhow::Result<()> {
        match aws
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .key(LOCK_KEY)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchBucket") => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("release the lock s3://{}/{LOCK_KEY}", self.bucket))
            }
        }
    }
}
