//! The videos bucket (S3): public access blocked, encrypted by default, TLS only when AWS
//! is reached over TLS, cross-origin reads allowed (for presigned downloads from the page),
//! tagged with the stack; emptied (every version) before it is deleted.

use anyhow::Context;

use crate::aws::{error_kind, observed, Aws, DeleteError, ErrorKind, Ids, STACK_TAG};
use crate::model::{Change, Kind, Observed, Resource};

/// Most rounds of listing and deleting object versions before `down` gives up on a bucket
/// (1 000 versions a round): a bucket that never empties is reported, not looped on.
const MAX_EMPTYING_ROUNDS: usize = 10_000;

/// The bucket; `over_tls` false (an emulator on plain HTTP) leaves out the TLS-only policy,
/// which would deny this very tool's requests. With `access_logs` (the Elastic Load
/// Balancing account of the region, and the stack's), the load balancer may write its
/// logs under `alb-logs/`.
pub(crate) fn desired(name: String, over_tls: bool, access_logs: Option<(&str, &str)>) -> Resource {
    let mut statements = Vec::new();
    if over_tls {
        statements.push(deny_insecure_transport(&name));
    }
    if let Some((writer, account)) = access_logs {
        statements.push(serde_json::json!({
            "Sid": "LoadBalancerAccessLogs",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{writer}:root")},
            "Action": "s3:PutObject",
            "Resource": format!("arn:aws:s3:::{name}/{ACCESS_LOGS_PREFIX}/AWSLogs/{account}/*"),
        }));
    }
    let policy = if statements.is_empty() {
        String::new()
    } else {
        serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
    };
    Resource::new(
        Kind::Bucket,
        name,
        &[
            ("block_public_access", "true".into()),
            ("encryption", "AES256".into()),
            ("policy", policy),
            ("cross_origin", CROSS_ORIGIN_READS.into()),
        ],
    )
}

/// The bucket's only CORS rule. The API answers a download with a redirect to a presigned
/// URL; the page's script follows it with `fetch`, which S3 then answers cross-origin
/// (after a cross-origin redirect the request's origin is opaque, hence `*`). A presigned
/// URL is itself the credential, and public access stays blocked: the rule lets a browser
/// read what the URL already grants, nothing more.
const CROSS_ORIGIN_READS: &str = "GET, HEAD from *";

/// The rule [`CROSS_ORIGIN_READS`] describes.
fn cross_origin_reads() -> Result<aws_sdk_s3::types::CorsRule, aws_sdk_s3::error::BuildError> {
    aws_sdk_s3::types::CorsRule::builder()
        .allowed_methods("GET")
        .allowed_methods("HEAD")
        .allowed_origins("*")
        .max_age_seconds(3600)
        .build()
}

/// The CORS rules as `METHODS from ORIGINS`, `; `-separated: one canonical text to compare.
fn describe_cors(rules: &[aws_sdk_s3::types::CorsRule]) -> String {
    rules
        .iter()
        .map(|rule| {
            format!(
                "{} from {}",
                rule.allowed_methods().join(", "),
                rule.allowed_origins().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the load balancer writes its access logs, when it does.
pub(crate) const ACCESS_LOGS_PREFIX: &str = "alb-logs";

/// Denies every request not made over TLS. The policy is compared as normalised JSON, so
/// any statement added by hand (a cross-account Allow, say) is drift that `up` removes.
fn deny_insecure_transport(bucket: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })
}

/// A policy document in one canonical form (keys sorted, no spacing); text that is not
/// JSON stays as it is, and differs.
fn normalised_policy(policy: &str) -> String {
    serde_json::from_str::<serde_json::Value>(policy)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| policy.to_owned())
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

/// The bucket, when it exists in this account and carries the stack's tag. Every call
/// names the account as the expected owner, so a bucket of the same name in another
/// account is never read or written.
pub(crate) async fn observe(aws: &Aws, bucket: &str) -> anyhow::Result<Vec<Observed>> {
    let owner = aws.account_id.as_str();
    match aws
        .s3
        .head_bucket()
        .bucket(bucket)
        .expected_bucket_owner(owner)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "bucket {bucket} is not readable as account {owner}'s (another account may own that name)"
                )
            })
        }
    }
    let tags = setting(
        aws.s3
            .get_bucket_tagging()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await,
        "tags",
    )?;
    let owned = tags.is_some_and(|t| {
        t.tag_set()
            .iter()
            .any(|t| aws.is_stack_tag(Some(t.key()), Some(t.value())))
    });
    if !owned {
        anyhow::bail!(
            "bucket {bucket} exists but is not tagged {STACK_TAG}={}: it is not this stack's, \
             so it is neither changed nor deleted (tag it by hand if it is, or choose \
             another stack name)",
            aws.stack
        );
    }
    let block = setting(
        aws.s3
            .get_public_access_block()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await,
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
        aws.s3
            .get_bucket_encryption()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await,
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
        aws.s3
            .get_bucket_policy()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await,
        "policy",
    )?
    .and_then(|r| r.policy().map(normalised_policy))
    .unwrap_or_default();
    let cross_origin = setting(
        aws.s3
            .get_bucket_cors()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await,
        "cross-origin rules",
    )?
    .map(|r| describe_cors(r.cors_rules()))
    .unwrap_or_default();
    Ok(vec![observed(
        Kind::Bucket,
        bucket.to_owned(),
        bucket.to_owned(),
        &[
            ("block_public_access", blocked.to_string()),
            ("encryption", encryption),
            ("policy", policy),
            ("cross_origin", cross_origin),
        ],
    )])
}

