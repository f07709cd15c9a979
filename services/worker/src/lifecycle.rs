//! The worker's part in its Auto Scaling group (on AWS only): while it holds a job it
//! protects its instance from scale-in, so the group removes idle workers first; when
//! the group terminates its instance anyway (a scale-in of busy workers, an instance
//! refresh), the termination hook holds the instance, the worker sees it in the instance
//! metadata (`autoscaling/target-lifecycle-state` becomes `Terminated`), takes no new
//! job, finishes the one in hand (sending heartbeats while it runs), and completes the
//! hook so the instance may go. ARCHITECTURE.md says why both.
//!
//! The three Auto Scaling calls are signed here (SigV4 over a form POST), so the worker
//! does not link the Auto Scaling SDK. A call the instance's role refuses (an AWS
//! Academy lab's `LabInstanceProfile` may) is logged once and not made again: the worker
//! then stops on SIGTERM as before, and the hook lets the instance go after its
//! heartbeat timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::watch;

use crate::Worker;

/// How often the instance's target lifecycle state is read (a local call).
const STATE_POLL: Duration = Duration::from_secs(2);
/// How often a worker finishing its job tells the hook it is still at it (the hook's
/// heartbeat timeout is 15 min by default).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5 * 60);
/// Each metadata request's limit: the service answers in milliseconds or not at all.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// The target lifecycle state that means the group is terminating the instance.
pub const TERMINATING: &str = "Terminated";

/// An Auto Scaling call that did not go through.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// The role may not make it: not tried again.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The instance, its group and hook, and how to reach the metadata service and Auto
/// Scaling.
pub struct Lifecycle {
    group: String,
    hook: String,
    instance_id: String,
    metadata_url: String,
    autoscaling_url: String,
    region: String,
    credentials: SharedCredentialsProvider,
    http: reqwest::Client,
    /// Set once a call is refused: no further calls.
    refused: AtomicBool,
    /// Set once the group terminates the instance.
    terminating: AtomicBool,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("group", &self.group)
            .field("hook", &self.hook)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// The instance's lifecycle, when the settings name a group and hook (on AWS); None
    /// on a local run. An error when they are set but the metadata service or the
    /// credentials cannot be read.
    pub async fn connect(settings: &backends::settings::Settings) -> anyhow::Result<Option<Self>> {
        let worker = &settings.worker;
        if worker.autoscaling_group.is_empty() || worker.lifecycle_hook.is_empty() {
            return Ok(None);
        }
        let aws = &settings.aws;
        let sdk = backends::aws_sdk_config(aws).await;
        let credentials = sdk
            .credentials_provider()
            .context("no AWS credentials for the Auto Scaling calls")?;
        let autoscaling_url = match &aws.endpoint_url {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
            None => format!("https://autoscaling.{}.amazonaws.com", aws.region),
        };
        let mut lifecycle = Self {
            group: worker.autoscaling_group.clone(),
            hook: worker.lifecycle_hook.clone(),
            instance_id: String::new(),
            metadata_url: worker.metadata_url.trim_end_matches('/').to_owned(),
            autoscaling_url,
            region: aws.region.clone(),
            credentials,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            refused: AtomicBool::new(false),
            terminating: AtomicBool::new(false),
        };
        lifecycle.instance_id = lifecycle
            .metadata("instance-id")
            .await
            .context("cannot read the instance id from the instance metadata service")?;
        Ok(Some(lifecycle))
    }

    /// `latest/meta-data/<path>`, through an IMDSv2 session token.
    async fn metadata(&self, path: &str) -> anyhow::Result<String> {
        let token = self
            .http
            .put(format!("{}/latest/api/token", self.metadata_url))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
            .timeout(METADATA_TIMEOUT)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let answer = self
            .http
            .get(format!("{}/latest/meta-data/{path}", self.metadata_url))
            .header("X-aws-ec2-metadata-token", token)
            .timeout(METADATA_TIMEOUT)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(answer.trim().to_owned())
    }

