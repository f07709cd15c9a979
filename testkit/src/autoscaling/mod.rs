//! The Auto Scaling calls moto 5.2.5 does not model, answered in front of it: instance
//! refreshes (`StartInstanceRefresh`, `DescribeInstanceRefreshes`) and lifecycle actions
//! (`CompleteLifecycleAction`, `RecordLifecycleActionHeartbeat`). Every other request
//! goes to moto unchanged, so a client pointed at [`AutoScalingStandIn::endpoint`] sees
//! one AWS. The stand-in refuses what AWS's API reference says AWS refuses (quoted where
//! AWS's message is known), records every Query API request for the tests to check, and
//! carries a refresh out on moto as AWS would: the group moves to the desired launch
//! template version and its older instances are terminated for moto to replace.
//!
//! A refresh advances one step each time it is described (Pending, InProgress at 0 and
//! 50 %, then its end), so a client that follows it sees it move without waiting; a test
//! chooses how each group's next refresh ends with [`AutoScalingStandIn::set_outcome`].
//! A group whose instances really run (the game day's fleet) has its refreshes driven
//! instead ([`AutoScalingStandIn::drive_refreshes`]): they move only when the one that
//! carries them out says so ([`AutoScalingStandIn::advance_refresh`]), so a client that
//! follows one sees the real replacements' pace and outcome.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

mod lifecycle;
mod refresh;

/// The XML namespace of every Auto Scaling answer.
const NAMESPACE: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// The statuses of a refresh that has not ended.
const ACTIVE: [&str; 3] = ["Pending", "InProgress", "RollbackInProgress"];

/// How the next instance refresh of a group ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RefreshOutcome {
    /// Every instance replaced (the default).
    #[default]
    Succeed,
    /// One of the refresh's alarms went off (the reason names it): AWS rolls back to the
    /// configuration the group had before, and the group keeps its instances.
    RollBack(String),
    /// Failed without a rollback.
    Fail(String),
}

/// Every status a refresh can have (AWS's `InstanceRefreshStatus`).
const STATUSES: [&str; 10] = [
    "Pending",
    "InProgress",
    "Successful",
    "Failed",
    "Cancelling",
    "Cancelled",
    "RollbackInProgress",
    "RollbackFailed",
    "RollbackSuccessful",
    "Baking",
];

/// An active refresh as the one who carries it out sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOrder {
    pub id: String,
    pub status: &'static str,
    /// (template name, version) of its desired configuration, if one was given.
    pub desired: Option<(String, String)>,
    /// The request's `Preferences.*` parameters without the prefix (`InstanceWarmup`…).
    pub preferences: BTreeMap<String, String>,
}

/// One request the stand-in answered: its action and its form parameters.
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Refresh {
    id: String,
    group: String,
    status: &'static str,
    reason: String,
    percent: u32,
    to_update: usize,
    started: chrono::DateTime<chrono::Utc>,
    ended: Option<chrono::DateTime<chrono::Utc>>,
    /// (template name, version) of the desired configuration, if one was given.
    desired: Option<(String, String)>,
    /// The request's `Preferences.*` parameters, as given.
    preferences: BTreeMap<String, String>,
    outcome: RefreshOutcome,
}

#[derive(Debug, Default)]
struct State {
    refreshes: Vec<Refresh>,
    outcomes: BTreeMap<String, RefreshOutcome>,
    calls: Vec<Call>,
    /// "started GROUP" and "STATUS GROUP" lines, in the order they happened.
    events: Vec<String>,
    /// (group, hook, instance) of the lifecycle actions a test began.
    pending_actions: Vec<(String, String, String)>,
    /// Groups whose instances' calls are refused, as a role without the permission is.
    refused_groups: Vec<String>,
    /// Groups whose refreshes move only by [`AutoScalingStandIn::advance_refresh`].
    driven_groups: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    moto: String,
    http: reqwest::Client,
    state: Mutex<State>,
}

/// The stand-in, listening on 127.0.0.1 until the test process ends.
#[derive(Debug)]
pub struct AutoScalingStandIn {
    /// Where clients send every AWS request (moto's other services included).
    pub endpoint: String,
    shared: Arc<Shared>,
}

/// The stand-in in front of the process's shared moto ([`crate::moto`]).
#[cfg(feature = "services")]
pub fn autoscaling_stand_in() -> &'static AutoScalingStandIn {
    static STAND_IN: std::sync::OnceLock<AutoScalingStandIn> = std::sync::OnceLock::new();
    STAND_IN.get_or_init(|| AutoScalingStandIn::start(&crate::moto().endpoint))
}

