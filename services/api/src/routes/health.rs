//! Health: `/api/health` checks the database (for monitoring and operators), and
//! `/api/health/live` only that the process serves requests (for the load balancer, so a
//! database failover does not get every web instance replaced).

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// Longest the health check waits on the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Health check: 200 when the database answers, 503 otherwise.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Database unreachable", body = ErrorBody),
    )
)]
#[get("/api/health")]
pub async fn api_health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    check(&state).await
}

/// Liveness: 200 whenever the process serves requests; touches no dependency.
#[utoipa::path(
    tag = "health",
    responses((status = 200, body = Health))
)]
#[get("/api/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Same as `/api/health`, at the root path some load balancers expect.
#[get("/health")]
pub async fn root_health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    check(&state).await
}

async fn check(state: &AppState) -> Result<HttpResponse, ApiError> {
    let unavailable = "Base de datos no disponible.";
    match tokio::time::timeout(DB_CHECK_TIMEOUT, backends::db::ping(&state.health_pool)).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(Health { status: "ok" })),
        Ok(Err(e)) => {
            backends::password_rotation::note(&e);
            Err(ApiError::unavailable(unavailable, e))
        }
        Err(elapsed) => Err(ApiError::unavailable(unavailable, elapsed)),
    }
}
