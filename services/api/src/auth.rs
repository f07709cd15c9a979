//! Passwords (argon2id) and access tokens (HS256 JWT). Identity comes only from the token.

use std::future::{ready, Ready};
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, NOT_AUTHENTICATED};
use crate::limits::HashingSlots;

pub const INVALID_TOKEN: &str = "Token inválido o expirado.";

/// Signs and checks access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iat: u64,
    exp: u64,
}

impl TokenKeys {
    pub fn new(secret: &secrecy::SecretString, ttl: Duration) -> Self {
        let secret = secret.expose_secret().as_bytes();
        // Only HS256: a token claiming `alg: none` or any other algorithm is rejected.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: Uuid) -> Result<String, ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user_id,
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(e.into()))
    }

    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims.sub)
            .map_err(|_| ApiError::Unauthorized(INVALID_TOKEN))
    }
}

/// The caller, proven by a valid bearer token. Rejects the request with 401 otherwise.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

/// Who is calling, where a token is optional. Never rejects the request itself: a route
/// that serves public content ignores a stale token, and decides otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    User(Uuid),
    /// A token was sent but is expired, tampered with or malformed.
    InvalidToken,
}

fn bearer_user(req: &HttpRequest) -> Result<Option<Uuid>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized(INVALID_TOKEN))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(ApiError::Unauthorized(INVALID_TOKEN)),
    };
    let keys = req
        .app_data::<web::Data<TokenKeys>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("token keys are not registered")))?;
    keys.verify(token).map(Some)
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(bearer_user(req).and_then(|user| {
            user.map(AuthUser)
                .ok_or(ApiError::Unauthorized(NOT_AUTHENTICATED))
        }))
    }
}

impl FromRequest for Caller {
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(match bearer_user(req) {
            Ok(Some(user)) => Caller::User(user),
            Ok(None) => Caller::Anonymous,
            Err(_) => Caller::InvalidToken,
        }))
    }
}

/// Hashes a password with argon2id and a random salt, in one of the hashing slots.
pub async fn hash_password(slots: &HashingSlots, password: String) -> Result<String, ApiError> {
    slots
        .run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hash password: {e}")))
}

/// Checks `password` against `stored_hash`; with no stored hash (unknown email) it checks a
/// dummy hash anyway, so both failures take the same time.
pub async fn verify_password(
    slots: &HashingSlots,
    password: String,
    stored_hash: Option<String>,
) -> Result<bool, ApiError> {
    slots
        .run(move || {
            let known = stored_hash.is_some();
            let hash = stored_hash.unwrap_or_else(|| dummy_hash().to_owned());
            let matches = PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false);
            known && matches
        })
        .await
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not a real password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&SecretString::from(secret), Duration::from_secs(3600))
    }

    #[test]
    fn issued_tokens_verify_and_tampered_ones_do_not() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let user = Uuid::new_v4();
        let token = keys.issue(user).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), user);

        let other = self::keys("another-secret-another-secret-123");
        assert!(
            other.verify(&token).is_err(),
            "token from another key accepted"
        );

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(
            keys.verify(&parts.join(".")).is_err(),
            "tampered payload accepted"
        );
    }

    #[test]
    fn unsigned_and_expired_tokens_are_rejected() {
        use base64_url as b64;
        let keys = keys("0123456789abcdef0123456789abcdef");
        let now = jsonwebtoken::get_current_timestamp();
        let payload = format!(
            r#"{{"sub":"{}","iat":{now},"exp":{}}}"#,
            Uuid::new_v4(),
            now + 600
        );
        let unsigned = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&payload)
        );
        assert!(keys.verify(&unsigned).is_err());

        let claims = Claims {
            sub: Uuid::new_v4(),
            iat: now - 7200,
            exp: now - 3600,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(keys.verify(&expired).is_err());
    }

    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}
