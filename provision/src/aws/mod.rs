//! Reading and changing the stack in AWS. Everything is found by its stack tag and Name
//! tag on every run (no local state file), described before it is created, and each AWS
//! error is sorted into a kind before anything else is done with it.

use anyhow::Context;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::model::{Kind, Observed, Resource};

mod error;
mod ids;

pub(crate) use error::DeleteError;
pub use error::{error_kind, stale_credentials, ErrorKind};
pub use ids::{Ids, NamesById};

/// The tag every resource of a stack carries.
pub const STACK_TAG: &str = "anb:stack";

#[derive(Debug, Clone)]
pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub sns: aws_sdk_sns::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub rds: aws_sdk_rds::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub iam: aws_sdk_iam::Client,
    pub stack: String,
    pub region: String,
    /// The account the credentials belong to: the owner every S3 call expects.
    pub account_id: String,
    /// Who the credentials are (STS's ARN): named in the stack's lock.
    pub caller: String,
}

impl Aws {
    /// Clients for `region` (or the emulator at `endpoint`), and the account they act in.
    pub async fn connect(
        stack: &str,
        region: &str,
        endpoint: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(endpoint.is_some())
            .build();
        let identity = aws_sdk_sts::Client::new(&shared)
            .get_caller_identity()
            .send()
            .await
            .context("cannot identify the AWS account (are credentials set?)")?;
        let account_id = identity
            .account()
            .map(str::to_owned)
            .context("STS returned no account id")?;
        let caller = identity.arn().unwrap_or("an unknown caller").to_owned();
        Ok(Self {
            ec2: aws_sdk_ec2::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(&shared),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&shared),
            logs: aws_sdk_cloudwatchlogs::Client::new(&shared),
            sns: aws_sdk_sns::Client::new(&shared),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&shared),
            rds: aws_sdk_rds::Client::new(&shared),
            autoscaling: aws_sdk_autoscaling::Client::new(&shared),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            iam: aws_sdk_iam::Client::new(&shared),
            stack: stack.to_owned(),
            region: region.to_owned(),
            account_id,
            caller,
        })
    }

    /// Whether a tag (of any service's tag type) is this stack's.
    pub(crate) fn is_stack_tag(&self, key: Option<&str>, value: Option<&str>) -> bool {
        key == Some(STACK_TAG) && value == Some(self.stack.as_str())
    }

    pub(crate) fn stack_filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{STACK_TAG}"))
            .values(&self.stack)
            .build()
    }

    pub(crate) fn tags(&self, kind: ResourceType, name: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key(STACK_TAG).value(&self.stack).build())
            .tags(Tag::builder().key("Name").value(name).build())
            .build()
    }
}

pub(crate) fn observed(kind: Kind, name: String, id: String, props: &[(&str, String)]) -> Observed {
    Observed {
        resource: Resource::new(kind, name, props),
        id,
    }
}
