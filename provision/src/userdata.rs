//! The instances' user data: `userdata/common.sh` followed by the tier's script, with
//! their `{{name}}` placeholders filled in from the configuration and the release.
//!
//! Only names go in (bucket, queue, database instance, secret): the instance resolves
//! them when it boots and reads secrets each time a service starts. So user data is a
//! pure function of the configuration and the release, `plan` can show it before anything
//! exists, and it changes (rolling the instances) only when one of those changes.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::names::{self, Tier};

const COMMON: &str = include_str!("../../userdata/common.sh");
const WEB: &str = include_str!("../../userdata/web.sh");
const WORKER: &str = include_str!("../../userdata/worker.sh");

/// EC2's limit on user data, before base64.
pub const MAX_BYTES: usize = 16 * 1024;

/// What a release name may contain: it is an S3 key segment and a shell word.
pub fn valid_release(release: &str) -> bool {
    !release.is_empty()
        && release.len() <= 64
        && !release.starts_with('.')
        && release
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A release as instances install it: its name, and each binary's SHA-256 as `up` read
/// it from the bucket. The digests are pinned in the user data, so a binary swapped in the
/// bucket later (with its `.sha256` beside it) fails the boot instead of running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Release<'a> {
    pub name: &'a str,
    pub api_sha256: &'a str,
    pub worker_sha256: &'a str,
}

impl Release<'_> {
    /// The digest of the binary `tier` runs.
    pub fn sha256_for(&self, tier: Tier) -> &str {
        match tier {
            Tier::Web => self.api_sha256,
            Tier::Worker => self.worker_sha256,
        }
    }
}

/// The values a template names, in the order its header lists them.
pub fn values(
    tier: Tier,
    config: &Config,
    account_id: &str,
    release: &Release,
) -> Vec<(&'static str, String)> {
    let stack = &config.stack.name;
    vec![
        ("tier", tier.name().to_owned()),
        ("stack", stack.clone()),
        ("region", config.stack.region.clone()),
        ("account_id", account_id.to_owned()),
        ("release", release.name.to_owned()),
        ("binary_sha256", release.sha256_for(tier).to_owned()),
        ("bucket", names::bucket_name(config, account_id)),
        ("queue", names::queue_name(stack)),
        ("database", names::database_name(stack)),
        ("database_name", config.database.database_name.clone()),
        ("token_secret", names::token_secret_name(stack)),
        ("cloudwatch_agent", config.logs.cloudwatch_agent.to_string()),
        (
            "cloudwatch_agent_version",
            config.logs.cloudwatch_agent_version.clone(),
        ),
        ("log_retention_days", config.logs.retention_days.to_string()),
        ("worker_group", names::asg_name(stack, "worker")),
        ("drain_hook", names::drain_hook_name(stack)),
        (
            "visibility_timeout",
            config.queue.visibility_timeout.as_secs().to_string(),
        ),
    ]
}

pub fn render(tier: Tier, config: &Config, account_id: &str, release: &Release) -> String {
    let tier_script = match tier {
        Tier::Web => WEB,
        Tier::Worker => WORKER,
    };
    let mut text = format!("{COMMON}{tier_script}");
    for (name, value) in values(tier, config, account_id, release) {
        text = text.replace(&format!("{{{{{name}}}}}"), &value);
    }
    text
}

