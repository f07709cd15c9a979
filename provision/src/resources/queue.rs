//! The video-processing queue and its dead-letter queue (SQS): what they should be, what
//! they are, and how to create, change and delete one.

use anyhow::Context;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::{error_kind, observed, Aws, DeleteError, ErrorKind, Ids, STACK_TAG};
use crate::config::Config;
use crate::model::{Change, Kind, Observed, Props, Resource};
use crate::names::{dead_letter_queue_name, queue_name, Names};

/// 14 days, SQS's longest retention, in seconds. Both queues keep their messages this long:
/// SQS counts a dead letter's age from its first enqueue, so a dead-letter queue that kept
/// them less than the source queue would drop some on arrival.
const LONGEST_RETENTION: &str = "1209600";

/// The dead-letter queue.
pub(crate) fn desired_dead_letter_queue(n: &Names) -> Resource {
    Resource::new(
        Kind::Queue,
        dead_letter_queue_name(&n.stack),
        &[("message_retention", LONGEST_RETENTION.into())],
    )
}

/// The queue the API sends jobs to, redriving to the dead-letter queue after
/// `queue.max_receives` receives. It keeps jobs 14 days (SQS's default is 4): a worker tier
/// scaled to zero or paused for a lab's budget finds its backlog when it comes back.
pub(crate) fn desired_queue(n: &Names, config: &Config) -> Resource {
    Resource::new(
        Kind::Queue,
        queue_name(&n.stack),
        &[
            (
                "visibility_timeout",
                config.queue.visibility_timeout.as_secs().to_string(),
            ),
            (
                "receive_wait",
                config.queue.receive_wait.as_secs().to_string(),
            ),
            ("message_retention", LONGEST_RETENTION.into()),
            ("dead_letter", dead_letter_queue_name(&n.stack)),
            ("max_receives", config.queue.max_receives.to_string()),
        ],
    )
}

pub(crate) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let listed = aws
        .sqs
        .list_queues()
        .queue_name_prefix(format!("{}-", aws.stack))
        .send()
        .await
        .context("list queues")?;
    let mut out = Vec::new();
    for url in listed.queue_urls() {
        let tags = match aws.sqs.list_queue_tags().queue_url(url).send().await {
            Ok(tags) => tags,
            Err(e) if error_kind(&e) == ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(e).context("list queue tags"),
        };
        if tags
            .tags()
            .and_then(|t| t.get(STACK_TAG))
            .map(String::as_str)
            != Some(aws.stack.as_str())
        {
            continue;
        }
        let attributes = aws
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .context("get queue attributes")?;
        let get = |name: QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .cloned()
                .unwrap_or_default()
        };
        let mut props = vec![
            (
                "visibility_timeout",
                get(QueueAttributeName::VisibilityTimeout),
            ),
            (
                "receive_wait",
                get(QueueAttributeName::ReceiveMessageWaitTimeSeconds),
            ),
            (
                "message_retention",
                get(QueueAttributeName::MessageRetentionPeriod),
            ),
        ];
        let policy = get(QueueAttributeName::RedrivePolicy);
        if let Ok(policy) = serde_json::from_str::<serde_json::Value>(&policy) {
            let arn = policy["deadLetterTargetArn"].as_str().unwrap_or_default();
            props.push((
                "dead_letter",
                arn.rsplit(':').next().unwrap_or_default().to_owned(),
            ));
            let max = match &policy["maxReceiveCount"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            props.push(("max_receives", max));
        }
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        out.push(observed(Kind::Queue, name, url.clone(), &props));
    }
    Ok(out)
}

pub(crate) async fn create(aws: &Aws, change: &Change, _: &Ids) -> anyhow::Result<String> {
    let (name, p) = (change.name.as_str(), &change.desired);
    let mut create = aws
        .sqs
        .create_queue()
        .queue_name(name)
        .tags(STACK_TAG, &aws.stack)
        .tags("Name", name);
    for (attribute, value) in attributes(aws, p).await? {
        create = create.attributes(attribute, value);
    }
    let created = create.send().await?;
    Ok(created.queue_url().context("no queue url")?.to_owned())
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, _: &Ids) -> anyhow::Result<()> {
    let p = &change.desired;
    let mut set = aws.sqs.set_queue_attributes().queue_url(id);
    for (attribute, value) in attributes(aws, p).await? {
        set = set.attributes(attribute, value);
    }
    set.send().await?;
    Ok(())
}

pub(crate) async fn delete(aws: &Aws, _: Kind, id: &str) -> Result<(), DeleteError> {
    aws.sqs
        .delete_queue()
        .queue_url(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

/// The queue attributes a resource's properties stand for (the redrive policy names the
/// dead-letter queue by ARN, so it is looked up).
async fn attributes(aws: &Aws, p: &Props) -> anyhow::Result<Vec<(QueueAttributeName, String)>> {
    let mut out = Vec::new();
    for (field, attribute) in [
        ("visibility_timeout", QueueAttributeName::VisibilityTimeout),
        (
            "receive_wait",
            QueueAttributeName::ReceiveMessageWaitTimeSeconds,
        ),
        (
            "message_retention",
            QueueAttributeName::MessageRetentionPeriod,
        ),
    ] {
        if let Some(value) = p.get(field) {
            out.push((attribute, value.clone()));
        }
    }
    if let Some(dlq) = p.get("dead_letter") {
        let url = aws
            .sqs
            .get_queue_url()
            .queue_name(dlq)
            .send()
            .await
            .context("find the dead-letter queue")?;
        let arn = aws
            .sqs
            .get_queue_attributes()
            .queue_url(url.queue_url().unwrap_or_default())
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .context("no queue arn")?;
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": p.get("max_receives").cloned().unwrap_or_else(|| "5".into())});
        out.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_has_the_seed_timeouts_and_a_dead_letter_queue() {
        let config = Config::load(None).unwrap();
        let n = Names {
            stack: "anb".into(),
        };
        let queue = desired_queue(&n, &config);
        assert_eq!(queue.name, "anb-video-processing");
        assert_eq!(queue.props["visibility_timeout"], "1800");
        assert_eq!(queue.props["receive_wait"], "20");
        assert_eq!(queue.props["max_receives"], "5");
        let dead_letters = desired_dead_letter_queue(&n);
        // Jobs outlive a paused worker tier, and dead letters are not dropped on arrival.
        assert_eq!(queue.props["message_retention"], "1209600");
        assert_eq!(dead_letters.props["message_retention"], "1209600");
        assert_eq!(queue.props["dead_letter"], dead_letters.name);
        assert_eq!(dead_letters.name, "anb-video-processing-dlq");
    }
}
