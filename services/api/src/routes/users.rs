//! Signup and login.

use actix_web::http::header;
use actix_web::{post, web, HttpRequest, HttpResponse};
use backends::db::{self, InsertUserError, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{hash_password, verify_password, TokenKeys};
use crate::error::{ApiError, ErrorBody};
use crate::routes::{text_field, MAX_NAME_CHARS};
use crate::AppState;

const BAD_CREDENTIALS: &str = "Credenciales inválidas.";
const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_CHARS: usize = 128;
const MAX_EMAIL_CHARS: usize = 254;

/// Every field is required; they are optional here only so a missing one gets a clear 400.
/// Names, city and country: 1–100 characters with a visible one, no control characters
/// (surrounding spaces are trimmed). The password: 8–128 characters with a letter (a–z,
/// A–Z) and a digit; `password2` repeats it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignupRequest {
    #[schema(
        required = true,
        example = "Ana",
        max_length = 100,
        pattern = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
    )]
    first_name: Option<String>,
    #[schema(
        required = true,
        example = "Ruiz",
        max_length = 100,
        pattern = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
    )]
    last_name: Option<String>,
    /// Compared without regard to case; must not be registered already.
    #[schema(required = true, example = "ana@example.com", format = Email, max_length = 254)]
    email: Option<String>,
    #[schema(
        required = true,
        example = "Canasta2026",
        min_length = 8,
        max_length = 128,
        pattern = r"[A-Za-z][\s\S]*[0-9]|[0-9][\s\S]*[A-Za-z]"
    )]
    password1: Option<String>,
    /// Must equal `password1`.
    #[schema(
        required = true,
        example = "Canasta2026",
        min_length = 8,
        max_length = 128,
        pattern = r"[A-Za-z][\s\S]*[0-9]|[0-9][\s\S]*[A-Za-z]"
    )]
    password2: Option<String>,
    #[schema(
        required = true,
        example = "Bogotá",
        max_length = 100,
        pattern = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
    )]
    city: Option<String>,
    #[schema(
        required = true,
        example = "Colombia",
        max_length = 100,
        pattern = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
    )]
    country: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupResponse {
    #[schema(example = "Usuario creado exitosamente.")]
    message: &'static str,
    user_id: String,
    email: String,
    first_name: String,
    last_name: String,
    city: String,
    country: String,
}

/// A deliberately plain check: one `@`, something before it, a dotted domain after it.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.chars().count() <= MAX_EMAIL_CHARS
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

/// A letter (a–z, A–Z) and a digit, within the length bounds: the OpenAPI document's
/// pattern and lengths for `password1` (a test checks they agree).
fn is_strong_password(password: &str) -> bool {
    (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&password.chars().count())
        && password.chars().any(|c| c.is_ascii_alphabetic())
        && password.chars().any(|c| c.is_ascii_digit())
}

/// Creates an account.
#[utoipa::path(
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, body = SignupResponse),
        (status = 400, description = "Missing field, malformed email, weak or mismatched passwords, or email already registered", body = ErrorBody),
        (status = 429, description = "Too many signups and logins from this address; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable, or too many logins at once; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[post("/api/auth/signup")]
pub async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<SignupRequest>,
) -> Result<HttpResponse, ApiError> {
    state.auth_rate.check(state.client_address(&req))?;
    let body = body.into_inner();
    let first_name = text_field(body.first_name, "first_name", MAX_NAME_CHARS)?;
    let last_name = text_field(body.last_name, "last_name", MAX_NAME_CHARS)?;
    let email = text_field(body.email, "email", MAX_EMAIL_CHARS)?;
    // Passwords are not trimmed: spaces may be part of them.
    let password1 = body
        .password1
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("El campo password1 es obligatorio."))?;
    let password2 = body
        .password2
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("El campo password2 es obligatorio."))?;
    let city = text_field(body.city, "city", MAX_NAME_CHARS)?;
    let country = text_field(body.country, "country", MAX_NAME_CHARS)?;
    if !is_plausible_email(&email) {
        return Err(ApiError::bad_request("El email no es válido."));
    }
    if password1 != password2 {
        return Err(ApiError::bad_request("Las contraseñas no coinciden."));
    }
    if !is_strong_password(&password1) {
        return Err(ApiError::bad_request(format!(
            "La contraseña debe tener entre {MIN_PASSWORD_CHARS} y {MAX_PASSWORD_CHARS} caracteres e incluir letras (a-z) y números."
        )));
    }
    let user = User {
        id: Uuid::new_v4(),
        email,
        password_hash: hash_password(&state.hashing, password1).await?,
        first_name,
        last_name,
        city,
        country,
    };
    match db::insert_user(&state.pool, &user).await {
        Ok(()) => {}
        Err(InsertUserError::DuplicateEmail) => {
            return Err(ApiError::bad_request("El email ya está registrado."))
        }
        Err(InsertUserError::Database(e)) => return Err(e.into()),
    }
    tracing::info!(user.id = %user.id, "user signed up");
    Ok(HttpResponse::Created().json(SignupResponse {
        message: "Usuario creado exitosamente.",
        user_id: user.id.to_string(),
        email: user.email,
        first_name: user.first_name,
        last_name: user.last_name,
        city: user.city,
        country: user.country,
    }))
}

