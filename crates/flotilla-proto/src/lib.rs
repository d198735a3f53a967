//! Generated gRPC code for Flotilla (from `proto/flotilla/v1/*.proto`), in one place so
//! the server, the agent and the CLI share one definition.
//!
//! - [`v1::federation_server`] / [`v1::federation_client`]: the user API.
//! - [`v1::agent_service_server`] / [`v1::agent_service_client`]: the agent protocol.

/// Version 1 of the protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// The metadata key carrying `Bearer <token>` on every call.
pub const AUTHORIZATION: &str = "authorization";
