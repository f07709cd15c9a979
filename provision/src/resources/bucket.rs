//! The videos bucket (S3): public access blocked, encrypted by default, TLS only when AWS
//! is reached over TLS, tagged with the stack; emptied (every version) before it is deleted.

use anyhow::Context;

use crate::aws::{error_kind, observed, Aws, DeleteError, ErrorKind, STACK_TAG};
use crate::model::{Kind, Observed, Props, Resource};

/// Most rounds of listing and deleting object versions before `down` gives up on a bucket
/// (1 000 versions a round): a bucket that never empties is reported, not looped on.
const MAX_EMPTYING_ROUNDS: usize = 10_000;

/// The bucket; `over_tls` false (an emulator on plain HTTP) leaves out the TLS-only policy,
/// which would deny this very tool's requests.
pub(crate) fn desired(name: String, over_tls: bool) -> Resource {
    Resource::new(
        Kind::Bucket,
        name,
        &[
            ("block_public_access", "true".into()),
            ("encryption", "AES256".into()),
            ("tls_only", over_tls.to_string()),
        ],
    )
}

/// One of the bucket's settings: `None` when it is not set (S3 answers "no such
/// configuration"); any other error is an error, never "not set" (an access denied must
/// not read as drift that `up` would then "repair").
fn setting<T, E>(read: Result<T, E>, what: &str) -> anyhow::Result<Option<T>>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match read {
        Ok(value) => Ok(Some(value)),
        Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("read the bucket's {what}"))),
    }
}

pub(crate) async fn observe(aws: &Aws, bucket: &str) -> anyhow::Result<Vec<Observed>> {
    match aws.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("head bucket"),
    }
    let block = setting(
        aws.s3.get_public_access_block().bucket(bucket).send().await,
        "public access block",
    )?
    .and_then(|r| r.public_access_block_configuration().cloned());
    let blocked = block.is_some_and(|b| {
        b.block_public_acls() == Some(true)
            && b.ignore_public_acls() == Some(true)
            && b.block_public_policy() == Some(true)
            && b.restrict_public_buckets() == Some(true)
    });
    let encryption = setting(
        aws.s3.get_bucket_encryption().bucket(bucket).send().await,
        "encryption",
    )?
    .and_then(|r| r.server_side_encryption_configuration().cloned())
    .and_then(|c| {
        c.rules()
            .first()
            .and_then(|r| r.apply_server_side_encryption_by_default())
            .map(|d| d.sse_algorithm().as_str().to_owned())
    })
    .unwrap_or_default();
    let policy = setting(
        aws.s3.get_bucket_policy().bucket(bucket).send().await,
        "policy",
    )?
    .and_then(|r| r.policy().map(str::to_owned))
    .unwrap_or_default();
    Ok(vec![observed(
        Kind::Bucket,
        bucket.to_owned(),
        bucket.to_owned(),
        &[
            ("block_public_access", blocked.to_string()),
            ("encryption", encryption),
            (
                "tls_only",
                policy.contains("aws:SecureTransport").to_string(),
            ),
        ],
    )])
}

pub(crate) async fn create(aws: &Aws, name: &str, p: &Props) -> anyhow::Result<String> {
    let mut create = aws.s3.create_bucket().bucket(name);
    if aws.region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    aws.region.as_str(),
                ))
                .build(),
        );
    }
    create.send().await?;
    secure(aws, name, p["tls_only"] == "true").await?;
    Ok(name.to_owned())
}

pub(crate) async fn update(aws: &Aws, id: &str, p: &Props) -> anyhow::Result<()> {
    secure(aws, id, p["tls_only"] == "true").await
}

pub(crate) async fn delete(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    empty_and_delete(aws, id).await.map_err(DeleteError::Other)
}

async fn secure(aws: &Aws, bucket: &str, tls_only: bool) -> anyhow::Result<()> {
    use aws_sdk_s3::types::{
        PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
        ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    };
    aws.s3
        .put_public_access_block()
        .bucket(bucket)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await?;
    let default = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::Aes256)
        .build()?;
    let rule = ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(default)
        .build();
    aws.s3
        .put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(rule)
                .build()?,
        )
        .send()
        .await?;
    if !tls_only {
        aws.s3.delete_bucket_policy().bucket(bucket).send().await?;
        return tag(aws, bucket).await;
    }
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    });
    aws.s3
        .put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await?;
    tag(aws, bucket).await
}

async fn tag(aws: &Aws, bucket: &str) -> anyhow::Result<()> {
    let tagging = aws_sdk_s3::types::Tagging::builder()
        .tag_set(
            aws_sdk_s3::types::Tag::builder()
                .key(STACK_TAG)
                .value(&aws.stack)
                .build()?,
        )
        .build()?;
    aws.s3
        .put_bucket_tagging()
        .bucket(bucket)
        .tagging(tagging)
        .send()
        .await?;
    Ok(())
}

/// Removes every object version and delete marker, then the bucket.
async fn empty_and_delete(aws: &Aws, bucket: &str) -> anyhow::Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for _ in 0..MAX_EMPTYING_ROUNDS {
        let listed = aws.s3.list_object_versions().bucket(bucket).send().await?;
        let mut objects: Vec<ObjectIdentifier> = Vec::new();
        for v in listed.versions() {
            objects.push(
                ObjectIdentifier::builder()
                    .key(v.key().unwrap_or_default())
                    .set_version_id(v.version_id().map(str::to_owned))
                    .build()?,
            );
        }
        for m in listed.delete_markers() {
            objects.push(
                ObjectIdentifier::builder()
                    .key(m.key().unwrap_or_default())
                    .set_version_id(m.version_id().map(str::to_owned))
                    .build()?,
            );
        }
        if objects.is_empty() {
            aws.s3.delete_bucket().bucket(bucket).send().await?;
            return Ok(());
        }
        let deleted = aws
            .s3
            .delete_objects()
            .bucket(bucket)
            .delete(Delete::builder().set_objects(Some(objects)).build()?)
            .send()
            .await?;
        // Per-object refusals (object lock, a deny policy) come back as data, not as an
        // error: looping on them would never end.
        if let Some(refused) = deleted.errors().first() {
            anyhow::bail!(
                "cannot delete {} object(s) of bucket {bucket}, e.g. {}: {} {}",
                deleted.errors().len(),
                refused.key().unwrap_or_default(),
                refused.code().unwrap_or_default(),
                refused.message().unwrap_or_default()
            );
        }
    }
    anyhow::bail!(
        "bucket {bucket} still holds objects after {MAX_EMPTYING_ROUNDS} rounds of deleting"
    )
}