impl AutoScalingStandIn {
    /// Starts one in front of the moto server at `moto`, on a thread of its own (tests
    /// each have their own runtime; this one outlives them all).
    pub fn start(moto: &str) -> Self {
        let shared = Arc::new(Shared {
            moto: moto.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            state: Mutex::new(State::default()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        let address = listener.local_addr().expect("stand-in address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let serving = Arc::clone(&shared);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the stand-in's runtime");
            runtime.block_on(serve(listener, serving));
        });
        Self {
            endpoint: format!("http://{address}"),
            shared,
        }
    }

    /// How the next refresh started on `group` ends (until set again).
    pub fn set_outcome(&self, group: &str, outcome: RefreshOutcome) {
        self.shared
            .lock()
            .outcomes
            .insert(group.to_owned(), outcome);
    }

    /// From now on the refreshes of `group` are carried out by the caller: describing one
    /// no longer moves it, [`Self::advance_refresh`] does.
    pub fn drive_refreshes(&self, group: &str) {
        self.shared.lock().driven_groups.push(group.to_owned());
    }

    /// The refresh of `group` that has not ended, if any.
    pub fn active_refresh(&self, group: &str) -> Option<RefreshOrder> {
        let state = self.shared.lock();
        let refresh = state
            .refreshes
            .iter()
            .find(|r| r.group == group && ACTIVE.contains(&r.status))?;
        Some(RefreshOrder {
            id: refresh.id.clone(),
            status: refresh.status,
            desired: refresh.desired.clone(),
            preferences: refresh.preferences.clone(),
        })
    }

    /// Moves refresh `id` to `status` (one of AWS's) with `reason`, its percentage
    /// complete and the instances it has still to replace, as its driver saw them; an
    /// ending status records the end time and the "STATUS GROUP" event.
    ///
    /// # Panics
    /// When `status` is not one of AWS's refresh statuses, or no refresh has `id`.
    pub fn advance_refresh(
        &self,
        id: &str,
        status: &'static str,
        reason: &str,
        percent: u32,
        to_update: usize,
    ) {
        assert!(STATUSES.contains(&status), "no refresh status {status}");
        let mut state = self.shared.lock();
        let refresh = state
            .refreshes
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no instance refresh {id}"));
        refresh.status = status;
        refresh.reason = reason.to_owned();
        refresh.percent = percent.min(100);
        refresh.to_update = to_update;
        let ended = !ACTIVE.contains(&status) && refresh.ended.is_none();
        if ended {
            refresh.ended = Some(chrono::Utc::now());
        }
        let event = format!("{status} {}", refresh.group);
        if ended {
            state.events.push(event);
        }
    }

    /// The requests answered here for `action`, oldest first.
    pub fn calls(&self, action: &str) -> Vec<Call> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .cloned()
            .collect()
    }

