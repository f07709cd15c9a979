//! Request logging: one span per request (with its request id) and one line when it ends,
//! with the status and the duration.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

/// One span per request (with its request id), and one log line when it ends.
pub struct RequestSpan;

struct RequestStart(Instant);

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        request
            .extensions_mut()
            .insert(RequestStart(Instant::now()));
        tracing_actix_web::root_span!(request)
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        DefaultRootSpanBuilder::on_request_end(span.clone(), outcome);
        let (status, elapsed) = match outcome {
            Ok(response) => (
                response.status(),
                response
                    .request()
                    .extensions()
                    .get::<RequestStart>()
                    .map(|s| s.0.elapsed()),
            ),
            Err(err) => (err.as_response_error().status_code(), None),
        };
        let duration_ms = elapsed.map(|e| e.as_secs_f64() * 1000.0);
        span.in_scope(|| {
            tracing::info!(
                http.status_code = status.as_u16(),
                duration_ms,
                "request finished"
            );
        });
    }
}
