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
        // tracing_actix_web's `root_span!` logs the target with its query, where a form
        // submitted before the script attached (or without it) would put a password.
        let request_id = request
            .extensions()
            .get::<tracing_actix_web::RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %request.path(),
            http.client_ip = %request.connection_info().realip_remote_addr().unwrap_or(""),
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{test, web, App, HttpResponse};
    use tracing_actix_web::TracingLogger;

    use super::RequestSpan;

    /// Collects what the log writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A form sent before the page's script attached puts its fields in the query: the
    /// request's log lines name the path and never the query.
    #[actix_web::test]
    async fn the_request_log_names_the_path_and_never_the_query() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = test::init_service(
            App::new()
                .wrap(TracingLogger::<RequestSpan>::new())
                .route("/ingresar", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let request = test::TestRequest::get()
            .uri("/ingresar?email=ana%40example.com&password=Canasta2026")
            .to_request();
        assert!(test::call_service(&app, request)
            .await
            .status()
            .is_success());
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("request finished") && log.contains("/ingresar"),
            "{log}"
        );
        assert!(
            !log.contains("Canasta2026") && !log.contains("password"),
            "{log}"
        );
    }
}
