//! The deploy path end to end on moto, through the README's commands: `cargo xtask up`
//! builds the services (debug here), publishes them, provisions the stack with that
//! release and reports the URL; a second `up` changes nothing; `cargo xtask down --yes`
//! leaves nothing.

use std::path::Path;
use std::process::{Command, Output};

use provision::{Stack, StackOptions};

fn xtask(args: &[&str], stack: &str, endpoint: &str, config: &Path) -> Output {
    let root = testkit::workspace_root();
    #[allow(clippy::disallowed_methods)] // the README's command, run as a user would
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // As from a shell: without what `cargo test` sets for this test (CARGO_PKG_NAME…),
    // which build scripts watch; keeping them would rebuild crates the suite shares.
    for (name, _) in std::env::vars() {
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == "CARGO_TARGET_TMPDIR"
        {
            cargo.env_remove(name);
        }
    }
    let out = cargo
        .current_dir(&root)
        .arg("xtask")
        .args(args)
        .args(["--stack", stack, "--endpoint-url", endpoint, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo xtask {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn xtask_up_publishes_deploys_and_down_removes_everything() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let config = crate::helpers::config_file();

    let first = xtask(&["up", "--debug"], &name, &moto.endpoint, config.path());
    let stdout = String::from_utf8_lossy(&first.stdout);
    let release = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Published release "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release in:\n{stdout}"))
        .to_owned();

    let options = StackOptions {
        endpoint: Some(moto.endpoint.clone()),
        ..StackOptions::default()
    };
    let stack = Stack::open(crate::helpers::config_for(&name), options)
        .await
        .unwrap();
    // The binaries and their checksums are in the bucket, under the release.
    let listed = stack
        .aws
        .s3
        .list_objects_v2()
        .bucket(stack.bucket())
        .prefix(format!("artifacts/{release}/"))
        .send()
        .await
        .unwrap();
    let mut keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort_unstable();
    let prefix = format!("artifacts/{release}/");
    assert_eq!(
        keys,
        ["api", "api.sha256", "worker", "worker.sha256"].map(|k| format!("{prefix}{k}"))
    );
    // What instances download matches the checksum published beside it.
    let read = |key: String| {
        let s3 = stack.aws.s3.clone();
        let bucket = stack.bucket();
        async move {
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            object.body.collect().await.unwrap().into_bytes()
        }
    };
    let api = read(format!("{prefix}api")).await;
    assert!(
        api.len() > 1_000_000,
        "the api artifact is {} bytes",
        api.len()
    );
    let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&api));
    let checksum = read(format!("{prefix}api.sha256")).await;
    assert_eq!(
        String::from_utf8_lossy(&checksum),
        format!("{digest}  api\n"),
        "the published checksum is not the artifact's"
    );
    // Both launch templates carry user data naming that release.
    for tier in ["web", "worker"] {
        let text =
            crate::helpers::user_data(&stack.aws.ec2, &format!("{name}-{tier}-template")).await;
        assert!(text.contains(&format!("RELEASE='{release}'")), "{tier}");
    }
    // It reports the load balancer's URL and how to read the logs.
    let dns = stack.aws.load_balancer_dns().await.unwrap().unwrap();
    assert!(
        stdout.contains(&format!("URL: http://{dns}/api/health")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("aws logs tail /anb/{name}")),
        "{stdout}"
    );

    // The README's status command: in sync (exit 0) right after a deploy.
    let status = xtask(
        &["provision", "status"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("No changes"), "{table}");

    // The same build again: nothing to publish, nothing to change.
    let second = xtask(&["up", "--debug"], &name, &moto.endpoint, config.path());
    let (out, err) = (
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr),
    );
    assert!(
        out.contains(&format!("Published release {release}")),
        "{out}"
    );
    assert!(err.contains("is already published"), "{err}");
    assert!(out.contains("No changes"), "{out}");

    // A new release updates both templates and `--wait` rolls the groups one after the
    // other (the stand-in in front of moto answers the instance refreshes).
    let third = xtask(
        &["up", "--debug", "--release", "e2e-2"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    let err = String::from_utf8_lossy(&third.stderr);
    for tier in ["web", "worker"] {
        let template = format!("{name}-{tier}-template");
        assert!(
            err.contains(&format!("updating launch-template {template}")),
            "{err}"
        );
        let group = format!("{name}-{tier}-asg");
        assert!(err.contains(&format!("{group}: replacing")), "{err}");
    }
    assert_eq!(
        moto.events(&name),
        [
            format!("started {name}-web-asg"),
            format!("Successful {name}-web-asg"),
            format!("started {name}-worker-asg"),
            format!("Successful {name}-worker-asg"),
        ],
        "{err}"
    );
    let plan = stack.changes().await.unwrap();
    let template = plan
        .iter()
        .find(|c| c.name == format!("{name}-web-template"))
        .unwrap();
    assert_eq!(template.action, provision::model::Action::Ok);
    assert_eq!(
        template.desired["release"], "e2e-2",
        "status follows the deployed release"
    );

    xtask(
        &["down", "--yes", "--delete-videos"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert!(
        stack.aws.observe(&stack.bucket()).await.unwrap().is_empty(),
        "something of the stack is left"
    );
}
