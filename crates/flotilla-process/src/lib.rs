//! The process member: a member backend whose instances are real processes on this
//! host (a bare-metal pool), each on its own loopback address, as the simulated member
//! is one whose instances are simulated.
//!
//! ```text
//!   Controller<ProcessBackend>::pass ─▶ observe / apply / probe_role / redis
//!        │
//!   ProcessBackend ── nodes (flotilla_member::nodes: placement, capacity)
//!        ├─ address   127.<block>.x.y per instance, kept across restarts
//!        ├─ launch    redis-server + rendered redis.conf | the template's command
//!        ├─ os        /proc (alive? same start time? zombie?), signals to the group
//!        └─ state     <dataDir>/volumes, instances (state files), logs
//!                           ▲ read back by the next agent: running instances adopted
//! ```
//!
//! - [`ProcessConfig`] ([`config`]): the `--process-config` file.
//! - [`ProcessBackend`] ([`backend`]): implements `flotilla_member::Backend`.
//! - [`launch`]: what an instance runs (program, arguments, environment, files).
//! - [`state`]: the files under the data directory; [`Record`] is one instance's.
//! - [`address`]: loopback address blocks and picking a free address.
//!
//! The data plane does not depend on the control plane: instances run in their own
//! process groups, nothing stops them when the agent stops or dies, and a new agent
//! over the same data directory adopts them.

pub mod address;
pub mod backend;
pub mod config;
mod error;
pub mod launch;
pub mod os;
mod reaper;
pub mod state;

pub use backend::ProcessBackend;
pub use config::ProcessConfig;
pub use error::{Error, Result};
pub use reaper::Reaper;
pub use state::{Layout, Record};
