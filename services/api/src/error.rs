//! API errors: each maps to a status code and a `{"detail": "..."}` body (FastAPI style,
//! which the clients parse). Server-side failures are logged here, once.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "Video no encontrado.")]
    pub detail: String,
}

pub const INVALID_QUERY: &str = "Parámetro inválido en la consulta.";
pub const VIDEO_NOT_FOUND: &str = "Video no encontrado.";
pub const NOT_AUTHENTICATED: &str = "No autenticado.";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// A dependency (database, storage, queue, ffprobe) is down: the client may retry.
    #[error("{detail}")]
    Unavailable {
        detail: &'static str,
        #[source]
        source: anyhow::Error,
    },
    /// Too much work in flight here (password hashing): the client may retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// The client's allowance is spent; it may retry after `retry_after` seconds.
    #[error("{detail}")]
    TooManyRequests {
        detail: &'static str,
        retry_after: u64,
    },
    #[error("Error interno del servidor.")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(detail.into())
    }

    pub fn unavailable(detail: &'static str, source: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable {
            detail,
            source: source.into(),
        }
    }
}

/// A database failure is the database being unavailable until proven otherwise: the pool
/// times out, the server restarts, the network drops, the password was just rotated.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        backends::password_rotation::note(&err);
        if backends::password_rotation::is_refused_password(&err) {
            return Self::unavailable("Base de datos no disponible.", err);
        }
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::unavailable("Base de datos no disponible.", err),
            other => Self::Internal(other.into()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable { .. } | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable { source, .. } => {
                tracing::warn!(error = format!("{source:#}"), "dependency unavailable");
            }
            Self::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Unavailable { .. } => {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            Self::Busy(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::TooManyRequests { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            detail: self.to_string(),
        })
    }
}

/// Turns actix's own rejections (bad JSON, bad query, unknown route) into the same shape.
pub fn detail_response(status: StatusCode, detail: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        detail: detail.to_owned(),
    })
}
