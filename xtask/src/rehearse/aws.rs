//! AWS calls from the harness, through boto3 in one long-lived Python process (the one the
//! emulator's venv has): xtask links no AWS SDK (only `provision` does), and the game
//! day's controller asks several times a second. One JSON line per request and answer.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

/// Answers `{"service", "operation", "params"}` lines with `{"ok": …}` or `{"error": …}`.
const BRIDGE: &str = r#"
import json, sys
import boto3
endpoint, region = sys.argv[1:3]
clients = {}
for line in sys.stdin:
    request = json.loads(line)
    service = request["service"]
    try:
        if service not in clients:
            clients[service] = boto3.client(
                service, endpoint_url=endpoint, region_name=region,
                aws_access_key_id="testing", aws_secret_access_key="testing")
        answer = getattr(clients[service], request["operation"])(**request["params"])
        answer.pop("ResponseMetadata", None)
        print(json.dumps({"ok": answer}, default=str), flush=True)
    except Exception as e:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        print(json.dumps({"error": f"{code}: {e}"}), flush=True)
"#;

pub(super) struct Aws {
    child: Child,
    input: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Aws {
    /// boto3 against `endpoint` (the emulator, or the Auto Scaling stand-in before it).
    pub(super) fn start(python: &Path, endpoint: &str, region: &str) -> anyhow::Result<Self> {
        let mut child = crate::system::command(python)
            .args(["-c", BRIDGE, endpoint, region])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start boto3 for the game day's AWS calls")?;
        let input = child.stdin.take().context("boto3's input")?;
        let answers = BufReader::new(child.stdout.take().context("boto3's output")?);
        Ok(Self {
            child,
            input,
            answers,
        })
    }

    /// `operation` (boto3's snake_case name) of `service` with `params`; its answer.
    pub(super) fn call(
        &mut self,
        service: &str,
        operation: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let request = serde_json::json!({
            "service": service, "operation": operation, "params": params,
        });
        writeln!(self.input, "{request}").context("boto3 is gone")?;
        let mut line = String::new();
        if self.answers.read_line(&mut line)? == 0 {
            bail!("boto3 exited during {service} {operation}");
        }
        let mut answer: Value =
            serde_json::from_str(&line).with_context(|| format!("boto3 answered {line:?}"))?;
        if let Some(error) = answer.get("error") {
            bail!(
                "{service} {operation}: {}",
                error.as_str().unwrap_or_default()
            );
        }
        Ok(answer["ok"].take())
    }
}

impl Drop for Aws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