    /// What the group has in store for the instance: `InService`, `Terminated`, ….
    pub async fn target_state(&self) -> anyhow::Result<String> {
        self.metadata("autoscaling/target-lifecycle-state").await
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::Relaxed)
    }

    /// One Auto Scaling Query API call, signed with the instance's credentials.
    async fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<(), CallError> {
        let mut form = vec![("Action", action), ("Version", "2011-01-01")];
        form.extend_from_slice(params);
        let body = serde_urlencoded::to_string(&form).context("encode the request")?;
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .context("read the instance's credentials")?;
        let identity = credentials.into();
        let signing = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("autoscaling")
            .time(SystemTime::now())
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .context("signing parameters")?
            .into();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let host = self
            .autoscaling_url
            .split_once("://")
            .map_or(self.autoscaling_url.as_str(), |(_, rest)| rest);
        let host = host.split('/').next().unwrap_or(host);
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            &self.autoscaling_url,
            [("content-type", content_type), ("host", host)].into_iter(),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .context("a signable request")?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &signing)
            .context("sign the request")?
            .into_parts();
        let mut request = self
            .http
            .post(&self.autoscaling_url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let answer = request.send().await.context("send")?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let code = between(&text, "<Code>", "</Code>").unwrap_or_default();
        let message = between(&text, "<Message>", "</Message>").unwrap_or(&text);
        // Only a refusal of the permission: an expired token or a bad signature (clock
        // skew) is a 403 too, and passes.
        if matches!(
            code,
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation"
        ) {
            return Err(CallError::Refused(format!("{code}: {message}")));
        }
        Err(CallError::Failed(anyhow::anyhow!(
            "{status} {code}: {message}"
        )))
    }

    /// [`Self::call`], logged; after a refusal, no call at all.
    async fn try_call(&self, action: &str, params: &[(&str, &str)]) -> bool {
        if self.refused.load(Ordering::Relaxed) {
            return false;
        }
        match self.call(action, params).await {
            Ok(()) => true,
            Err(CallError::Refused(why)) => {
                self.refused.store(true, Ordering::Relaxed);
                tracing::warn!(
                    action,
                    why,
                    "the instance's role may not call Auto Scaling: no scale-in protection or \
                     lifecycle hook from now on; the worker stops on SIGTERM as before (the \
                     hook lets the instance go after its heartbeat timeout)"
                );
                false
            }
            Err(CallError::Failed(e)) => {
                tracing::warn!(action, error = format!("{e:#}"), "Auto Scaling call failed");
                false
            }
        }
    }

    async fn protect(&self, protected: bool) {
        let value = if protected { "true" } else { "false" };
        if self
            .try_call(
                "SetInstanceProtection",
                &[
                    ("AutoScalingGroupName", &self.group),
                    ("InstanceIds.member.1", &self.instance_id),
                    ("ProtectedFromScaleIn", value),
                ],
            )
            .await
        {
            tracing::debug!(protected, "scale-in protection set");
        }
    }

    async fn heartbeat(&self) {
        if self
            .try_call(
                "RecordLifecycleActionHeartbeat",
                &[
                    ("AutoScalingGroupName", &self.group),
                    ("LifecycleHookName", &self.hook),
                    ("InstanceId", &self.instance_id),
                ],
            )
            .await
        {
            tracing::info!("still finishing the job in hand: lifecycle hook heartbeat sent");
        }
    }

    /// Marks the instance terminating (the group's state said so before this process
    /// followed it: a worker restarted after its drain).
    pub fn mark_terminating(&self) {
        self.terminating.store(true, Ordering::Relaxed);
    }

    /// Lets the terminating instance go (when it is terminating), trying three times:
    /// a completion that does not go through holds the instance until the hook's
    /// heartbeat timeout.
    pub async fn complete(&self) {
        if !self.is_terminating() {
            return;
        }
        for attempt in 1..=3 {
            let completed = self
                .try_call(
                    "CompleteLifecycleAction",
                    &[
                        ("AutoScalingGroupName", &self.group),
                        ("LifecycleHookName", &self.hook),
                        ("InstanceId", &self.instance_id),
                        ("LifecycleActionResult", "CONTINUE"),
                    ],
                )
                .await;
            if completed {
                tracing::info!(
                    instance.id = %self.instance_id,
                    "lifecycle action completed: the group may terminate the instance"
                );
                return;
            }
            if self.refused.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
        }
    }

    /// Follows the instance's lifecycle while `worker` runs: protection mirrors whether it
    /// holds a job; once the group terminates the instance the worker finishes the job in
    /// hand (however long it takes) and `stop` ends its run, with heartbeats meanwhile.
    /// The caller completes the hook ([`Self::complete`]) once the run has returned.
    pub fn follow(self: Arc<Self>, worker: Arc<Worker>, stop: Arc<watch::Sender<bool>>) {
        let protection = {
            let lifecycle = self.clone();
            let mut jobs = worker.jobs_in_hand();
            tokio::spawn(async move {
                // Unknown at start (a worker restarted while protected): cleared first.
                let mut protected = true;
                loop {
                    let holding = *jobs.borrow_and_update() > 0;
                    if holding != protected && !lifecycle.is_terminating() {
                        lifecycle.protect(holding).await;
                        protected = holding;
                    }
                    if jobs.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        tokio::spawn(async move {
            let mut every = tokio::time::interval(STATE_POLL);
            loop {
                every.tick().await;
                match self.target_state().await {
                    Ok(state) if state == TERMINATING => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = format!("{e:#}"), "cannot read the lifecycle state")
                    }
                }
            }
            protection.abort();
            self.terminating.store(true, Ordering::Relaxed);
            tracing::info!(
                jobs = *worker.jobs_in_hand().borrow(),
                "the group is terminating this instance: no new jobs; finishing the one in hand"
            );
            worker.finish_jobs_in_hand();
            let _ = stop.send(true);
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                self.heartbeat().await;
            }
        });
    }
}

/// The text between the first `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}
