//! Flotilla's scheduler: where each instance of a federated set runs.
//!
//! Pure and deterministic: no I/O, no clock, no randomness, no async. The same set,
//! clusters and previous placement always give the same [`Plan`].
//!
//! - [`capacity`]: a cluster's room for one template, from its bucketed capacity model.
//! - [`divide`]: weighted division within per-cluster bounds, exact, largest remainder.
//! - [`plan()`]: eligibility, stickiness, policy, selection, ordinals, reasons.
//! - [`CapacityCache`]: capacity digests (and the room estimated on them) kept between
//!   inventories, rebuilt only for clusters whose capacity model changed.

pub mod capacity;
mod digest;
pub mod divide;
mod plan;

pub use capacity::UNLIMITED;
pub use digest::CapacityCache;
pub use plan::{ClusterPlan, Inventory, Plan, plan};
