//! One module per family of AWS resources, each with the same parts: what the family's
//! resources should be (`desired…`), what they are (`observe`), and `create`, `update`
//! and `delete`. The engine in `aws` dispatches to them by `Kind`.
//!
//! Every family is here; the network's and the security groups' desired side is still
//! built in `desired.rs`.

pub(crate) mod bucket;
pub(crate) mod compute;
pub(crate) mod database;
pub(crate) mod load_balancing;
pub(crate) mod monitoring;
pub(crate) mod network;
pub(crate) mod queue;
pub(crate) mod secret;
pub(crate) mod security_group;
