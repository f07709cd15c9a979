//! What `up` needs beyond converging resources: release artifacts in the bucket, the
//! public URL, waiting until the load balancer has healthy targets, and the record of
//! each deploy (`deploys/` in the bucket, which `provision releases` lists).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::aws::{error_kind, Aws, ErrorKind};

/// The binaries a release is made of.
pub const ARTIFACTS: [&str; 2] = ["api", "worker"];

/// `artifacts/<release>/<name>`: where instances download a service's binary from.
pub fn artifact_key(release: &str, name: &str) -> String {
    format!("artifacts/{release}/{name}")
}

/// The checksum file next to an artifact, in `sha256sum` format so instances check it
/// with `sha256sum --check`.
pub fn checksum_line(digest: &str, name: &str) -> String {
    format!("{digest}  {name}\n")
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// An object or bucket that is not there. S3 answers a HEAD (and, through some
/// emulators, a GET) of a missing key with a bare 404 that carries no error code.
fn is_missing<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    error_kind(e) == ErrorKind::NotFound
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

/// One run of `up`: which release, who, when, and how it ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeployRecord {
    pub release: String,
    /// The STS caller that ran it.
    pub who: String,
    /// RFC 3339.
    pub started: String,
    pub seconds: f64,
    pub succeeded: bool,
    /// "rolled out", "applied; the rollout goes on …", or the error's first line.
    pub outcome: String,
}

/// Where deploy records are kept: one object each (no read-modify-write to race), named
/// so that they list oldest first.
const DEPLOYS_PREFIX: &str = "deploys/";

/// How many deploy records `provision releases` shows.
const DEPLOYS_SHOWN: usize = 20;

