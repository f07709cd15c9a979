//! Integration tests of the shared backends against real services: PostgreSQL and moto.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod migrations;
mod password_rotation;
mod pool;
mod queue_contract;
mod storage_contract;