/// JSON login body; form clients (OAuth2 password flow) send `username` instead of `email`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(required = true, example = "ana@example.com", pattern = r"\S")]
    email: Option<String>,
    #[schema(required = true, example = "Canasta2026", min_length = 1)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    #[schema(example = 3600)]
    expires_in: u64,
}

/// Exchanges email and password for an access token. Takes JSON `{"email", "password"}` or
/// an `application/x-www-form-urlencoded` body with `username` and `password`.
#[utoipa::path(
    tag = "auth",
    request_body(content = LoginRequest, content_type = "application/json"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, description = "Body missing or malformed", body = ErrorBody),
        (status = 401, description = "Wrong email or password (one message for both)", body = ErrorBody),
        (status = 429, description = "Too many signups and logins from this address; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable, or too many logins at once; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[post("/api/auth/login")]
pub async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    keys: web::Data<TokenKeys>,
) -> Result<HttpResponse, ApiError> {
    state.auth_rate.check(state.client_address(&req))?;
    let body = read_small_body(payload).await?;
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (email, password) = if is_form {
        let form: LoginForm = serde_urlencoded::from_bytes(&body)
            .map_err(|_| ApiError::bad_request("Formulario de inicio de sesión inválido."))?;
        (form.username.or(form.email), form.password)
    } else {
        let json: LoginRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Cuerpo JSON inválido: {e}")))?;
        (json.email, json.password)
    };
    let (Some(email), Some(password)) = (email.filter(|e| !e.trim().is_empty()), password) else {
        return Err(ApiError::bad_request("Se requieren email y contraseña."));
    };
    // PostgreSQL text cannot hold NUL, so no account has such an email.
    let email = email.trim();
    let user = if email.contains('\0') {
        None
    } else {
        db::find_user_by_email(&state.pool, email).await?
    };
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    if !verify_password(&state.hashing, password, stored_hash).await? {
        return Err(ApiError::Unauthorized(BAD_CREDENTIALS));
    }
    let user = user.ok_or(ApiError::Unauthorized(BAD_CREDENTIALS))?;
    // A bearer token must never sit in a shared or browser cache.
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse {
            access_token: keys.issue(user.id)?,
            token_type: "Bearer",
            expires_in: keys.ttl().as_secs(),
        }))
}

/// Largest login body read; credentials are a few hundred bytes.
const MAX_LOGIN_BODY: usize = 16 * 1024;

/// Reads a small request body, refusing a larger one with a 400 in the usual shape.
async fn read_small_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("Cuerpo de la petición ilegible."))?;
        if body.len() + chunk.len() > MAX_LOGIN_BODY {
            return Err(ApiError::bad_request(
                "Cuerpo de la petición demasiado grande.",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::*;

    /// The OpenAPI pattern of a password (a letter and a digit, in either order).
    const PASSWORD_PATTERN: &str = r"[A-Za-z][\s\S]*[0-9]|[0-9][\s\S]*[A-Za-z]";

    #[test]
    fn email_check_accepts_ordinary_addresses_only() {
        for good in ["a@b.co", "ana.ruiz+anb@example.com"] {
            assert!(is_plausible_email(good), "{good}");
        }
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.com",
            "ana@localhost",
            "a b@x.com",
            "a@@x.com",
            "a@x.com.",
        ] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }

    #[test]
    fn passwords_need_length_letters_and_digits() {
        assert!(is_strong_password("Canasta2026"));
        assert!(!is_strong_password("short1"));
        assert!(!is_strong_password("onlyletters"));
        assert!(!is_strong_password("1234567890"));
        assert!(!is_strong_password("ñandúñandú"));
        assert!(!is_strong_password(&format!("a1{}", "x".repeat(127))));
    }

    #[test]
    fn the_documented_patterns_are_the_enforced_rules() {
        let doc = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        let fields = &doc["components"]["schemas"]["SignupRequest"]["properties"];
        for field in ["first_name", "last_name", "city", "country"] {
            assert_eq!(
                fields[field]["pattern"],
                crate::routes::TEXT_PATTERN,
                "{field}"
            );
            assert_eq!(fields[field]["maxLength"], MAX_NAME_CHARS, "{field}");
        }
        for field in ["password1", "password2"] {
            assert_eq!(fields[field]["pattern"], PASSWORD_PATTERN, "{field}");
            assert_eq!(fields[field]["minLength"], MIN_PASSWORD_CHARS, "{field}");
            assert_eq!(fields[field]["maxLength"], MAX_PASSWORD_CHARS, "{field}");
        }
        assert_eq!(fields["email"]["maxLength"], MAX_EMAIL_CHARS);
        assert_eq!(fields["email"]["format"], "email");
    }
}
