//! `provision`'s integration tests: against moto, through its binary, and the web tier's
//! nginx configuration run for real.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod alerts;
mod deploy;
mod helpers;
mod lock;
mod metrics;
mod operate;
mod rollout;
mod safety;
mod stack;
mod web_tier;
