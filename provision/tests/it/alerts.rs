//! Alarms that reach someone: the stack's SNS topic, one e-mail subscription per address
//! in `[alerts] emails`, alarm and OK actions on the operator's alarms; drift on each, and
//! `down` removes them.

use provision::model::{Action, Kind};
use provision::{Output, Stack, Sync};

use crate::helpers::{config_for, publish_stand_ins, release_r1};

#[tokio::test]
async fn alarms_notify_the_subscribed_addresses_and_drift_covers_topic_subscriptions_and_actions() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("a{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = config_for(&name);
    config.alerts.emails = vec!["ops@anb.example".into(), "lab@uni.example".into()];
    let stack = Stack::open(config.clone(), release_r1(&moto.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();

    let sns = &stack.aws.sns;
    let topics = sns.list_topics().send().await.unwrap();
    let topic = topics
        .topics()
        .iter()
        .filter_map(|t| t.topic_arn())
        .find(|arn| arn.ends_with(&format!(":{name}-alerts")))
        .expect("the stack's alerts topic")
        .to_owned();
    let endpoints = |subscriptions: &aws_sdk_sns::operation::list_subscriptions_by_topic::ListSubscriptionsByTopicOutput| {
        let mut found: Vec<(String, String)> = subscriptions
            .subscriptions()
            .iter()
            .map(|s| (s.protocol().unwrap().to_owned(), s.endpoint().unwrap().to_owned()))
            .collect();
        found.sort();
        found
    };
    let subscribed = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    assert_eq!(
        endpoints(&subscribed),
        [
            ("email".to_owned(), "lab@uni.example".to_owned()),
            ("email".to_owned(), "ops@anb.example".to_owned())
        ]
    );

    // The operator's alarms notify the topic when they go off and when they clear; the
    // scaling alarms only scale.
    let alarms = stack
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(format!("{name}-"))
        .send()
        .await
        .unwrap();
    let mut notifying: Vec<&str> = Vec::new();
    for alarm in alarms.metric_alarms() {
        let alarm_name = alarm.alarm_name().unwrap();
        let notifies = alarm.alarm_actions().contains(&topic);
        assert_eq!(
            notifies,
            alarm.ok_actions().contains(&topic),
            "{alarm_name}: notified one way only"
        );
        if notifies {
            notifying.push(alarm_name);
        }
    }
    notifying.sort_unstable();
    let expected: Vec<String> = [
        "dead-letters",
        "oldest-job",
        "queue-backlog",
        "web-target-5xx",
        "web-unhealthy-hosts",
        "worker-new-dead-letters",
    ]
    .iter()
    .map(|a| format!("{name}-{a}"))
    .collect();
    assert_eq!(notifying, expected);
    let oldest = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{name}-oldest-job")))
        .unwrap();
    assert_eq!(oldest.metric_name(), Some("ApproximateAgeOfOldestMessage"));
    assert_eq!(oldest.threshold(), Some(900.0), "alerts.oldest_job_age 15m");
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);

    // Someone removes the OK action of one alarm by hand: drift on that alarm, `up` puts
    // it back.
    let backlog = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{name}-queue-backlog")))
        .unwrap();
    stack
        .aws
        .cloudwatch
        .put_metric_alarm()
        .alarm_name(backlog.alarm_name().unwrap())
        .alarm_description(backlog.alarm_description().unwrap())
        .namespace(backlog.namespace().unwrap())
        .metric_name(backlog.metric_name().unwrap())
        .set_dimensions(Some(backlog.dimensions().to_vec()))
        .statistic(backlog.statistic().unwrap().clone())
        .period(backlog.period().unwrap())
        .evaluation_periods(backlog.evaluation_periods().unwrap())
        .threshold(backlog.threshold().unwrap())
        .comparison_operator(backlog.comparison_operator().unwrap().clone())
        .alarm_actions(&topic)
        .send()
        .await
        .unwrap();
    let changes = stack.changes().await.unwrap();
    let drifted: Vec<(Kind, &str)> = changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| (c.kind, c.name.as_str()))
        .collect();
    assert_eq!(
        drifted,
        [(Kind::Alarm, format!("{name}-queue-backlog").as_str())]
    );
    stack.up(Output::Text).await.unwrap();
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);

    // An address taken out of the file: its subscription is drift `up` removes (it would
    // go on mailing someone no longer on the team); a new one is added.
    config.alerts.emails = vec!["ops@anb.example".into(), "new@anb.example".into()];
    let edited = Stack::open(config, release_r1(&moto.endpoint))
        .await
        .unwrap();
    let changes = edited.changes().await.unwrap();
    let mut drifted: Vec<(Kind, String, Action)> = changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| (c.kind, c.name.clone(), c.action.clone()))
        .collect();
    drifted.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        drifted,
        [
            (
                Kind::AlertSubscription,
                format!("{name}-alerts:lab@uni.example"),
                Action::Orphan
            ),
            (
                Kind::AlertSubscription,
                format!("{name}-alerts:new@anb.example"),
                Action::Create
            ),
        ]
    );
    edited.up(Output::Text).await.unwrap();
    assert_eq!(edited.status(Output::Text).await.unwrap(), Sync::InSync);
    let subscribed = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    assert_eq!(
        endpoints(&subscribed),
        [
            ("email".to_owned(), "new@anb.example".to_owned()),
            ("email".to_owned(), "ops@anb.example".to_owned())
        ]
    );

    // `down` removes the topic with its subscriptions.
    assert!(edited.down().await.unwrap().is_empty());
    let topics = sns.list_topics().send().await.unwrap();
    assert!(
        !topics
            .topics()
            .iter()
            .any(|t| t.topic_arn() == Some(topic.as_str())),
        "the topic is gone"
    );
}