impl Aws {
    /// Appends `record` to the stack's deploy history.
    pub async fn record_deploy(&self, bucket: &str, record: &DeployRecord) -> anyhow::Result<()> {
        let started = chrono::DateTime::parse_from_rfc3339(&record.started)
            .context("a deploy record's start is RFC 3339")?;
        let key = format!(
            "{DEPLOYS_PREFIX}{}-{}.json",
            started.format("%Y%m%dT%H%M%S%.3fZ"),
            record.release
        );
        let written = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .expected_bucket_owner(&self.account_id)
            .content_type("application/json")
            .body(serde_json::to_vec(record)?.into())
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            // An `up` that stopped before there was a bucket deployed nothing to record.
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("write s3://{bucket}/{key}")),
        }
    }

    /// The last deploy records, oldest first.
    pub async fn deploy_records(&self, bucket: &str) -> anyhow::Result<Vec<DeployRecord>> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(DEPLOYS_PREFIX)
            .expected_bucket_owner(&self.account_id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_owned)),
                ),
                Err(e) if is_missing(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("list s3://{bucket}/deploys/")),
            }
        }
        keys.sort();
        let newest = &keys[keys.len().saturating_sub(DEPLOYS_SHOWN)..];
        let mut records = Vec::new();
        for key in newest {
            if let Some(text) = self.read_object(bucket, key).await? {
                match serde_json::from_str(&text) {
                    Ok(record) => records.push(record),
                    Err(e) => eprintln!("  skipping s3://{bucket}/{key}: {e}"),
                }
            }
        }
        Ok(records)
    }

    /// The text of an object, or `None` when it does not exist.
    async fn read_object(&self, bucket: &str, key: &str) -> anyhow::Result<Option<String>> {
        let read = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .expected_bucket_owner(&self.account_id)
            .send()
            .await;
        match read {
            Ok(object) => {
                let bytes = object.body.collect().await?.into_bytes();
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                Err(e).with_context(|| format!("read s3://{bucket}/{key} (HTTP {status:?})"))
            }
        }
    }

    /// Uploads each `(name, file)` to `artifacts/<release>/<name>`, then its checksum: a
    /// checksum present means its artifact is complete. An artifact already there with
    /// the same checksum is skipped; a different one is refused (releases are immutable).
    pub async fn publish(
        &self,
        bucket: &str,
        release: &str,
        files: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<()> {
        for (name, path) in files {
            let digest = sha256_of(path)?;
            let key = artifact_key(release, name);
            let checksum_key = format!("{key}.sha256");
            let line = checksum_line(&digest, name);
            match self.read_object(bucket, &checksum_key).await? {
                Some(existing) if existing == line => {
                    eprintln!("  s3://{bucket}/{key} is already published (sha256 {digest})");
                    continue;
                }
                Some(existing) => anyhow::bail!(
                    "release {release} already has a different {name} (sha256 {}); \
                     publish this build under a new release name",
                    existing.split_whitespace().next().unwrap_or("?")
                ),
                None => {}
            }
            let size = std::fs::metadata(path)?.len();
            let started = Instant::now();
            let body = aws_sdk_s3::primitives::ByteStream::from_path(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            self.s3
                .put_object()
                .bucket(bucket)
                .key(&key)
                .expected_bucket_owner(&self.account_id)
                .body(body)
                .send()
                .await
                .with_context(|| format!("upload {} to s3://{bucket}/{key}", path.display()))?;
            self.s3
                .put_object()
                .bucket(bucket)
                .key(&checksum_key)
                .expected_bucket_owner(&self.account_id)
                .content_type("text/plain")
                .body(line.into_bytes().into())
                .send()
                .await
                .with_context(|| format!("upload s3://{bucket}/{checksum_key}"))?;
            eprintln!(
                "  published s3://{bucket}/{key} ({:.1} MB in {:.1} s, sha256 {digest})",
                size as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// The SHA-256 of each of `release`'s binaries that is published, by name, as its
    /// checksum object says (the checksum is written after its binary, so one present
    /// means the binary is complete).
    pub async fn published_digests(
        &self,
        bucket: &str,
        release: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut digests = BTreeMap::new();
        for name in ARTIFACTS {
            let key = format!("{}.sha256", artifact_key(release, name));
            if let Some(line) = self.read_object(bucket, &key).await? {
                let digest = line.split_whitespace().next().unwrap_or_default();
                anyhow::ensure!(
                    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                    "s3://{bucket}/{key} holds no SHA-256: {line:?}"
                );
                digests.insert((*name).to_owned(), digest.to_ascii_lowercase());
            }
        }
        Ok(digests)
    }

    /// The load balancer's DNS name, once it exists.
    pub async fn load_balancer_dns(&self) -> anyhow::Result<Option<String>> {
        let name = crate::names::load_balancer_name(&self.stack);
        match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(found) => Ok(found
                .load_balancers()
                .first()
                .and_then(|lb| lb.dns_name())
                .map(str::to_owned)),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("describe the load balancer"),
        }
    }

    /// Waits until at least `wanted` targets behind the load balancer are healthy,
    /// saying how many are and for how long it has waited.
    pub async fn wait_for_healthy_targets(
        &self,
        wanted: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let name = crate::names::target_group_name(&self.stack);
        let groups = self
            .elb
            .describe_target_groups()
            .names(&name)
            .send()
            .await
            .context("describe the target group")?;
        let arn = groups
            .target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
            .context("the target group does not exist")?
            .to_owned();
        let started = Instant::now();
        let mut wait = stack_config::progress::Wait::start(
            "healthy targets behind the load balancer",
            "instances install and start in 2–4 min",
        );
        loop {
            let health = self
                .elb
                .describe_target_health()
                .target_group_arn(&arn)
                .send()
                .await
                .context("describe target health")?;
            let states: Vec<&str> = health
                .target_health_descriptions()
                .iter()
                .filter_map(|t| t.target_health().and_then(|h| h.state()))
                .map(|s| s.as_str())
                .collect();
            let healthy = states.iter().filter(|s| **s == "healthy").count();
            if healthy >= wanted {
                wait.done(&format!("{healthy} healthy"));
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "after {:.0} min, {healthy} of the {wanted} web instance(s) wanted are healthy \
                 (targets: {states:?}); read the instances' logs (see below) and run `up` again",
                timeout.as_secs_f64() / 60.0
            );
            wait.status(
                &format!("{healthy} of {wanted} healthy, {} registered", states.len()),
                Some(100.0 * healthy as f64 / wanted.max(1) as f64),
            );
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_in_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api");
        std::fs::write(&file, b"abc").unwrap();
        let digest = sha256_of(&file).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            checksum_line(&digest, "api"),
            format!("{digest}  api\n"),
            "two spaces: what `sha256sum --check` reads"
        );
        assert_eq!(artifact_key("r1", "api"), "artifacts/r1/api");
    }
}
