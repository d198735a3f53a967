//! The member side of Flotilla: what runs in each member cluster.
//!
//! - [`backend`]: the one trait member backends implement (Kubernetes, simulated).
//! - [`controller`]: the InstanceSet controller's loop: observe, prepare (the pure
//!   planner of `flotilla-instanceset`), commit each action idempotently, write status
//!   only when it changed, and probe roles with versioned results.
//! - [`commit`]: the commit phase's schedule: actions concurrently in dependency
//!   order, within a bound on writes in flight and a rate limit (QPS, burst).
//! - [`latency`]: a fixed per-request latency for the members without an API server.
//! - [`metrics`]: what the controller counts, for the agent's `/metrics`.
//! - [`nodes`]: nodes from node groups, first-fit placement and free capacity, shared
//!   by the members that schedule instances themselves (simulated, process).
//! - [`redis`]: Redis `ROLE` probes and switchovers over RESP.
//! - [`sim`]: the simulated member (KWOK-like, in memory) that `flotilla dev`, the
//!   end-to-end tests and the scale benchmarks run on.

pub mod backend;
pub mod commit;
pub mod controller;
mod engine;
mod error;
pub mod latency;
pub mod metrics;
pub mod nodes;
pub mod redis;
pub mod sim;
mod sim_redis;

pub use backend::{Applied, Backend};
pub use commit::{CommitOptions, CommitStats};
pub use controller::{Controller, Pass};
pub use error::{Error, Result};
pub use metrics::MemberMetrics;
