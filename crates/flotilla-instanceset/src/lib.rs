//! The local InstanceSet controller's decisions, as pure functions.
//!
//! A member's controller reconciles in two phases: [`prepare`] turns the desired
//! `InstanceSet` and what the backend observed into a [`Plan`] of idempotent
//! [`Action`]s and a status; the commit phase (in the agent, async) applies them. This
//! crate is the first phase only: no I/O, no clock, no async, so every rollout rule is
//! a unit test.

pub mod observed;
mod prepare;
pub mod revision;

pub use observed::{Instance, Observed, Phase, ProbeResult, SwitchoverOutcome, Volume};
pub use prepare::{Action, Plan, Why, instance_name, prepare, volume_name};
pub use revision::Revision;
