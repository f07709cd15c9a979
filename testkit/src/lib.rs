//! What the workspace's tests share, kept out of the shipped crates (a dev-dependency
//! only): the pinned test tools and how they start ([`tools`], also used by xtask, which
//! installs them), the one description of a generated clip ([`clip`]), and, with the default `services` feature, the harness for the
//! services' tests: a fresh PostgreSQL database per test, one moto server per test
//! process (with a stand-in in front for the Auto Scaling calls moto lacks), object storage and queues on either, and generated test videos.

pub mod clip;
pub mod tools;

#[cfg(feature = "autoscaling")]
mod autoscaling;
#[cfg(feature = "services")]
mod metadata;
#[cfg(feature = "services")]
mod proxy;
#[cfg(feature = "services")]
mod services;
#[cfg(feature = "services")]
pub use autoscaling::autoscaling_stand_in;
#[cfg(feature = "autoscaling")]
pub use autoscaling::{AutoScalingStandIn, Call, RefreshOrder, RefreshOutcome};
#[cfg(feature = "services")]
pub use metadata::MetadataStandIn;
#[cfg(feature = "services")]
pub use proxy::SilentRelay;
#[cfg(feature = "services")]
pub use services::*;
