//! Worker integration tests: real ffmpeg and ffprobe, a PostgreSQL database per test, the
//! local and the S3/SQS (moto) backends, and the worker binary under SIGKILL and SIGTERM.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod delivery;
mod end_to_end;
mod helpers;
mod inputs;
mod lifecycle;
mod outages;
mod restore;
mod signals;
