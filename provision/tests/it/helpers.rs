//! Helpers of the provision tests: stack configurations, the binary, stand-in releases.

use std::process::Command;

use aws_sdk_ec2::types::Filter;
use provision::aws::STACK_TAG;
use provision::config::Config;
use provision::{Stack, StackOptions};

/// Options naming the stand-in release "r1", against `endpoint`.
/// Release r1 on the emulator at `endpoint`; its `down` deletes the bucket too, so a test
/// leaves nothing behind (`safety.rs` checks what plain `down` keeps).
pub fn release_r1(endpoint: &str) -> StackOptions {
    StackOptions {
        endpoint: Some(endpoint.to_owned()),
        release: Some("r1".into()),
        safeguards: provision::Safeguards {
            delete_videos: true,
            ..provision::Safeguards::default()
        },
        ..StackOptions::default()
    }
}

pub fn config_for(stack: &str) -> Config {
    let mut config = Config::load(None).unwrap();
    config.stack.name = stack.to_owned();
    // One of moto's stock images (the real lookup wants Debian's, which moto lacks).
    config.instances.ami = "ami-1e749f67".to_owned();
    config
}

/// A config file naming one of moto's stock images, for runs of the binary.
pub fn config_file() -> tempfile::NamedTempFile {
    let config = tempfile::NamedTempFile::new().unwrap();
    let text = provision::config::DEFAULT_TOML.replace("ami = \"\"", "ami = \"ami-1e749f67\"");
    std::fs::write(config.path(), text).unwrap();
    config
}

pub fn status_exit_code(endpoint: &str, stack: &str) -> i32 {
    status_exit_code_with(endpoint, stack, |text| text)
}

/// `provision status` with the test configuration as `edit` changes it.
pub fn status_exit_code_with(endpoint: &str, stack: &str, edit: impl Fn(String) -> String) -> i32 {
    let config = tempfile::NamedTempFile::new().unwrap();
    let text = provision::config::DEFAULT_TOML.replace("ami = \"\"", "ami = \"ami-1e749f67\"");
    std::fs::write(config.path(), edit(text)).unwrap();
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args([
            "status",
            "--stack",
            stack,
            "--endpoint-url",
            endpoint,
            "--config",
        ])
        .arg(config.path())
        .output()
        .unwrap();
    out.status.code().unwrap()
}

/// The EC2 filter for everything tagged with stack `name`.
pub fn stack_tag(name: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{STACK_TAG}"))
        .values(name)
        .build()
}

/// The user data of a launch template's latest version, decoded.
pub async fn user_data(ec2: &aws_sdk_ec2::Client, template: &str) -> String {
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(template)
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let encoded = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap()
        .user_data()
        .unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Stand-ins for the release's binaries: nothing boots on moto, but `up` checks that
/// what its instances would download is there.
pub async fn publish_stand_ins(stack: &Stack, release: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stand-in");
    std::fs::write(&file, b"not a real binary").unwrap();
    stack
        .publish(
            release,
            &[("api".into(), file.clone()), ("worker".into(), file)],
        )
        .await
        .unwrap();
}
