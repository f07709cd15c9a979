//! Passwords (argon2id) and access tokens (HS256 JWT). Identity comes only from the token.

use std::future::{ready, Ready};
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::{
    rand_core::OsRng, Output, ParamsString, PasswordHash, Salt, SaltString,
};
use argon2::{Argon2, Block, Params, Version};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, NOT_AUTHENTICATED};

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

const HASHING_BUSY: &str =
    "El servidor está atendiendo demasiados inicios de sesión; intente de nuevo en unos segundos.";

/// Slots for argon2 work, each with its own working memory. A hash needs 19 MiB and most of
/// a core for tens of milliseconds. Unbounded, on the blocking pool (up to 512 threads), a
/// few hundred parallel logins took gigabytes; and even bounded, memory allocated afresh
/// for each hash stays with the allocator's per-thread arenas (measured: 850 MiB after 40
/// logins). So the memory is allocated once per slot and reused: the API's hashing memory
/// is the slot count × 19 MiB, whatever the load. Past a short wait for a slot the caller
/// gets 503.
#[derive(Debug)]
pub struct HashingSlots {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    memories: std::sync::Arc<std::sync::Mutex<Vec<Vec<Block>>>>,
    wait: Duration,
}

impl HashingSlots {
    /// `concurrency` 0 means one slot per CPU core.
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        Self {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency)),
            // Filled lazily: a slot's memory is allocated the first time it is used.
            memories: std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); concurrency])),
            wait,
        }
    }

    /// Runs `work` with a slot's memory on the blocking pool, once a slot is free.
    async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Busy(HASHING_BUSY))?
            .map_err(|e| ApiError::Internal(e.into()))?;
        let memories = self.memories.clone();
        web::block(move || {
            let _permit = permit;
            // There are as many memories as permits, so one is always free here.
            let mut memory = memories
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            let result = work(&mut memory);
            memories
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(memory);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))
    }
}

/// The argon2 output of `password` and `salt` with `argon`'s parameters, computed in
/// `memory` (sized to them the first time).
fn argon2_output(
    argon: &Argon2,
    password: &[u8],
    salt: Salt,
    memory: &mut Vec<Block>,
    output_len: usize,
) -> argon2::password_hash::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    memory.resize(argon.params().block_count(), Block::default());
    Output::init_with(output_len, |out| {
        Ok(argon.hash_password_into_with_memory(password, salt, out, &mut memory[..])?)
    })
}

/// Hashes a password with argon2id (the crate's default parameters: m = 19 MiB, t = 2,
/// p = 1) and a random salt, in one of the hashing slots; returns the PHC string.
pub async fn hash_password(slots: &HashingSlots, password: String) -> Result<String, ApiError> {
    slots
        .run(move |memory| {
            let argon = Argon2::default();
            let salt = SaltString::generate(&mut OsRng);
            let output = argon2_output(
                &argon,
                password.as_bytes(),
                salt.as_salt(),
                memory,
                Params::DEFAULT_OUTPUT_LEN,
            )?;
            Ok::<_, argon2::password_hash::Error>(
                PasswordHash {
                    algorithm: argon2::Algorithm::Argon2id.ident(),
                    version: Some(Version::V0x13.into()),
                    params: ParamsString::try_from(argon.params())?,
                    salt: Some(salt.as_salt()),
                    hash: Some(output),
                }
                .to_string(),
            )
        })
        .await?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hash password: {e}")))
}

/// Whether `password` matches the PHC string `hash` (argon2, any parameters).
fn matches(password: &[u8], hash: &str, memory: &mut Vec<Block>) -> bool {
    let mut check = || -> argon2::password_hash::Result<bool> {
        let parsed = PasswordHash::new(hash)?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let argon = Argon2::new(algorithm, version, Params::try_from(&parsed)?);
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Ok(false);
        };
        let output = argon2_output(&argon, password, salt, memory, expected.len())?;
        Ok(output == expected) // `Output` compares in constant time
    };
    check().unwrap_or(false)
}

/// Checks `password` against `stored_hash`; with no stored hash (unknown email) it checks a
/// dummy hash anyway, so both failures take the same time.
pub async fn verify_password(
    slots: &HashingSlots,
    password: String,
    stored_hash: Option<String>,
) -> Result<bool, ApiError> {
    slots
        .run(move |memory| {
            let known = stored_hash.is_some();
            let hash = stored_hash.unwrap_or_else(|| dummy_hash().to_owned());
            let matches = matches(password.as_bytes(), &hash, memory);
            known && matches
        })
        .await
}

/// A hash of no one's password, made once with the same parameters as real ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        use argon2::password_hash::PasswordHasher;
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
    fn passwords_hashed_with_reused_memory_verify_like_the_crates_own_hashes() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let slots = HashingSlots::new(1, Duration::from_secs(5));
        runtime.block_on(async {
            let ours = hash_password(&slots, "Canasta2026".into()).await.unwrap();
            assert!(
                ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
                "{ours}"
            );
            // The crate's own verifier accepts our hash, and ours accepts the crate's.
            let parsed = PasswordHash::new(&ours).unwrap();
            assert!(Argon2::default()
                .verify_password(b"Canasta2026", &parsed)
                .is_ok());
            let salt = SaltString::generate(&mut OsRng);
            let theirs = Argon2::default()
                .hash_password(b"Canasta2026", &salt)
                .unwrap()
                .to_string();
            for hash in [ours, theirs] {
                assert!(
                    verify_password(&slots, "Canasta2026".into(), Some(hash.clone()))
                        .await
                        .unwrap()
                );
                assert!(!verify_password(&slots, "canasta2026".into(), Some(hash))
                    .await
                    .unwrap());
            }
            assert!(!verify_password(&slots, "x".into(), None).await.unwrap());
            assert!(!verify_password(&slots, "x".into(), Some("garbage".into()))
                .await
                .unwrap());
        });
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
