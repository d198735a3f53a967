//! The federated member agent: one per member cluster, it dials the federation server,
//! holds the slices (InstanceSets) the server gives its cluster, and reports their
//! status and the member's capacity back.
//!
//! ```text
//!                  ┌──────────────── session (one gRPC stream, resumable) ───────────────┐
//!   server ──▶ Welcome, Snapshot{revision, slices} | Change{revision, put|delete} ──▶ run()
//!          ◀── Hello{cluster, resume_revision} · Heartbeat{capacity} · Report{status} ◀──┘
//!                                                          │ replace / put / delete
//!                                                          ▼
//!        Member: LocalMember (Controller, real time) over Sim | processes · KubeMember (CRs)
//!                        └── statuses (watch) ──▶ Reports, capacity ──▶ Heartbeats
//! ```
//!
//! - [`run`] ([`session`]): the connection loop. It remembers the revision of the last
//!   Snapshot or Change it applied and resumes from it after a broken stream, with
//!   exponential backoff and jitter. Heartbeats go out every interval the server asks
//!   for (from their own task, ahead of any waiting report); a Report goes out whenever
//!   a slice's status changed, and every status again after each reconnect, through a
//!   queue that holds at most one report per slice (`outbox`).
//! - [`Member`] ([`member`]): what a member does with its slices. The agent only tells
//!   it what to hold; the member converges on that in the background (level-triggered),
//!   so applying a Snapshot or Change never waits on the member's cluster.
//! - [`LocalMember`] ([`local`]): a member controller in real time over a backend that
//!   schedules its instances itself: [`SimMember`] ([`sim`]), the simulated member, for
//!   `flotilla dev`, the end-to-end tests and the server's benchmarks (many agents in
//!   one process); [`ProcessMember`] ([`process`]), instances as local processes (a
//!   bare-metal pool), each on its own loopback address.
//! - [`KubeMember`] ([`kube`]): a Kubernetes member: slices become InstanceSet custom
//!   resources, reconciled by the local controller of `flotilla-kube`. Every Kubernetes
//!   request goes through `flotilla_kube::FederatedSets`; this crate does not depend on
//!   kube.

pub mod error;
pub mod http;
pub mod kube;
pub mod local;
pub mod member;
pub mod metrics;
mod outbox;
pub mod process;
pub mod session;
pub mod sim;

pub use error::{Error, Result};
pub use kube::{KubeMember, KubeMemberOptions};
pub use local::{LocalBackend, LocalMember, LocalMemberOptions};
pub use member::{Held, Member, Statuses, slice_key};
pub use metrics::SessionMetrics;
pub use process::ProcessMember;
pub use session::{Options, run};
pub use sim::{SimMember, SimMemberOptions};

/// This agent's version, sent in every Hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
