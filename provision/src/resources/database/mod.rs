//! RDS: the DB subnet group, the parameter group (TLS required) and the PostgreSQL
//! instance.

mod parameters;
mod snapshots;

use std::time::Duration;

use anyhow::Context;
use aws_sdk_rds::types::Tag;

use stack_config::progress::Wait;

use crate::aws::{error_kind, Aws, DeleteError, ErrorKind, Ids, NamesById, STACK_TAG};
use crate::config::Config;
use crate::model::{Change, Kind, Observed, Resource};
use crate::names::{database_name, db_parameter_group_name, db_subnet_group_name, Names};
use crate::Safeguards;

/// How often a wait on RDS asks again.
const POLL: Duration = Duration::from_secs(10);

/// The parameter that makes PostgreSQL on RDS refuse connections without TLS.
const FORCE_SSL: &str = "rds.force_ssl";

/// Set on a database `up --restore-from` created: the snapshot it came from.
pub const RESTORED_FROM_TAG: &str = "anb:restored-from";

/// RDS PostgreSQL in the private subnets, reachable only from the web and worker groups.
pub(crate) fn desired(n: &Names, config: &Config) -> Vec<Resource> {
    let db = &config.database;
    let subnets = db_subnet_group_name(&n.stack);
    let parameters = db_parameter_group_name(&n.stack);
    vec![
        Resource::new(
            Kind::DbParameterGroup,
            &parameters,
            &[
                ("family", format!("postgres{}", db.engine_version)),
                // Connections without TLS are refused by the server itself.
                (FORCE_SSL, "1".into()),
            ],
        ),
        Resource::new(
            Kind::DbSubnetGroup,
            &subnets,
            &[(
                "subnets",
                format!("{},{}", n.of("private-a"), n.of("private-b")),
            )],
        ),
        Resource::new(
            Kind::Database,
            database_name(&n.stack),
            &[
                ("engine", "postgres".into()),
                ("engine_version", db.engine_version.clone()),
                ("instance_class", db.instance_class.clone()),
                ("allocated_storage", db.allocated_storage_gb.to_string()),
                ("multi_az", db.multi_az.to_string()),
                ("encrypted", "true".into()),
                ("public", "false".into()),
                ("subnet_group", subnets),
                ("parameter_group", parameters),
                ("security_groups", n.of("db")),
                ("managed_password", "true".into()),
                ("deletion_protection", "true".into()),
                (
                    "backup_retention_days",
                    db.backup_retention_days.to_string(),
                ),
                ("database_name", db.database_name.clone()),
                ("master_username", db.master_username.clone()),
            ],
        ),
    ]
}

/// Whether the RDS resource `arn` carries this stack's tag.
async fn tagged_for_stack(aws: &Aws, arn: Option<&str>) -> anyhow::Result<bool> {
    let Some(arn) = arn else { return Ok(false) };
    let tags = aws
        .rds
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await
        .with_context(|| format!("read the tags of {arn}"))?;
    Ok(tags
        .tag_list()
        .iter()
        .any(|t| aws.is_stack_tag(t.key(), t.value())))
}

fn rds_tags(aws: &Aws, name: &str) -> [Tag; 2] {
    [
        Tag::builder().key(STACK_TAG).value(&aws.stack).build(),
        Tag::builder().key("Name").value(name).build(),
    ]
}

