//! The Redis engine's decisions (`spec.redis`), as pure functions.
//!
//! ```text
//!   launch   slice + instance ─▶ Start (primary | replica of) ─▶ redis.conf lines
//!   info     INFO replies ─▶ RedisInstanceStatus (role, master, link, offset, keys)
//!   engine   slice + what each local instance says ─▶ Redis commands (REPLICAOF,
//!            FAILOVER TO, CONFIG SET) for the member to send
//!   primary  every member's report ─▶ the federation's primary (follows Sentinel and
//!            switchovers; moves only to keep data safe or for a planned removal)
//! ```
//!
//! No I/O here: the member controller sends the commands (over whatever the backend
//! dials: TCP, a Kubernetes port-forward) and the federation server writes the primary
//! into every slice.

pub mod engine;
pub mod info;
pub mod launch;
pub mod primary;
pub mod sentinel;

pub use launch::{Bind, Start, config_file, server_args, server_config, split_addr, startup};
