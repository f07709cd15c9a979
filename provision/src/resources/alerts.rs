//! Alarms that reach someone: the stack's SNS topic (`<stack>-alerts`), which the alarms
//! notify when they go off and when they clear, and one e-mail subscription per address in
//! `[alerts] emails`. AWS mails each address a link to confirm first; until then the
//! subscription is pending and receives nothing (`status --health` lists those).

use anyhow::Context;
use aws_sdk_sns::types::Tag;

use crate::aws::{error_kind, observed, Aws, DeleteError, ErrorKind, Ids, STACK_TAG};
use crate::config::Config;
use crate::model::{Change, Kind, Observed, Resource};
use crate::names::{alerts_topic_name, Names};

/// What SNS lists in place of a subscription's ARN until its address confirms.
pub const PENDING_CONFIRMATION: &str = "PendingConfirmation";

/// What SNS lists in place of the ARN of a subscription on its way out (its address
/// followed the unsubscribe link of an alert, or it was deleted while pending).
const DELETED: &str = "Deleted";

/// Whether a listed subscription still counts: one SNS lists as deleted is gone (`up`
/// subscribes its address again if it is still configured).
fn listed_as_live(arn: &str) -> bool {
    !arn.is_empty() && arn != DELETED
}

/// A subscription's logical name: the topic's and the address, which no other
/// subscription of the topic shares.
pub(crate) fn subscription_name(topic: &str, email: &str) -> String {
    format!("{topic}:{email}")
}

pub(crate) fn desired(n: &Names, config: &Config) -> Vec<Resource> {
    let topic = alerts_topic_name(&n.stack);
    let mut out = vec![Resource::new(
        Kind::AlertTopic,
        &topic,
        &[("display_name", format!("ANB {} alerts", n.stack))],
    )];
    out.extend(config.alerts.emails.iter().map(|email| {
        Resource::new(
            Kind::AlertSubscription,
            subscription_name(&topic, email),
            &[
                ("topic", topic.clone()),
                ("protocol", "email".to_owned()),
                ("endpoint", email.clone()),
            ],
        )
    }));
    out
}

/// The topic (found by name, kept when it carries the stack's tag) and its subscriptions.
/// A subscription still waiting for its address to confirm has the id
/// [`PENDING_CONFIRMATION`].
pub(crate) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let name = alerts_topic_name(&aws.stack);
    let pages = aws
        .sns
        .list_topics()
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .context("list SNS topics")?;
    let Some(arn) = pages
        .iter()
        .flat_map(|page| page.topics())
        .filter_map(|topic| topic.topic_arn())
        .find(|arn| topic_of_arn(arn) == name)
        .map(str::to_owned)
    else {
        return Ok(Vec::new());
    };
    let tags = match aws
        .sns
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
    {
        Ok(tags) => tags,
        Err(e) if error_kind(&e) == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read the tags of topic {arn}")),
    };
    if !tags
        .tags()
        .iter()
        .any(|t| aws.is_stack_tag(Some(t.key()), Some(t.value())))
    {
        return Ok(Vec::new()); // someone else's topic of the same name
    }
    let attributes = aws
        .sns
        .get_topic_attributes()
        .topic_arn(&arn)
        .send()
        .await
        .context("read the alerts topic")?;
    let display_name = attributes
        .attributes()
        .and_then(|a| a.get("DisplayName"))
        .cloned()
        .unwrap_or_default();
    let mut out = vec![observed(
        Kind::AlertTopic,
        name.clone(),
        arn.clone(),
        &[("display_name", display_name)],
    )];
    let subscriptions = aws
        .sns
        .list_subscriptions_by_topic()
        .topic_arn(&arn)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .context("list the alerts topic's subscriptions")?;
    for subscription in subscriptions.iter().flat_map(|page| page.subscriptions()) {
        if !listed_as_live(subscription.subscription_arn().unwrap_or_default()) {
            continue;
        }
        let endpoint = subscription.endpoint().unwrap_or_default();
        out.push(observed(
            Kind::AlertSubscription,
            subscription_name(&name, endpoint),
            subscription
                .subscription_arn()
                .unwrap_or_default()
                .to_owned(),
            &[
                ("topic", name.clone()),
                (
                    "protocol",
                    subscription.protocol().unwrap_or_default().to_owned(),
                ),
                ("endpoint", endpoint.to_owned()),
            ],
        ));
    }
    Ok(out)
}

