//! What a member's controller counts, for the agent's `/metrics` (Prometheus): passes
//! by result, actions by kind and outcome, role-probe latency, and the commit phase's
//! writes (sent, in flight).
//!
//! A [`MemberMetrics`] is shared (`Arc`) between the controller that counts and the
//! registry that serves it; a controller made without one counts into its own.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use flotilla_instanceset::Action;

/// Label pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A member controller's metrics.
#[derive(Debug)]
pub struct MemberMetrics {
    /// Passes over one set, by result (`converged`, `converging`, `failed`).
    pub passes: Family<Labels, Counter>,
    /// Planned actions, by kind and outcome (`wrote`, `unchanged`, `failed`,
    /// `skipped`).
    pub actions: Family<Labels, Counter>,
    /// How long one role probe took (answered or not).
    pub probe_seconds: Histogram,
    /// Writes sent by the commit phase (actions and status writes).
    pub writes: Counter,
    /// Writes in flight now.
    pub writes_in_flight: Gauge,
}

impl Default for MemberMetrics {
    fn default() -> Self {
        MemberMetrics {
            passes: Family::default(),
            actions: Family::default(),
            probe_seconds: Histogram::new(exponential_buckets(0.0005, 4.0, 9)),
            writes: Counter::default(),
            writes_in_flight: Gauge::default(),
        }
    }
}

impl MemberMetrics {
    /// Registers every metric in `registry` (prefixed as the registry is).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "member_passes",
            "Member controller passes over one set, by result",
            self.passes.clone(),
        );
        registry.register(
            "member_actions",
            "Planned actions, by kind and outcome",
            self.actions.clone(),
        );
        registry.register(
            "member_probe_seconds",
            "Duration of one role probe",
            self.probe_seconds.clone(),
        );
        registry.register(
            "member_writes",
            "Writes sent by the commit phase (actions and status)",
            self.writes.clone(),
        );
        registry.register(
            "member_writes_in_flight",
            "Writes of the commit phase in flight now",
            self.writes_in_flight.clone(),
        );
    }

    pub(crate) fn action(&self, action: &Action, outcome: &'static str) {
        self.actions
            .get_or_create(&vec![
                ("kind", kind(action).to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    pub(crate) fn pass(&self, result: &'static str) {
        self.passes
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }
}

/// An action's kind, as its label.
fn kind(action: &Action) -> &'static str {
    match action {
        Action::CreateVolume { .. } => "create-volume",
        Action::Create { .. } => "create",
        Action::SetRole { .. } => "set-role",
        Action::Switchover { .. } => "switchover",
        Action::UpdateInPlace { .. } => "update-in-place",
        Action::Recreate { .. } => "recreate",
        Action::Delete { .. } => "delete",
        Action::DeleteVolume { .. } => "delete-volume",
    }
}
