//! The pinned Python tools the tests use (the moto AWS emulator, the schemathesis OpenAPI
//! fuzzer): their versions, where `cargo xtask ci` installs them, and the one way moto is
//! started; plus the variables cargo sets for a program it runs, which must not reach the
//! cargo that program starts. Only std here: xtask builds this module alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Pinned: later versions may change what the emulator accepts.
pub const MOTO_VERSION: &str = "5.2.5";
/// Pinned, like moto: the fuzzer's checks change between versions.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The virtualenv of the pinned moto under a scratch directory (the clone's `target/`).
pub fn moto_venv(scratch: &Path) -> PathBuf {
    scratch.join("tools").join(format!("moto-{MOTO_VERSION}"))
}

/// The virtualenv of the pinned schemathesis under a scratch directory.
pub fn schemathesis_venv(scratch: &Path) -> PathBuf {
    scratch
        .join("tools")
        .join(format!("schemathesis-{SCHEMATHESIS_VERSION}"))
}

/// Runs moto's server on 127.0.0.1:`port`; it also exits when its stdin closes, so a
/// server whose owner dies (a test process that panicked, say) never outlives it.
const MOTO_LAUNCHER: &str = r#"
import os, sys, threading
def exit_with_parent():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=exit_with_parent, daemon=True).start()
# moto 5.2.5 parses the UserData of a launch template's first version but keeps a later
# version's (CreateLaunchTemplateVersion) as plain text, and an Auto Scaling launch from
# such a version then fails an assertion (a 500): parsed here as the first version's is.
from moto.ec2.models.launch_templates import LaunchTemplate
from moto.ec2.utils import parse_user_data
_create_version = LaunchTemplate.create_version
def _create_version_parsed(self, data, description):
    if isinstance(data.get("UserData"), str):
        data = dict(data, UserData=parse_user_data(data["UserData"]))
    return _create_version(self, data, description)
LaunchTemplate.create_version = _create_version_parsed
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// Starts moto with `python` on 127.0.0.1:`port`, its stderr (one line per request) sent
/// to `stderr`. Keep the child's stdin open for as long as the server should run.
pub fn spawn_moto(python: &Path, port: u16, stderr: Stdio) -> std::io::Result<Child> {
    #[allow(clippy::disallowed_methods)] // the emulator the tests and benchmarks talk to
    Command::new(python)
        .args(["-c", MOTO_LAUNCHER, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
}

/// Whether cargo sets `name` for the program it runs (`cargo run`, `cargo test`): such a
/// variable must be dropped before that program starts cargo itself. Build scripts such as
/// ring's declare them with `rerun-if-env-changed`, so passing them on would rebuild those
/// crates, and everything above them (the AWS SDKs), whenever builds alternate.
pub fn is_set_by_cargo(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cargo_sets_for_its_programs_is_dropped() {
        for set in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_BIN_EXE_api",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ] {
            assert!(is_set_by_cargo(set), "{set}");
        }
        for kept in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO",
            "CARGO_TERM_COLOR",
            "PATH",
        ] {
            assert!(!is_set_by_cargo(kept), "{kept}");
        }
    }
}