/// The topic's name, the last part of its ARN (`arn:aws:sns:<region>:<account>:<name>`).
pub(crate) fn topic_of_arn(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let p = &change.desired;
    match change.kind {
        Kind::AlertTopic => {
            let created = aws
                .sns
                .create_topic()
                .name(&change.name)
                .attributes("DisplayName", &p["display_name"])
                .tags(Tag::builder().key(STACK_TAG).value(&aws.stack).build()?)
                .tags(Tag::builder().key("Name").value(&change.name).build()?)
                .send()
                .await?;
            created
                .topic_arn()
                .map(str::to_owned)
                .context("SNS returned no topic ARN")
        }
        _ => {
            // With the ARN returned even while pending, `down` and `up` can remove the
            // subscription before its address confirms.
            let created = aws
                .sns
                .subscribe()
                .topic_arn(ids.id_of(&p["topic"])?)
                .protocol(&p["protocol"])
                .endpoint(&p["endpoint"])
                .return_subscription_arn(true)
                .send()
                .await?;
            eprintln!(
                "  {} gets a message from AWS to confirm the subscription; it receives no alert until then",
                p["endpoint"]
            );
            Ok(created
                .subscription_arn()
                .unwrap_or(PENDING_CONFIRMATION)
                .to_owned())
        }
    }
}

/// Only the topic's display name changes in place; a subscription is replaced.
pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, _: &Ids) -> anyhow::Result<()> {
    aws.sns
        .set_topic_attributes()
        .topic_arn(id)
        .attribute_name("DisplayName")
        .attribute_value(&change.desired["display_name"])
        .send()
        .await?;
    Ok(())
}

/// Deleting the topic deletes its subscriptions. A subscription listed as pending has no
/// ARN to unsubscribe: it goes with the topic, or AWS drops it after 3 days unconfirmed
/// (meanwhile it receives nothing, and `Stack::compare` does not count it as drift).
pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), DeleteError> {
    match kind {
        Kind::AlertTopic => aws
            .sns
            .delete_topic()
            .topic_arn(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        _ if id == PENDING_CONFIRMATION => {
            eprintln!(
                "  a subscription still pending confirmation cannot be removed: AWS drops it \
                 after 3 days unconfirmed (or it goes with the topic at `down`)"
            );
            Ok(())
        }
        _ => aws
            .sns
            .unsubscribe()
            .subscription_arn(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_per_address_on_the_stacks_topic() {
        let mut config = Config::load(None).unwrap();
        config.alerts.emails = vec!["ops@anb.example".into(), "lab@uni.example".into()];
        let n = Names {
            stack: "anb".into(),
        };
        let desired = desired(&n, &config);
        assert_eq!(desired[0].kind, Kind::AlertTopic);
        assert_eq!(desired[0].name, "anb-alerts");
        let subscriptions: Vec<(&str, &str)> = desired[1..]
            .iter()
            .map(|r| (r.name.as_str(), r.props["endpoint"].as_str()))
            .collect();
        assert_eq!(
            subscriptions,
            [
                ("anb-alerts:ops@anb.example", "ops@anb.example"),
                ("anb-alerts:lab@uni.example", "lab@uni.example")
            ]
        );
        assert_eq!(
            topic_of_arn("arn:aws:sns:us-east-1:123456789012:anb-alerts"),
            "anb-alerts"
        );
    }

    #[test]
    fn a_subscription_listed_as_deleted_is_gone_and_a_pending_one_is_there() {
        assert!(!listed_as_live("Deleted"));
        assert!(!listed_as_live(""));
        assert!(listed_as_live(PENDING_CONFIRMATION));
        assert!(listed_as_live(
            "arn:aws:sns:us-east-1:123456789012:anb-alerts:0d3c5b1e-8f0a-4c1b-9e55-3c1a2b9d7f00"
        ));
    }
}
