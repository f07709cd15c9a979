//! API integration tests: the real server on port 0, a fresh PostgreSQL database per test,
//! real ffprobe, and moto for the S3/SQS path.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod auth;
mod browser;
mod docs_and_health;
mod faults;
mod fuzz;
mod helpers;
mod hostile;
mod pages;
mod public;
mod s3_sqs;
mod shutdown;
mod upload;
mod videos;
