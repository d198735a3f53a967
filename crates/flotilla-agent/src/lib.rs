//! The federated member agent.