pub(crate) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    let group_name = db_subnet_group_name(&aws.stack);
    match aws
        .rds
        .describe_db_subnet_groups()
        .db_subnet_group_name(&group_name)
        .send()
        .await
    {
        Ok(found) => {
            for g in found.db_subnet_groups() {
                // Found by name (RDS cannot filter by tag): only this stack's is read.
                if !tagged_for_stack(aws, g.db_subnet_group_arn()).await? {
                    continue;
                }
                let mut subnets: Vec<String> = g
                    .subnets()
                    .iter()
                    .filter_map(|s| s.subnet_identifier())
                    .map(|id| names.name_of(id))
                    .collect();
                subnets.sort();
                out.push(Observed {
                    resource: Resource::new(
                        Kind::DbSubnetGroup,
                        g.db_subnet_group_name().unwrap_or_default(),
                        &[("subnets", subnets.join(","))],
                    ),
                    id: g.db_subnet_group_name().unwrap_or_default().to_owned(),
                });
            }
        }
        Err(e) if error_kind(&e) == ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("describe DB subnet groups"),
    }
    out.extend(parameters::observe(aws).await?);
    // Every instance with the stack tag (RDS cannot filter by tag), so one the
    // configuration no longer names shows up as an orphan.
    let pages: Result<Vec<_>, _> = aws
        .rds
        .describe_db_instances()
        .into_paginator()
        .send()
        .collect()
        .await;
    match pages {
        Ok(pages) => {
            let tagged = pages.iter().flat_map(|p| p.db_instances()).filter(|db| {
                db.tag_list()
                    .iter()
                    .any(|t| aws.is_stack_tag(t.key(), t.value()))
            });
            for db in tagged {
                if db.db_instance_status() == Some("deleting") {
                    continue; // on its way out: `up` waits for nothing it will replace
                }
                let mut groups: Vec<String> = db
                    .vpc_security_groups()
                    .iter()
                    .filter_map(|g| g.vpc_security_group_id())
                    .map(|id| names.name_of(id))
                    .collect();
                groups.sort();
                out.push(Observed {
                    resource: Resource::new(
                        Kind::Database,
                        db.db_instance_identifier().unwrap_or_default(),
                        &[
                            ("engine", db.engine().unwrap_or_default().into()),
                            (
                                // The major version: minor upgrades are AWS's business.
                                "engine_version",
                                db.engine_version()
                                    .and_then(|v| v.split('.').next())
                                    .unwrap_or_default()
                                    .into(),
                            ),
                            (
                                "instance_class",
                                db.db_instance_class().unwrap_or_default().into(),
                            ),
                            (
                                "allocated_storage",
                                db.allocated_storage().unwrap_or_default().to_string(),
                            ),
                            ("multi_az", db.multi_az().unwrap_or(false).to_string()),
                            (
                                "encrypted",
                                db.storage_encrypted().unwrap_or(false).to_string(),
                            ),
                            (
                                "public",
                                db.publicly_accessible().unwrap_or(false).to_string(),
                            ),
                            (
                                "subnet_group",
                                db.db_subnet_group()
                                    .and_then(|g| g.db_subnet_group_name())
                                    .unwrap_or_default()
                                    .into(),
                            ),
                            (
                                "parameter_group",
                                db.db_parameter_groups()
                                    .first()
                                    .and_then(|g| g.db_parameter_group_name())
                                    .unwrap_or_default()
                                    .into(),
                            ),
                            ("security_groups", groups.join(",")),
                            (
                                "managed_password",
                                db.master_user_secret().is_some().to_string(),
                            ),
                            (
                                "deletion_protection",
                                db.deletion_protection().unwrap_or(false).to_string(),
                            ),
                            (
                                "backup_retention_days",
                                db.backup_retention_period().unwrap_or_default().to_string(),
                            ),
                            ("database_name", db.db_name().unwrap_or_default().into()),
                            (
                                "master_username",
                                db.master_username().unwrap_or_default().into(),
                            ),
                        ],
                    ),
                    id: db.db_instance_identifier().unwrap_or_default().to_owned(),
                });
            }
        }
        Err(e) if error_kind(&e) == ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("describe DB instances"),
    }
    Ok(out)
}

