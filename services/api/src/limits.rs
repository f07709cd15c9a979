//! What keeps one client, or a flood of them, from taking the API down: per-address rate
//! limits and a cap on each user's uploads in flight (password hashing is bounded in
//! [`crate::auth::HashingSlots`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::error::ApiError;

/// Requests per minute per client address, for one kind of request.
#[derive(Debug)]
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    detail: &'static str,
}

/// Past this many addresses remembered, the ones whose allowance is full again are dropped.
const REMEMBERED_ADDRESSES: usize = 10_000;

impl RateLimit {
    /// `per_minute` 0 means no limit.
    pub fn per_minute(per_minute: u32, detail: &'static str) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            detail,
        }
    }

    /// Counts one request from `client`; 429 with Retry-After once its allowance is spent.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > REMEMBERED_ADDRESSES {
            limiter.retain_recent();
        }
        limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                detail: self.detail,
                retry_after: wait.as_secs() + 1,
            }
        })
    }
}

/// The address a request comes from: the peer, or, when the peer is a trusted proxy, the
/// last address of its X-Forwarded-For (the one that proxy added).
pub fn client_address(req: &HttpRequest, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// Each user's uploads in flight, in this API instance.
#[derive(Debug)]
pub struct UploadsInFlight {
    max_per_user: usize,
    per_user: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One upload in flight; dropping it (whatever the outcome) frees the place.
#[derive(Debug)]
pub struct UploadPlace {
    user: Uuid,
    per_user: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl UploadsInFlight {
    pub fn new(max_per_user: usize) -> Self {
        Self {
            max_per_user,
            per_user: Arc::default(),
        }
    }

    /// A place for one more upload of `user`, or 429 when it has the most already.
    pub fn enter(&self, user: Uuid) -> Result<UploadPlace, ApiError> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry(user).or_insert(0);
        if *count >= self.max_per_user {
            return Err(ApiError::TooManyRequests {
                detail: "Ya tienes el máximo de subidas en curso; espera a que terminen.",
                retry_after: 5,
            });
        }
        *count += 1;
        Ok(UploadPlace {
            user,
            per_user: self.per_user.clone(),
        })
    }
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_users_uploads_in_flight_are_capped_and_freed_when_done() {
        let uploads = UploadsInFlight::new(2);
        let (ana, luis) = (Uuid::new_v4(), Uuid::new_v4());
        let first = uploads.enter(ana).unwrap();
        let _second = uploads.enter(ana).unwrap();
        assert!(matches!(
            uploads.enter(ana),
            Err(ApiError::TooManyRequests { .. })
        ));
        let _other_user = uploads.enter(luis).unwrap();
        drop(first);
        let _third = uploads.enter(ana).unwrap();
    }

    #[test]
    fn a_rate_limit_counts_each_address_alone() {
        let limit = RateLimit::per_minute(2, "demasiadas");
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(limit.check(a).is_ok() && limit.check(a).is_ok());
        let Err(ApiError::TooManyRequests { retry_after, .. }) = limit.check(a) else {
            panic!("third request in a minute allowed");
        };
        assert!((1..=31).contains(&retry_after), "{retry_after}");
        assert!(limit.check(b).is_ok());
        let unlimited = RateLimit::per_minute(0, "nunca");
        assert!((0..1000).all(|_| unlimited.check(a).is_ok()));
    }

    #[test]
    fn forwarded_addresses_count_only_from_a_trusted_proxy() {
        let trusted: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let via_proxy = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "10.0.0.9, 203.0.113.7"))
            .to_http_request();
        assert_eq!(
            client_address(&via_proxy, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let direct = TestRequest::default()
            .peer_addr("198.51.100.4:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "203.0.113.7"))
            .to_http_request();
        assert_eq!(
            client_address(&direct, &trusted),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
    }
}
