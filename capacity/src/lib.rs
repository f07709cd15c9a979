//! The worker tier's capacity model: when uploads arrive ([`arrivals`]), how a scaling
//! policy changes the number of workers ([`policy`]), a discrete-event simulation of the
//! tier ([`sim`]), the figures of a run ([`summary`]), what it costs ([`cost`]), and the
//! cheapest policy settings that meet an SLO ([`recommend`]).
//!
//! Architecture invariant: pure. It starts no process, opens no file or socket, calls no
//! AWS and reads no clock (time is the simulation's own); its only dependencies are serde
//! and anyhow. `cargo xtask capacity simulate` reads the configuration and the measured
//! service times and calls it; anything that drives real instances from the same policies
//! calls [`Policy::decide`].

pub mod arrivals;
pub mod cost;
pub mod policy;
pub mod recommend;
mod rng;
pub mod sim;
pub mod stats;
pub mod summary;

pub use arrivals::Arrivals;
pub use cost::{
    cost, price, stack_cost, Cost, CostLine, InstancePrice, StackShape, HOURS_PER_MONTH, PRICES,
    PRICE_SOURCE, STACK_PRICES_DATE,
};
pub use policy::{Decision, Policy, PolicyState, Reading};
pub use recommend::{recommend, Candidate, Recommendation};
pub use rng::Rng;
pub use sim::{simulate, Outcome, ServiceTime, Setup};
pub use summary::{latency_over_time, summarize, Summary};