pub(crate) async fn create(
    aws: &Aws,
    change: &Change,
    ids: &Ids,
    safeguards: &Safeguards,
) -> anyhow::Result<String> {
    let (kind, name, p) = (change.kind, change.name.as_str(), &change.desired);
    let [stack_tag, name_tag] = rds_tags(aws, name);
    match kind {
        Kind::DbParameterGroup => {
            aws.rds
                .create_db_parameter_group()
                .db_parameter_group_name(name)
                .db_parameter_group_family(&p["family"])
                .description(format!("PostgreSQL settings of stack {}", aws.stack))
                .tags(stack_tag)
                .tags(name_tag)
                .send()
                .await?;
            parameters::set(aws, name, p).await?;
        }
        Kind::DbSubnetGroup => {
            let mut create = aws
                .rds
                .create_db_subnet_group()
                .db_subnet_group_name(name)
                .db_subnet_group_description(format!("private subnets of stack {}", aws.stack))
                .tags(stack_tag)
                .tags(name_tag);
            for subnet in p["subnets"].split(',') {
                create = create.subnet_ids(ids.id_of(subnet)?);
            }
            create.send().await?;
        }
        Kind::Database => {
            match &safeguards.restore_from {
                Some(snapshot) => snapshots::restore(aws, name, snapshot, p, ids).await?,
                None => {
                    aws.rds
                        .create_db_instance()
                        .db_instance_identifier(name)
                        .engine(&p["engine"])
                        .engine_version(&p["engine_version"])
                        .db_instance_class(&p["instance_class"])
                        .allocated_storage(p["allocated_storage"].parse()?)
                        .multi_az(p["multi_az"] == "true")
                        .storage_encrypted(p["encrypted"] == "true")
                        .publicly_accessible(p["public"] == "true")
                        .db_subnet_group_name(&p["subnet_group"])
                        .db_parameter_group_name(&p["parameter_group"])
                        .vpc_security_group_ids(ids.id_of(&p["security_groups"])?)
                        .db_name(&p["database_name"])
                        .master_username(&p["master_username"])
                        // AWS generates the password and keeps it in Secrets Manager.
                        .manage_master_user_password(p["managed_password"] == "true")
                        .deletion_protection(p["deletion_protection"] == "true")
                        .backup_retention_period(p["backup_retention_days"].parse()?)
                        .tags(stack_tag)
                        .tags(name_tag)
                        .send()
                        .await?;
                }
            }
            wait_until_available(aws, name).await?;
        }
        other => anyhow::bail!("{other} is not a database resource"),
    }
    Ok(name.to_owned())
}

