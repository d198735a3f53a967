//! Flotilla's resource types: `FederatedInstanceSet`, `Cluster`, `InstanceSet`.
//!
//! This crate is the single source of truth for what Flotilla stores, sends over the
//! wire and generates CRDs from. It is pure: serde, schemars and the k8s-openapi types,
//! no I/O, no async runtime. Around the types it holds everything that decides about a
//! document on its own: [`decode`] (YAML/JSON with field paths), [`validate`] (every
//! problem at once), [`quantity`] (exact resource arithmetic), [`ordinals`],
//! [`selector`] (labels, taints) and [`resources`] (what one instance requests).
//!
//! ```text
//!   text ──decode──▶ Object<Spec, Status> ──validate──▶ Valid<Object> ──▶ scheduler, store
//! ```

pub mod cluster;
pub mod decode;
pub mod error;
pub mod instanceset;
pub mod object;
pub mod ordinals;
pub mod quantity;
pub mod redis;
pub mod report;
pub mod resources;
pub mod selector;
pub mod set;
pub mod status;
pub mod validate;

pub use cluster::{CapacityModel, Cluster, ClusterSpec, ClusterStatus, NodeGroup};
pub use error::{FieldError, Invalid};
pub use instanceset::{InstanceSet, InstanceSetSpec};
pub use object::{API_VERSION, Kind, Object};
pub use ordinals::{OrdinalRange, OrdinalSpace, Ordinals};
pub use set::{
    ClusterAffinity, ClusterBounds, DynamicWeight, FailoverPolicy, FederatedInstanceSet,
    FederatedInstanceSetSpec, Placement, Role, SpreadConstraint, Weights,
};
pub use status::{Condition, FederatedInstanceSetStatus, InstanceSetStatus, InstanceStatus};
pub use validate::Valid;
