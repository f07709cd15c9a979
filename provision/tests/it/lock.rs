//! One operator at a time: a stack's lock, held by another run, stops `up` and `down`
//! with who holds it; `--force-unlock` takes over a dead run's; a run that ends gives it
//! back.

use std::process::{Command, Output};

use provision::lock::LOCK_KEY;
use provision::Stack;

use crate::helpers::{config_file, config_for, publish_stand_ins, release_r1};

fn provision(args: &[&str], stack: &str, endpoint: &str, config: &std::path::Path) -> Output {
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(args)
        .args([
            "--stack",
            stack,
            "--endpoint-url",
            endpoint,
            "--release",
            "r1",
        ])
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_held_lock_stops_up_and_down_until_released_or_forced() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("l{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    let bucket = stack.bucket();
    // A teammate's `up` that is still running (or died).
    stack
        .aws
        .s3
        .put_object()
        .bucket(&bucket)
        .key(LOCK_KEY)
        .body(
            br#"{"who":"arn:aws:sts::123456789012:assumed-role/voclabs/ana","since":"2026-12-04T01:00:00Z","command":"up"}"#
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let config = config_file();
    for command in [
        &["up"][..],
        &["down", "--yes", "--delete-videos"],
        &["pause"],
        &["resume"],
    ] {
        let out = provision(command, &name, &moto.endpoint, config.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "stack {name} is locked: arn:aws:sts::123456789012:assumed-role/voclabs/ana has \
                 run `up` since 2026-12-04T01:00:00Z"
            )) && err.contains("--force-unlock"),
            "{err}"
        );
    }
    assert!(
        stack.aws.observe(&bucket).await.unwrap().len() <= 1,
        "nothing but the bucket: the locked up changed nothing"
    );

    // The teammate's run is dead: take over; the run gives the lock back at its end.
    let out = provision(
        &["up", "--force-unlock"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = stack
        .aws
        .s3
        .head_object()
        .bucket(&bucket)
        .key(LOCK_KEY)
        .send()
        .await;
    assert!(lock.is_err(), "the lock outlived the run that held it");
    let out = provision(
        &["down", "--yes", "--delete-videos"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
