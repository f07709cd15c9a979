//! One module per family of AWS resources, each with the same parts: what the family's
//! resources should be (`desired…`), what they are (`observe`), and `create`, `update`
//! and `delete`. The engine in `aws` dispatches to them by `Kind`.
//!
//! Moved in so far: bucket, compute, database, load_balancing, monitoring, queue, secret.
//! The network and security-group families still live in `aws` and `nat`.

pub(crate) mod bucket;
pub(crate) mod compute;
pub(crate) mod database;
pub(crate) mod load_balancing;
pub(crate) mod monitoring;
pub(crate) mod queue;
pub(crate) mod secret;