pub(crate) async fn create(aws: &Aws, change: &Change, _: &Ids) -> anyhow::Result<String> {
    let (name, p) = (change.name.as_str(), &change.desired);
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
    match create.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
        {
            anyhow::bail!(
                "bucket {name} already exists in this account without the tag {STACK_TAG}={}: \
                 it is not this stack's, so it is left alone (tag it by hand if it is, or \
                 choose another stack name)",
                aws.stack
            )
        }
        Err(e) => return Err(e.into()),
    }
    // Tagged first: from here on the bucket is this stack's, even if a later step fails.
    tag(aws, name).await?;
    secure(aws, name, &p["policy"]).await?;
    Ok(name.to_owned())
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, _: &Ids) -> anyhow::Result<()> {
    let p = &change.desired;
    secure(aws, id, &p["policy"]).await
}

pub(crate) async fn delete(aws: &Aws, _: Kind, id: &str) -> Result<(), DeleteError> {
    empty_and_delete(aws, id).await.map_err(DeleteError::Other)
}

/// Blocks public access, sets default encryption, sets `policy` as the bucket's whole
/// policy (none when empty), and [`CROSS_ORIGIN_READS`] as its only CORS rule.
async fn secure(aws: &Aws, bucket: &str, policy: &str) -> anyhow::Result<()> {
    let owner = aws.account_id.as_str();
    use aws_sdk_s3::types::{
        CorsConfiguration, PublicAccessBlockConfiguration, ServerSideEncryption,
        ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    };
    aws.s3
        .put_bucket_cors()
        .bucket(bucket)
        .expected_bucket_owner(owner)
        .cors_configuration(
            CorsConfiguration::builder()
                .cors_rules(cross_origin_reads()?)
                .build()?,
        )
        .send()
        .await
        .context("set the bucket's cross-origin rule")?;
    aws.s3
        .put_public_access_block()
        .bucket(bucket)
        .expected_bucket_owner(owner)
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
        .expected_bucket_owner(owner)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(rule)
                .build()?,
        )
        .send()
        .await?;
    if policy.is_empty() {
        aws.s3
            .delete_bucket_policy()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send()
            .await?;
    } else {
        aws.s3
            .put_bucket_policy()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .policy(policy)
            .send()
            .await?;
    }
    Ok(())
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
        .expected_bucket_owner(&aws.account_id)
        .tagging(tagging)
        .send()
        .await?;
    Ok(())
}

/// Removes every object version and delete marker, then the bucket.
async fn empty_and_delete(aws: &Aws, bucket: &str) -> anyhow::Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for _ in 0..MAX_EMPTYING_ROUNDS {
        let listed = aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .expected_bucket_owner(&aws.account_id)
            .send()
            .await?;
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
            aws.s3
                .delete_bucket()
                .bucket(bucket)
                .expected_bucket_owner(&aws.account_id)
                .send()
                .await?;
            return Ok(());
        }
        let deleted = aws
            .s3
            .delete_objects()
            .bucket(bucket)
            .expected_bucket_owner(&aws.account_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cross_origin_rule_set_is_the_one_read_back() {
        assert_eq!(
            describe_cors(&[cross_origin_reads().unwrap()]),
            CROSS_ORIGIN_READS
        );
        assert_eq!(describe_cors(&[]), "");
    }
}
