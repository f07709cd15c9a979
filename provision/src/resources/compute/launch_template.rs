//! Launch templates: what an instance of a tier boots (image, type, profile, security
//! group, root volume, user data, monitoring). A change is a new version of the same
//! template; groups name versions by number.

use anyhow::Context;
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplatesMonitoringRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::aws::{Aws, DeleteError, Ids, NamesById, STACK_TAG};
use crate::model::{Change, Kind, Observed, Props, Resource};

/// Debian's AWS account, which publishes the official Debian images.
const DEBIAN_OWNER: &str = "136693071363";

pub(super) const ROOT_VOLUME: &str = "gp3 16 GiB encrypted";

/// The block device mapping of [`ROOT_VOLUME`], on the device the image boots from.
async fn root_volume(
    aws: &Aws,
    image: &str,
) -> anyhow::Result<aws_sdk_ec2::types::LaunchTemplateBlockDeviceMappingRequest> {
    let images = aws
        .ec2
        .describe_images()
        .image_ids(image)
        .send()
        .await
        .with_context(|| format!("describe image {image}"))?;
    let device = images
        .images()
        .first()
        .and_then(|i| i.root_device_name())
        .unwrap_or("/dev/xvda")
        .to_owned();
    Ok(
        aws_sdk_ec2::types::LaunchTemplateBlockDeviceMappingRequest::builder()
            .device_name(device)
            .ebs(
                aws_sdk_ec2::types::LaunchTemplateEbsBlockDeviceRequest::builder()
                    .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
                    .volume_size(super::ROOT_VOLUME_GB as i32)
                    .encrypted(true)
                    .delete_on_termination(true)
                    .build(),
            )
            .build(),
    )
}

/// The newest official Debian 12 amd64 image in the region.
pub async fn latest_debian_ami(aws: &Aws) -> anyhow::Result<String> {
    let images = aws
        .ec2
        .describe_images()
        .owners(DEBIAN_OWNER)
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("name")
                .values("debian-12-amd64-*")
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("state")
                .values("available")
                .build(),
        )
        .send()
        .await
        .context("look up the Debian 12 image")?;
    let newest = images
        .images()
        .iter()
        .max_by_key(|i| i.creation_date().unwrap_or_default().to_owned());
    newest
        .and_then(|i| i.image_id())
        .map(str::to_owned)
        .context("no Debian 12 image found: set instances.ami in the configuration")
}

pub(super) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    let templates = aws
        .ec2
        .describe_launch_templates()
        .filters(aws.stack_filter())
        .send()
        .await
        .context("describe launch templates")?;
    for t in templates.launch_templates() {
        let id = t.launch_template_id().unwrap_or_default().to_owned();
        let versions = aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Latest")
            .send()
            .await
            .context("describe launch template versions")?;
        let Some(data) = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
        else {
            continue;
        };
        let user_data = data
            .user_data()
            .and_then(|encoded| BASE64.decode(encoded).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let header = crate::userdata::header(&user_data);
        let header_value = |name: &str| header.get(name).cloned().unwrap_or_default();
        let root_volume = data
            .block_device_mappings()
            .iter()
            .find_map(|m| m.ebs())
            .map(|ebs| {
                format!(
                    "{} {} GiB{}",
                    ebs.volume_type().map(|t| t.as_str()).unwrap_or("?"),
                    ebs.volume_size().unwrap_or_default(),
                    if ebs.encrypted() == Some(true) {
                        " encrypted"
                    } else {
                        ""
                    }
                )
            })
            .unwrap_or_default();
        out.push(Observed {
            resource: Resource::new(
                Kind::LaunchTemplate,
                t.launch_template_name().unwrap_or_default(),
                &[
                    ("image", data.image_id().unwrap_or_default().into()),
                    ("root_volume", root_volume),
                    (
                        "instance_type",
                        data.instance_type()
                            .map(|t| t.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    (
                        "instance_profile",
                        data.iam_instance_profile()
                            .and_then(|p| p.name())
                            .unwrap_or_default()
                            .into(),
                    ),
                    (
                        "security_group",
                        data.security_group_ids()
                            .first()
                            .map(|g| names.name_of(g))
                            .unwrap_or_default(),
                    ),
                    (
                        "imds_tokens",
                        data.metadata_options()
                            .and_then(|m| m.http_tokens())
                            .map(|t| t.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    (
                        "detailed_monitoring",
                        data.monitoring()
                            .and_then(|m| m.enabled())
                            .unwrap_or(false)
                            .to_string(),
                    ),
                    ("release", header_value("RELEASE")),
                    ("binary_sha256", header_value("BINARY_SHA256")),
                    ("database", header_value("DATABASE")),
                    ("queue", header_value("QUEUE")),
                    ("token_secret", header_value("TOKEN_SECRET")),
                    ("user_data", user_data),
                ],
            ),
            id,
        });
    }
    Ok(out)
}

/// What an instance of the template `name` boots, from the desired properties.
async fn template_data(
    aws: &Aws,
    name: &str,
    p: &Props,
    ids: &Ids,
) -> anyhow::Result<RequestLaunchTemplateData> {
    let instance_tags = aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(STACK_TAG).value(&aws.stack).build())
        .tags(
            Tag::builder()
                .key("Name")
                .value(name.trim_end_matches("-template"))
                .build(),
        )
        .build();
    let data = RequestLaunchTemplateData::builder()
        .image_id(&p["image"])
        .instance_type(aws_sdk_ec2::types::InstanceType::from(
            p["instance_type"].as_str(),
        ))
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(&p["instance_profile"])
                .build(),
        )
        .security_group_ids(ids.id_of(&p["security_group"])?)
        // IMDSv2 only: credentials cannot be read by a forged request.
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .build(),
        )
        .monitoring(
            LaunchTemplatesMonitoringRequest::builder()
                .enabled(p["detailed_monitoring"] == "true")
                .build(),
        )
        .tag_specifications(instance_tags)
        .block_device_mappings(root_volume(aws, &p["image"]).await?)
        .user_data(BASE64.encode(&p["user_data"]))
        .build();
    Ok(data)
}

pub(super) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let name = change.name.as_str();
    let data = template_data(aws, name, &change.desired, ids).await?;
    let created = aws
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(Tag::builder().key(STACK_TAG).value(&aws.stack).build())
                .tags(Tag::builder().key("Name").value(name).build())
                .build(),
        )
        .send()
        .await?;
    created
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .map(str::to_owned)
        .context("no launch template id")
}

pub(super) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let data = template_data(aws, &change.name, &change.desired, ids).await?;
    // A new version: the group launches it once an instance refresh has replaced its
    // instances with it (`deploy`), and goes back to the one before if that fails.
    aws.ec2
        .create_launch_template_version()
        .launch_template_id(id)
        .launch_template_data(data)
        .send()
        .await?;
    Ok(())
}

pub(super) async fn delete(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    aws.ec2
        .delete_launch_template()
        .launch_template_id(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}