    /// What happened to the refreshes of groups whose names start with `prefix`, in
    /// order: "started GROUP", then "Successful GROUP" (or the status it ended with).
    pub fn events(&self, prefix: &str) -> Vec<String> {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|e| {
                e.split_once(' ')
                    .is_some_and(|(_, g)| g.starts_with(prefix))
            })
            .cloned()
            .collect()
    }

    /// Refuses, from now on, the calls an instance makes about `group`
    /// (`SetInstanceProtection`, `CompleteLifecycleAction`, `RecordLifecycleActionHeartbeat`)
    /// as AWS refuses a role without the permission: 403 AccessDenied.
    pub fn refuse_instance_calls(&self, group: &str) {
        self.shared.lock().refused_groups.push(group.to_owned());
    }

    /// Creates group `group` on moto with one instance (from a launch configuration of
    /// moto's stock image) and a termination hook `hook` as `provision` makes it; returns
    /// the instance's id.
    pub async fn create_group_with_hook(&self, group: &str, hook: &str) -> String {
        let shared = &self.shared;
        let configuration = format!("{group}-configuration");
        for params in [
            vec![
                ("Action", "CreateLaunchConfiguration"),
                ("LaunchConfigurationName", configuration.as_str()),
                ("ImageId", "ami-1e749f67"),
                ("InstanceType", "t3.micro"),
            ],
            vec![
                ("Action", "CreateAutoScalingGroup"),
                ("AutoScalingGroupName", group),
                ("LaunchConfigurationName", configuration.as_str()),
                ("MinSize", "0"),
                ("MaxSize", "2"),
                ("DesiredCapacity", "1"),
                ("AvailabilityZones.member.1", "us-east-1a"),
            ],
            vec![
                ("Action", "PutLifecycleHook"),
                ("AutoScalingGroupName", group),
                ("LifecycleHookName", hook),
                (
                    "LifecycleTransition",
                    "autoscaling:EC2_INSTANCE_TERMINATING",
                ),
                ("HeartbeatTimeout", "900"),
                ("DefaultResult", "CONTINUE"),
            ],
        ] {
            shared
                .moto_call("autoscaling", &params)
                .await
                .expect("moto makes the group");
        }
        let made = shared.group(group).await.expect("moto describes the group");
        made.and_then(|g| g.instances.into_iter().next())
            .expect("the group has its instance")
            .0
    }

    /// Whether moto holds `instance` of `group` protected from scale-in.
    pub async fn is_protected(&self, group: &str, instance: &str) -> bool {
        let found = self
            .shared
            .group(group)
            .await
            .expect("moto describes the group");
        found.is_some_and(|g| g.protected.iter().any(|p| p == instance))
    }

    /// Puts `instance` of `group` into `Terminating:Wait` for `hook`, as a scale-in would:
    /// from now on a `CompleteLifecycleAction` for it is accepted (once).
    pub fn begin_termination(&self, group: &str, hook: &str, instance: &str) {
        self.shared.lock().pending_actions.push((
            group.to_owned(),
            hook.to_owned(),
            instance.to_owned(),
        ));
    }

    /// Whether `instance`'s termination for `hook` still waits for its
    /// `CompleteLifecycleAction`.
    pub fn termination_pending(&self, group: &str, hook: &str, instance: &str) -> bool {
        self.shared
            .lock()
            .pending_actions
            .iter()
            .any(|(g, h, i)| g == group && h == hook && i == instance)
    }

    /// Ends `instance`'s wait for `hook` without a completion (its heartbeat timeout
    /// passed: AWS then takes the hook's default result).
    pub fn expire_termination(&self, group: &str, hook: &str, instance: &str) {
        self.shared
            .lock()
            .pending_actions
            .retain(|(g, h, i)| !(g == group && h == hook && i == instance));
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, action: &str, params: &BTreeMap<String, String>) {
        self.lock().calls.push(Call {
            action: action.to_owned(),
            params: params.clone(),
        });
    }

    /// One Query API call to moto, signed well enough for moto to route it to
    /// `service`; the answer's body, or an error with it when the status is not 200.
    async fn moto_call(&self, service: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let api_version = if service == "ec2" {
            "2016-11-15"
        } else {
            "2011-01-01"
        };
        let mut form: Vec<(&str, &str)> = vec![("Version", api_version)];
        form.extend_from_slice(params);
        let answer = self
            .http
            .post(&self.moto)
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/\
                     aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&form)?)
            .send()
            .await?;
        let status = answer.status();
        let body = answer.text().await?;
        anyhow::ensure!(status.is_success(), "moto answered {status}: {body}");
        Ok(body)
    }

    /// The group's launch template name and its instances with the template version
    /// each reports, or None when moto has no such group.
    async fn group(&self, name: &str) -> anyhow::Result<Option<Group>> {
        let xml = self
            .moto_call(
                "autoscaling",
                &[
                    ("Action", "DescribeAutoScalingGroups"),
                    ("AutoScalingGroupNames.member.1", name),
                ],
            )
            .await?;
        Ok(parse_group(&xml))
    }
}

#[derive(Debug, Default, PartialEq)]
struct Group {
    template: Option<String>,
    /// The launch template version the group launches, as given (a number, `$Latest`…).
    version: Option<String>,
    /// (instance id, launch template version it reports).
    instances: Vec<(String, String)>,
    /// The instances protected from scale-in.
    protected: Vec<String>,
}

