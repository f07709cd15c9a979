//! The ANB Rising Stars REST API (web tier): the contract in `api-contract.md`, on
//! actix-web, over the shared backends.
//!
//! Architecture invariant: this is the only crate that knows HTTP. It never runs ffmpeg
//! (only ffprobe, through `backends::media`) and never touches a job after queueing it.

pub mod auth;
pub mod error;
pub mod limits;
pub mod multipart_limits;
pub mod openapi;
pub mod routes;
pub mod snapshot;
pub mod startup;
pub mod state;
mod telemetry;
pub mod upload;

pub use startup::{sweep_abandoned_videos, Application};
pub use state::AppState;
