//! The stack's DB parameter group: PostgreSQL on RDS refusing connections without TLS.

use anyhow::Context;

use super::{tagged_for_stack, FORCE_SSL};
use crate::aws::{error_kind, Aws, ErrorKind};
use crate::model::{Kind, Observed, Props, Resource};
use crate::names::db_parameter_group_name;

/// The stack's parameter group, found by name and kept when it carries the stack's tag,
/// with the one parameter it sets.
pub(super) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let name = db_parameter_group_name(&aws.stack);
    let found = match aws
        .rds
        .describe_db_parameter_groups()
        .db_parameter_group_name(&name)
        .send()
        .await
    {
        Ok(found) => found,
        Err(e) if error_kind(&e) == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("describe DB parameter groups"),
    };
    let Some(group) = found.db_parameter_groups().first() else {
        return Ok(Vec::new());
    };
    if !tagged_for_stack(aws, group.db_parameter_group_arn()).await? {
        return Ok(Vec::new());
    }
    let parameters: Vec<_> = aws
        .rds
        .describe_db_parameters()
        .db_parameter_group_name(&name)
        .source("user")
        .into_paginator()
        .send()
        .collect::<Result<_, _>>()
        .await
        .context("describe DB parameters")?;
    let force_ssl = parameters
        .iter()
        .flat_map(|page| page.parameters())
        .find(|p| p.parameter_name() == Some(FORCE_SSL))
        .and_then(|p| p.parameter_value())
        .unwrap_or_default()
        .to_owned();
    Ok(vec![Observed {
        resource: Resource::new(
            Kind::DbParameterGroup,
            &name,
            &[
                (
                    "family",
                    group.db_parameter_group_family().unwrap_or_default().into(),
                ),
                (FORCE_SSL, force_ssl),
            ],
        ),
        id: name.clone(),
    }])
}

pub(super) async fn set(aws: &Aws, name: &str, p: &Props) -> anyhow::Result<()> {
    aws.rds
        .modify_db_parameter_group()
        .db_parameter_group_name(name)
        .parameters(
            aws_sdk_rds::types::Parameter::builder()
                .parameter_name(FORCE_SSL)
                .parameter_value(&p[FORCE_SSL])
                .apply_method(aws_sdk_rds::types::ApplyMethod::Immediate)
                .build(),
        )
        .send()
        .await
        .context("set the database's parameters")?;
    Ok(())
}