/// The `NAME='value'` assignments at the top of rendered user data: how `observe` reads
/// back which release, queue, database and secret a launch template's instances use.
pub fn header(user_data: &str) -> BTreeMap<String, String> {
    user_data
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once("='")?;
            let value = value.strip_suffix('\'')?;
            let is_name = name.starts_with(|c: char| c.is_ascii_uppercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Config {
        Config::load(None).unwrap()
    }

    const R1: Release = Release {
        name: "r1",
        api_sha256: "aaaa000000000000000000000000000000000000000000000000000000000001",
        worker_sha256: "bbbb000000000000000000000000000000000000000000000000000000000002",
    };

    #[test]
    fn every_placeholder_is_filled_and_the_header_reads_back() {
        for tier in [Tier::Web, Tier::Worker] {
            let text = render(tier, &seed(), "123456789012", &R1);
            assert!(
                !text.contains("{{"),
                "{} has a placeholder left",
                tier.name()
            );
            assert!(
                text.len() < MAX_BYTES,
                "{} is {} bytes",
                tier.name(),
                text.len()
            );
            let header = header(&text);
            assert_eq!(header["RELEASE"], "r1");
            assert_eq!(header["BINARY_SHA256"], R1.sha256_for(tier));
            assert_eq!(header["ACCOUNT_ID"], "123456789012");
            assert_eq!(header["QUEUE"], "anb-video-processing");
            assert_eq!(header["DATABASE"], "anb-postgres");
            assert_eq!(header["BUCKET"], "anb-videos-123456789012");
            assert_eq!(header["TIER"], tier.name());
        }
    }

    /// The worker hides a job it received for the queue's visibility timeout (it extends
    /// it while it works), not for its own default: a job whose instance lost power comes
    /// back after what `queue.visibility_timeout` says.
    #[test]
    fn the_worker_uses_the_queues_visibility_timeout() {
        let mut config = seed();
        config.queue.visibility_timeout = std::time::Duration::from_secs(60);
        let text = render(Tier::Worker, &config, "123456789012", &R1);
        assert_eq!(header(&text)["VISIBILITY_TIMEOUT_SECONDS"], "60");
        assert!(
            text.contains("APP__WORKER__VISIBILITY_TIMEOUT=${VISIBILITY_TIMEOUT_SECONDS}s"),
            "{text}"
        );
    }

    /// Each tier's script, as rendered for the seed configuration with the log agent on
    /// and off, passes shellcheck (the Debian package) with no warning at all.
    #[test]
    fn rendered_user_data_passes_shellcheck() {
        use std::io::Write;
        let mut off = seed();
        off.logs.cloudwatch_agent = false;
        for config in [seed(), off] {
            for tier in [Tier::Web, Tier::Worker] {
                let text = render(tier, &config, "123456789012", &R1);
                #[allow(clippy::disallowed_methods)] // shellcheck is the check
                let mut shellcheck = std::process::Command::new("shellcheck")
                    .args(["--severity=style", "--shell=bash", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot run shellcheck ({e}): apt-get install shellcheck")
                    });
                shellcheck
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                let out = shellcheck.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "shellcheck on the {} user data:\n{}",
                    tier.name(),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }

    #[test]
    fn no_secret_is_rendered() {
        for tier in [Tier::Web, Tier::Worker] {
            let text = render(tier, &seed(), "123456789012", &R1);
            // The only places secrets go are written at service start, from Secrets
            // Manager, into /run: the rendered text names where to read them, nothing more.
            for line in text.lines() {
                let line = line.trim();
                for setting in ["APP__DATABASE__URL=", "APP__AUTH__JWT_SECRET="] {
                    if let Some(value) = line.strip_prefix(&format!("echo \"{setting}")) {
                        assert!(
                            value.starts_with('$'),
                            "{setting} is given a literal: {line}"
                        );
                    }
                }
                assert!(!line.contains("password="), "{line}");
            }
        }
    }

    /// The boot script builds the database URL from the secret RDS manages with an inline
    /// Python program; passwords may hold any punctuation, so it must percent-encode them.
    #[test]
    fn the_database_url_survives_any_password() {
        use std::io::Write;
        let start = COMMON.find("python3 -c '").unwrap() + "python3 -c '".len();
        let end = start + COMMON[start..].find("' \"$address\"").unwrap();
        let program = &COMMON[start..end];
        #[allow(clippy::disallowed_methods)] // the script's own interpreter
        let mut python = std::process::Command::new("python3")
            .args([
                "-c",
                program,
                "db.example",
                "5432",
                "anb",
                "/usr/local/share/anb/rds-ca.pem",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        python
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"username": "anb", "password": "p@ss:w/rd#%?&x y"}"#)
            .unwrap();
        let out = python.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            "postgres://anb:p%40ss%3Aw%2Frd%23%25%3F%26x%20y@db.example:5432/anb?sslmode=verify-full&sslrootcert=/usr/local/share/anb/rds-ca.pem"
        );
    }

    /// The log agent's package is installed only if the pinned key signed it: a key file
    /// that also holds another key vouches for nothing that key signed (review 3, N10).
    /// Real keys, made here by gpg, and the script's own function.
    #[test]
    fn only_the_pinned_key_vouches_for_a_download() {
        let start = COMMON.find("verify_signed() {").unwrap();
        let end = start + COMMON[start..].find("\n}\n").unwrap() + 3;
        let function = &COMMON[start..end];
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"set -eu
say() {{ echo "$*" >&2; }}
{function}
export GNUPGHOME="{home}/keys"
install -d -m 0700 "$GNUPGHOME"
for who in pinned other; do
    gpg --batch --quiet --passphrase '' --quick-gen-key "$who <$who@example.com>" ed25519 sign never
done
fingerprint() {{ gpg --with-colons --list-keys "$1@example.com" | awk -F: '$1 == "fpr" {{ print $10; exit }}'; }}
gpg --batch --export >"{home}/both.gpg"
echo package >"{home}/agent.deb"
for who in pinned other; do
    gpg --batch --yes --local-user "$who@example.com" --detach-sign -o "{home}/$who.sig" "{home}/agent.deb"
done
pinned=$(fingerprint pinned)
verify_signed "{home}/a" "{home}/agent.deb" "{home}/pinned.sig" "{home}/both.gpg" "$pinned"
echo "signed by the pinned key: accepted"
if verify_signed "{home}/b" "{home}/agent.deb" "{home}/other.sig" "{home}/both.gpg" "$pinned"; then
    echo "signed by the other key: ACCEPTED"; exit 1
fi
echo "signed by the other key: refused"
"#,
            home = dir.path().display()
        );
        #[allow(clippy::disallowed_methods)] // bash runs the script's own function
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("the other key: refused"), "{stdout}");
    }

    /// The rehearsal's seam does nothing on AWS, where /etc/default/anb does not exist:
    /// the script's `aws` wrapper then adds no endpoint.
    #[test]
    fn the_rehearsal_seam_is_inert_without_its_file() {
        let start = COMMON.find("AWS_ENDPOINT_URL=\n").unwrap();
        let end = COMMON[start..].find("\"$@\"; }\n").unwrap() + start + "\"$@\"; }\n".len();
        let seam = &COMMON[start..end];
        assert!(
            !std::path::Path::new("/etc/default/anb").exists(),
            "this machine has /etc/default/anb; the test needs it absent"
        );
        #[allow(clippy::disallowed_methods)] // bash runs the script's own lines
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -eu\n{seam}\ncommand() {{ shift; echo \"$@\"; }}\naws s3 ls"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s3 ls");
    }

    #[test]
    fn release_names_are_s3_and_shell_safe() {
        assert!(valid_release("0.1.0-3f2a9c1d"));
        for bad in ["", "a b", "x'y", "..", "a/b", &"x".repeat(65)] {
            assert!(!valid_release(bad), "{bad:?}");
        }
    }
}
