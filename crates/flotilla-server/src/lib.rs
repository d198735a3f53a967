//! The federation server.
