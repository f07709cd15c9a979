//! The worker binary on an auto-scaling group: moto's Auto Scaling API (through the
//! testkit stand-in for the lifecycle calls moto lacks) and a stand-in instance metadata
//! service. A worker whose instance is terminated mid-job finishes it, once, then
//! completes the termination hook; an idle one completes at once; one whose role may not
//! make the calls says so once and still stops on SIGTERM.

use std::time::Duration;

use backends::db::VideoStatus;
use testkit::eventually;

use crate::helpers::{make_video, Harness};
use crate::signals::{signal, start_worker_binary_logging};

struct Instance {
    group: String,
    hook: String,
    id: String,
    metadata: testkit::MetadataStandIn,
}

async fn instance() -> Instance {
    let stand_in = testkit::autoscaling_stand_in();
    let group = format!(
        "g{}-worker-asg",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let hook = format!("{group}-drain");
    let id = stand_in.create_group_with_hook(&group, &hook).await;
    let metadata = testkit::MetadataStandIn::start(&id).await;
    Instance {
        group,
        hook,
        id,
        metadata,
    }
}

/// The settings the instance's user data gives, and a SIGTERM grace of 1 s: a job that
/// survives a stop had to be finished on purpose.
fn settings(instance: &Instance) -> Vec<(&str, &str)> {
    vec![
        ("APP__WORKER__AUTOSCALING_GROUP", instance.group.as_str()),
        ("APP__WORKER__LIFECYCLE_HOOK", instance.hook.as_str()),
        ("APP__WORKER__METADATA_URL", instance.metadata.url.as_str()),
        (
            "APP__AWS__ENDPOINT_URL",
            &testkit::autoscaling_stand_in().endpoint,
        ),
        ("APP__WORKER__SHUTDOWN_GRACE", "1s"),
        ("APP__LOG__FORMAT", "json"),
        ("APP__LOG__FILTER", "info"),
    ]
}

fn calls_about(action: &str, group: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    testkit::autoscaling_stand_in()
        .calls(action)
        .into_iter()
        .filter(|c| c.params.get("AutoScalingGroupName").map(String::as_str) == Some(group))
        .map(|c| c.params)
        .collect()
}

async fn wait_until_started(log: &std::path::Path) {
    eventually("the worker to start", Duration::from_secs(60), || async {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("worker started")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_worker_terminated_mid_job_finishes_it_once_then_completes_the_hook() {
    let h = Harness::local().await;
    let stand_in = testkit::autoscaling_stand_in();
    let instance = instance().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "slow.mp4",
        "testsrc2=size=1920x1080:rate=30:duration=20",
        &["-vf", "noise=alls=20:allf=t"],
    )
    .await;
    let id = h.enqueue(&input).await;
    let log = dir.path().join("worker.log");
    let mut settings = settings(&instance);
    settings.push(("APP__PROCESSING__X264_PRESET", "medium"));
    let mut worker =
        start_worker_binary_logging(&h, &settings, std::fs::File::create(&log).unwrap().into());
    h.wait_for(id, VideoStatus::Processing, Duration::from_secs(60))
        .await;
    // While it holds the job, the group would take an idle worker first.
    eventually("scale-in protection", Duration::from_secs(20), || async {
        stand_in
            .is_protected(&instance.group, &instance.id)
            .await
            .then_some(())
    })
    .await;

    // The group terminates the instance anyway (a refresh, say): the hook holds it.
    stand_in.begin_termination(&instance.group, &instance.hook, &instance.id);
    instance.metadata.set_target_state("Terminated");
    let exited = tokio::time::timeout(Duration::from_secs(300), worker.wait())
        .await
        .expect("the worker ends once its job is done")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(exited.success(), "{text}");
    assert_eq!(h.status(id).await.0, VideoStatus::Processed, "{text}");
    assert_eq!(
        text.matches("\"outcome\":\"processed\"").count(),
        1,
        "processed once: {text}"
    );
    // It saw the termination while it held the job (not after it).
    let noticed = text
        .lines()
        .find(|l| l.contains("finishing the one in hand"))
        .expect(&text);
    assert!(noticed.contains("\"jobs\":1"), "{noticed}");
    let completions = calls_about("CompleteLifecycleAction", &instance.group);
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0]["LifecycleActionResult"], "CONTINUE");
    assert_eq!(completions[0]["InstanceId"], instance.id);
    assert_eq!(completions[0]["LifecycleHookName"], instance.hook);
    // Completed after the job: the processed line comes before the completion's.
    let processed_at = text.find("\"outcome\":\"processed\"").unwrap();
    let completed_at = text.find("lifecycle action completed").expect(&text);
    assert!(processed_at < completed_at, "{text}");
    // Cleared at start (a restarted worker may have left it on), set with the job.
    let protections: Vec<String> = calls_about("SetInstanceProtection", &instance.group)
        .into_iter()
        .map(|c| c["ProtectedFromScaleIn"].clone())
        .collect();
    assert_eq!(protections[..2], ["false", "true"], "{protections:?}");
    assert!(h.queue_is_empty().await);
}

#[tokio::test]
async fn an_idle_worker_completes_the_hook_at_once() {
    let h = Harness::local().await;
    let stand_in = testkit::autoscaling_stand_in();
    let instance = instance().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = start_worker_binary_logging(
        &h,
        &settings(&instance),
        std::fs::File::create(&log).unwrap().into(),
    );
    wait_until_started(&log).await;
    stand_in.begin_termination(&instance.group, &instance.hook, &instance.id);
    instance.metadata.set_target_state("Terminated");
    let exited = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("an idle worker lets its instance go within seconds")
        .unwrap();
    assert!(exited.success());
    assert_eq!(
        calls_about("CompleteLifecycleAction", &instance.group).len(),
        1
    );
    let protections = calls_about("SetInstanceProtection", &instance.group);
    assert!(
        protections
            .iter()
            .all(|c| c["ProtectedFromScaleIn"] == "false"),
        "never protected: it held no job: {protections:?}"
    );
}

#[tokio::test]
async fn a_role_without_the_permission_is_logged_once_and_sigterm_still_stops_the_worker() {
    let h = Harness::local().await;
    let stand_in = testkit::autoscaling_stand_in();
    let instance = instance().await;
    stand_in.refuse_instance_calls(&instance.group);
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=640x360:rate=30:duration=3",
        &[],
    )
    .await;
    let first = h.enqueue(&input).await;
    let log = dir.path().join("worker.log");
    let mut worker = start_worker_binary_logging(
        &h,
        &settings(&instance),
        std::fs::File::create(&log).unwrap().into(),
    );
    h.wait_for(first, VideoStatus::Processed, Duration::from_secs(120))
        .await;
    let second = h.enqueue(&input).await;
    h.wait_for(second, VideoStatus::Processed, Duration::from_secs(120))
        .await;
    signal(&worker.id().unwrap().to_string(), "TERM");
    let exited = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("SIGTERM stops it")
        .unwrap();
    assert!(exited.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("may not call Auto Scaling").count(),
        1,
        "refused once, then not asked again: {text}"
    );
    assert_eq!(
        calls_about("SetInstanceProtection", &instance.group).len(),
        1,
        "no call after the refusal"
    );
}
