//! The instance metadata service (IMDSv2) of one pretend instance, for a binary that
//! reads its instance id and its Auto Scaling target lifecycle state: a session token
//! from `PUT /latest/api/token` is required on every read, as on EC2.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

/// Serves 127.0.0.1:[`MetadataStandIn::url`] until dropped.
#[derive(Debug)]
pub struct MetadataStandIn {
    /// Base URL, as `worker.metadata_url` takes it.
    pub url: String,
    target_state: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

const TOKEN: &str = "stand-in-session-token";

impl MetadataStandIn {
    /// Starts one for instance `instance_id`, in service.
    pub async fn start(instance_id: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the metadata stand-in");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let target_state = Arc::new(Mutex::new("InService".to_owned()));
        let state = target_state.clone();
        let instance_id = instance_id.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let instance_id = instance_id.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let answer = answer(&request, &instance_id, &state);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            target_state,
            task,
        }
    }

    /// What `autoscaling/target-lifecycle-state` answers from now on (`Terminated` when
    /// the group terminates the instance).
    pub fn set_target_state(&self, state: &str) {
        *self.target_state.lock().unwrap_or_else(|e| e.into_inner()) = state.to_owned();
    }
}

impl Drop for MetadataStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    instance_id: &str,
    state: &Mutex<String>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed response")
    };
    let path = request.uri().path();
    if request.method() == Method::PUT && path == "/latest/api/token" {
        if !request
            .headers()
            .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
        {
            return text(StatusCode::BAD_REQUEST, "missing the token's TTL".into());
        }
        return text(StatusCode::OK, TOKEN.into());
    }
    let token = request
        .headers()
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(TOKEN) {
        return text(StatusCode::UNAUTHORIZED, String::new());
    }
    match path {
        "/latest/meta-data/instance-id" => text(StatusCode::OK, instance_id.to_owned()),
        "/latest/meta-data/autoscaling/target-lifecycle-state" => text(
            StatusCode::OK,
            state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
        _ => text(StatusCode::NOT_FOUND, String::new()),
    }
}