/// The launch templates wait for the database (they name it), so instances boot into
/// a stack whose database answers instead of failing health checks for a quarter hour.
async fn wait_until_available(aws: &Aws, name: &str) -> anyhow::Result<()> {
    let mut wait = Wait::start(format!("RDS to create {name}"), "Multi-AZ takes 10–20 min");
    loop {
        let found = aws
            .rds
            .describe_db_instances()
            .db_instance_identifier(name)
            .send()
            .await
            .context("describe DB instances")?;
        let status = found
            .db_instances()
            .first()
            .and_then(|db| db.db_instance_status())
            .unwrap_or("unknown")
            .to_owned();
        if status == "available" {
            wait.done("available");
            return Ok(());
        }
        anyhow::ensure!(
            !matches!(
                status.as_str(),
                "failed" | "incompatible-parameters" | "storage-full"
            ),
            "database {name} is {status}"
        );
        wait.status(&status, None);
        tokio::time::sleep(POLL * 3).await;
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let (kind, p) = (change.kind, &change.desired);
    match kind {
        Kind::DbParameterGroup => parameters::set(aws, id, p).await?,
        Kind::DbSubnetGroup => {
            let subnets: Vec<String> = p["subnets"]
                .split(',')
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<_>>()?;
            aws.rds
                .modify_db_subnet_group()
                .db_subnet_group_name(id)
                .set_subnet_ids(Some(subnets))
                .send()
                .await?;
        }
        Kind::Database => {
            aws.rds
                .modify_db_instance()
                .db_instance_identifier(id)
                .db_instance_class(&p["instance_class"])
                .allocated_storage(p["allocated_storage"].parse()?)
                .multi_az(p["multi_az"] == "true")
                // Takes effect at the next reboot (RDS says "pending-reboot").
                .db_parameter_group_name(&p["parameter_group"])
                .publicly_accessible(p["public"] == "true")
                .vpc_security_group_ids(ids.id_of(&p["security_groups"])?)
                .manage_master_user_password(p["managed_password"] == "true")
                .deletion_protection(p["deletion_protection"] == "true")
                .backup_retention_period(p["backup_retention_days"].parse()?)
                .apply_immediately(true)
                .send()
                .await?;
        }
        other => anyhow::bail!("{other} is not a database resource"),
    }
    Ok(())
}

/// Deletes the instance and waits until it is gone, saying what it waits for; then the
/// subnet group can go. Deletion protection is lifted first (only this path does it).
/// Unless `down --skip-final-snapshot`, a final snapshot named after the stack and the
/// time is taken and waited for, and the automated backups are kept either way.
pub(crate) async fn delete(
    aws: &Aws,
    kind: Kind,
    id: &str,
    safeguards: &Safeguards,
) -> Result<(), DeleteError> {
    match kind {
        Kind::DbParameterGroup => aws
            .rds
            .delete_db_parameter_group()
            .db_parameter_group_name(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::DbSubnetGroup => aws
            .rds
            .delete_db_subnet_group()
            .db_subnet_group_name(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::Database => {
            aws.rds
                .modify_db_instance()
                .db_instance_identifier(id)
                .deletion_protection(false)
                .apply_immediately(true)
                .send()
                .await
                .map_err(DeleteError::from_sdk)?;
            let snapshot = (!safeguards.skip_final_snapshot)
                .then(|| snapshots::final_snapshot_name(&aws.stack, chrono::Utc::now()));
            let delete = aws
                .rds
                .delete_db_instance()
                .db_instance_identifier(id)
                .delete_automated_backups(false);
            let delete = match &snapshot {
                Some(snapshot) => {
                    eprintln!("  taking final snapshot {snapshot} of {id}");
                    delete.final_db_snapshot_identifier(snapshot)
                }
                None => delete.skip_final_snapshot(true),
            };
            delete.send().await.map_err(DeleteError::from_sdk)?;
            let mut wait = Wait::start(format!("RDS to delete {id}"), "5–10 min");
            loop {
                match aws
                    .rds
                    .describe_db_instances()
                    .db_instance_identifier(id)
                    .send()
                    .await
                {
                    Err(e) if error_kind(&e) == ErrorKind::NotFound => {
                        wait.done("deleted");
                        break;
                    }
                    Err(e) => return Err(DeleteError::from_sdk(e)),
                    Ok(found) => {
                        let status = found
                            .db_instances()
                            .first()
                            .and_then(|db| db.db_instance_status())
                            .unwrap_or("deleting");
                        wait.status(status, None);
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
            if let Some(snapshot) = snapshot {
                snapshots::wait_for_snapshot(aws, &snapshot)
                    .await
                    .map_err(DeleteError::Other)?;
                eprintln!(
                    "  final snapshot {snapshot} is available: `provision up --restore-from {snapshot}` brings the data back"
                );
            }
            Ok(())
        }
        other => Err(DeleteError::Other(anyhow::anyhow!(
            "{other} is not a database resource"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(config: &Config) -> Vec<Resource> {
        desired(
            &Names {
                stack: "anb".into(),
            },
            config,
        )
    }

    #[test]
    fn the_database_is_multi_az_encrypted_private_and_refuses_plain_connections() {
        let config = Config::load(None).unwrap();
        let resources = database(&config);
        let db = resources.iter().find(|r| r.kind == Kind::Database).unwrap();
        for (field, value) in [
            ("multi_az", "true"),
            ("encrypted", "true"),
            ("public", "false"),
            ("managed_password", "true"),
            ("deletion_protection", "true"),
            ("security_groups", "anb-db"),
        ] {
            assert_eq!(db.props[field], value, "{field}");
        }
        let parameters = resources
            .iter()
            .find(|r| r.kind == Kind::DbParameterGroup)
            .unwrap();
        assert_eq!(parameters.props[FORCE_SSL], "1");
        assert_eq!(db.props["parameter_group"], parameters.name);
        let subnets = resources
            .iter()
            .find(|r| r.kind == Kind::DbSubnetGroup)
            .unwrap();
        assert_eq!(subnets.props["subnets"], "anb-private-a,anb-private-b");
        assert_eq!(db.props["subnet_group"], subnets.name);
    }

    #[test]
    fn the_parameter_family_follows_the_engine_version() {
        let mut config = Config::load(None).unwrap();
        config.database.engine_version = "17".into();
        config.database.multi_az = false;
        let resources = database(&config);
        let parameters = resources
            .iter()
            .find(|r| r.kind == Kind::DbParameterGroup)
            .unwrap();
        assert_eq!(parameters.props["family"], "postgres17");
        let db = resources.iter().find(|r| r.kind == Kind::Database).unwrap();
        assert_eq!(db.props["engine_version"], "17");
        assert_eq!(db.props["multi_az"], "false");
    }
}
