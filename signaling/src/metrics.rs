//! Prometheus metrics of the control plane.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct SignalingMetrics {
    pub connections: IntGauge,
    pub messages: IntCounterVec,
    pub errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub join_seconds: Histogram,
}

impl SignalingMetrics {
    pub fn new(registry: &Registry) -> Self {
        let connections =
            IntGauge::new("huiyi_signaling_connections", "Open signaling WebSockets").expect("metric");
        let messages = IntCounterVec::new(
            Opts::new("huiyi_signaling_messages_total", "Client messages received, by type"),
            &["type"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new("huiyi_signaling_errors_total", "Error messages sent to clients, by code"),
            &["code"],
        )
        .expect("metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("huiyi_auth_failures_total", "Refused tokens, by reason"),
            &["reason"],
        )
        .expect("metric");
        let join_seconds = Histogram::with_opts(
            HistogramOpts::new("huiyi_join_seconds", "From the join message to the joined answer")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("metric");
        for m in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(messages.clone()),
            Box::new(errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(join_seconds.clone()),
        ] {
            registry.register(m).expect("register metric");
        }
        Self { connections, messages, errors, auth_failures, join_seconds }
    }
}
