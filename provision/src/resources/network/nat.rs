//! The private network mode's way out: an Elastic IP and the NAT gateway using it.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_ec2::types::{DomainType, NatGatewayState, ResourceType};

use stack_config::progress::Wait;

use crate::aws::{Aws, DeleteError};

/// How often a wait on a NAT gateway asks again.
const POLL: Duration = Duration::from_secs(10);

pub(crate) async fn create_address(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let address = aws
        .ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .tag_specifications(aws.tags(ResourceType::ElasticIp, name))
        .send()
        .await?;
    address
        .allocation_id()
        .map(str::to_owned)
        .context("no allocation id")
}

pub(crate) async fn release_address(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    aws.ec2
        .release_address()
        .allocation_id(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

/// Creates the gateway and waits until it routes (a minute or two on AWS).
pub(crate) async fn create_nat_gateway(
    aws: &Aws,
    name: &str,
    subnet: &str,
    allocation: &str,
) -> anyhow::Result<String> {
    let created = aws
        .ec2
        .create_nat_gateway()
        .subnet_id(subnet)
        .allocation_id(allocation)
        .tag_specifications(aws.tags(ResourceType::Natgateway, name))
        .send()
        .await?;
    let id = created
        .nat_gateway()
        .and_then(|g| g.nat_gateway_id())
        .context("no NAT gateway id")?
        .to_owned();
    let mut wait = Wait::start(format!("NAT gateway {name}"), "1–3 min");
    loop {
        match nat_gateway_state(aws, &id).await? {
            Some(NatGatewayState::Available) => {
                wait.done("available");
                return Ok(id);
            }
            Some(NatGatewayState::Failed) => anyhow::bail!("NAT gateway {name} failed"),
            state => wait.status(state.as_ref().map_or("unknown", |s| s.as_str()), None),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes the gateway and waits until it is gone: its subnet and address can only go
/// after.
pub(crate) async fn delete_nat_gateway(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    aws.ec2
        .delete_nat_gateway()
        .nat_gateway_id(id)
        .send()
        .await
        .map_err(DeleteError::from_sdk)?;
    let mut wait = Wait::start(format!("NAT gateway {id} to be deleted"), "about 1 min");
    loop {
        match nat_gateway_state(aws, id)
            .await
            .map_err(DeleteError::Other)?
        {
            None | Some(NatGatewayState::Deleted) => {
                wait.done("deleted");
                return Ok(());
            }
            Some(state) => wait.status(state.as_str(), None),
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn nat_gateway_state(aws: &Aws, id: &str) -> anyhow::Result<Option<NatGatewayState>> {
    let found = aws
        .ec2
        .describe_nat_gateways()
        .nat_gateway_ids(id)
        .send()
        .await;
    match found {
        Ok(found) => Ok(found
            .nat_gateways()
            .first()
            .and_then(|g| g.state())
            .cloned()),
        Err(e) if crate::aws::error_kind(&e) == crate::aws::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("describe NAT gateways"),
    }
}
