//! Snapshots: the final one `down` (and `up --replace-database`) takes, and the
//! restore `up --restore-from` makes from one.

use anyhow::Context;
use aws_sdk_rds::types::Tag;

use super::{rds_tags, POLL, RESTORED_FROM_TAG};
use stack_config::progress::Wait;

use crate::aws::{Aws, Ids};
use crate::model::Props;

/// Creates the instance from `snapshot` (`up --restore-from`): its data, database name
/// and master user come from the snapshot, the rest from the configuration. The tag
/// `anb:restored-from` records where it came from.
pub(super) async fn restore(
    aws: &Aws,
    name: &str,
    snapshot: &str,
    p: &Props,
    ids: &Ids,
) -> anyhow::Result<()> {
    let found = aws
        .rds
        .describe_db_snapshots()
        .db_snapshot_identifier(snapshot)
        .send()
        .await
        .with_context(|| {
            format!("find snapshot {snapshot} (`aws rds describe-db-snapshots` lists them)")
        })?;
    let status = found
        .db_snapshots()
        .first()
        .and_then(|s| s.status())
        .unwrap_or("unknown");
    anyhow::ensure!(
        status == "available",
        "snapshot {snapshot} is {status}, not available yet"
    );
    eprintln!("  restoring {name} from snapshot {snapshot}");
    let [stack_tag, name_tag] = rds_tags(aws, name);
    aws.rds
        .restore_db_instance_from_db_snapshot()
        .db_instance_identifier(name)
        .db_snapshot_identifier(snapshot)
        .db_instance_class(&p["instance_class"])
        .multi_az(p["multi_az"] == "true")
        .publicly_accessible(p["public"] == "true")
        .db_subnet_group_name(&p["subnet_group"])
        .db_parameter_group_name(&p["parameter_group"])
        .vpc_security_group_ids(ids.id_of(&p["security_groups"])?)
        .manage_master_user_password(p["managed_password"] == "true")
        .deletion_protection(p["deletion_protection"] == "true")
        .tags(stack_tag)
        .tags(name_tag)
        .tags(
            Tag::builder()
                .key(RESTORED_FROM_TAG)
                .value(snapshot)
                .build(),
        )
        .send()
        .await
        .with_context(|| format!("restore {name} from snapshot {snapshot}"))?;
    Ok(())
}

/// `<stack>-final-<UTC date>-<time>`: a valid snapshot identifier for any valid stack name
/// (letters, digits and single hyphens).
pub(super) fn final_snapshot_name(stack: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{stack}-final-{}", at.format("%Y%m%d-%H%M%S"))
}

pub(super) async fn wait_for_snapshot(aws: &Aws, snapshot: &str) -> anyhow::Result<()> {
    let mut wait = Wait::start(format!("snapshot {snapshot}"), "minutes per 10 GB");
    loop {
        let found = aws
            .rds
            .describe_db_snapshots()
            .db_snapshot_identifier(snapshot)
            .send()
            .await
            .with_context(|| format!("describe snapshot {snapshot}"))?;
        let first = found.db_snapshots().first();
        let status = first
            .and_then(|s| s.status())
            .unwrap_or("unknown")
            .to_owned();
        let percent = first.and_then(|s| s.percent_progress()).map(f64::from);
        match status.as_str() {
            "available" => {
                wait.done("available");
                return Ok(());
            }
            "failed" | "error" => anyhow::bail!("snapshot {snapshot} is {status}"),
            _ => {}
        }
        wait.status(&status, percent);
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn final_snapshots_are_named_after_the_stack_and_the_time() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 17, 5, 9).unwrap();
        let name = final_snapshot_name("anb-staging", at);
        assert_eq!(name, "anb-staging-final-20261201-170509");
        // What RDS accepts: a letter first, letters, digits and single hyphens.
        assert!(name.starts_with(|c: char| c.is_ascii_alphabetic()));
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(!name.contains("--") && !name.ends_with('-'));
    }
}