/// Reads the first group of a DescribeAutoScalingGroups answer.
fn parse_group(xml: &str) -> Option<Group> {
    let mut path: Vec<&str> = Vec::new();
    let mut group: Option<Group> = None;
    for token in xmlparser::Tokenizer::from(xml).flatten() {
        match token {
            xmlparser::Token::ElementStart { local, .. } => path.push(local.as_str()),
            xmlparser::Token::ElementEnd { end, .. }
                if !matches!(end, xmlparser::ElementEnd::Open) =>
            {
                path.pop();
            }
            xmlparser::Token::Text { text } => {
                let text = text.as_str().trim();
                let in_instances = path.contains(&"Instances");
                if path.ends_with(&["AutoScalingGroups", "member", "AutoScalingGroupName"]) {
                    if group.is_some() {
                        break;
                    }
                    group = Some(Group::default());
                } else if let Some(g) = group.as_mut() {
                    if path.ends_with(&["Instances", "member", "InstanceId"]) {
                        g.instances.push((text.to_owned(), String::new()));
                    } else if path.ends_with(&["Instances", "member", "ProtectedFromScaleIn"]) {
                        if let Some(last) = g.instances.last().filter(|_| text == "true") {
                            g.protected.push(last.0.clone());
                        }
                    } else if in_instances && path.ends_with(&["LaunchTemplate", "Version"]) {
                        if let Some(last) = g.instances.last_mut() {
                            last.1 = text.to_owned();
                        }
                    } else if !in_instances
                        && path.ends_with(&["member", "LaunchTemplate", "LaunchTemplateName"])
                    {
                        g.template = Some(text.to_owned());
                    } else if !in_instances
                        && path.ends_with(&["member", "LaunchTemplate", "Version"])
                    {
                        g.version = Some(text.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    group
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    while let Ok((stream, _)) = listener.accept().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidRequest", &e.to_string()),
    };
    let is_form = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if parts.method == hyper::Method::POST && is_form {
        let params: BTreeMap<String, String> =
            serde_urlencoded::from_bytes(&body).unwrap_or_default();
        if let Some(response) = lifecycle::refuse_instance_call(shared, &params) {
            return response;
        }
        let answered = match params.get("Action").map(String::as_str) {
            Some("StartInstanceRefresh") => Some(refresh::start(shared, &params).await),
            Some("DescribeInstanceRefreshes") => Some(refresh::describe(shared, &params).await),
            Some(action @ ("CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat")) => {
                Some(lifecycle::action(shared, action, &params).await)
            }
            _ => None,
        };
        if let Some(response) = answered {
            return response;
        }
        if let Some(action) = params.get("Action") {
            shared.record(action, &params);
        }
    }
    forward(shared, parts, body).await
}

/// Sends the request on to moto as it came, and its answer back.
async fn forward(
    shared: &Shared,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = shared
        .http
        .request(parts.method.clone(), format!("{}{path}", shared.moto))
        .body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "expect" | "transfer-encoding"
        ) {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "StandInUpstream", &e.to_string()),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response
        .body(Full::new(bytes))
        .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, "StandInUpstream", &e.to_string()))
}

/// An Auto Scaling error answer.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let xml = format!(
        "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        escape(message),
        uuid::Uuid::new_v4()
    );
    xml_response(status, xml)
}

fn invalid(message: &str) -> Response<Full<Bytes>> {
    error(StatusCode::BAD_REQUEST, "ValidationError", message)
}

/// A successful answer to `action` whose result holds `result`.
fn answer(action: &str, result: &str) -> Response<Full<Bytes>> {
    let xml = format!(
        "<{action}Response xmlns=\"{NAMESPACE}\"><{action}Result>{result}</{action}Result>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        uuid::Uuid::new_v4()
    );
    xml_response(StatusCode::OK, xml)
}

fn xml_response(status: StatusCode, xml: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .expect("a well-formed response")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_answer_gives_its_template_and_instance_versions() {
        let xml = "<DescribeAutoScalingGroupsResponse><DescribeAutoScalingGroupsResult>\
            <AutoScalingGroups><member><AutoScalingGroupName>g</AutoScalingGroupName>\
            <LaunchTemplate><LaunchTemplateId>lt-1</LaunchTemplateId><LaunchTemplateName>t\
            </LaunchTemplateName><Version>2</Version></LaunchTemplate><Instances><member>\
            <InstanceId>i-1</InstanceId><LaunchTemplate><LaunchTemplateName>t</LaunchTemplateName>\
            <Version>1</Version></LaunchTemplate></member><member><InstanceId>i-2</InstanceId>\
            <LaunchTemplate><Version>2</Version></LaunchTemplate></member></Instances></member>\
            </AutoScalingGroups></DescribeAutoScalingGroupsResult></DescribeAutoScalingGroupsResponse>";
        assert_eq!(
            parse_group(xml),
            Some(Group {
                template: Some("t".into()),
                version: Some("2".into()),
                instances: vec![("i-1".into(), "1".into()), ("i-2".into(), "2".into())],
                protected: vec![],
            })
        );
        assert_eq!(parse_group("<X><AutoScalingGroups/></X>"), None);
    }
}
