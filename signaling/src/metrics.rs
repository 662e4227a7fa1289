//! Prometheus metrics of the control plane.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct SignalingMetrics {
    pub connections: IntGauge,
    pub messages: IntCounterVec,
    pub errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub join_seconds: Histogram,
    /// Connections closed because the client sent no join in time.
    pub join_timeouts: IntCounter,
    /// Clients dropped because they took no message within the send timeout.
    pub send_timeouts: IntCounter,
    /// HTTP connections closed at once by a limit, by which (total, per_ip).
    pub connections_refused: IntCounterVec,
    /// Failed accepts on the HTTP listener (out of file descriptors, mostly).
    pub accept_errors: IntCounter,
    /// TLS handshakes that failed (`handshake`) or did not finish in time (`timeout`).
    pub tls_failures: IntCounterVec,
    /// WHEP requests an origin sent on to one of its edges (`307`).
    pub whep_redirects: IntCounter,
    /// Participants whose signaling connection dropped, waiting for a resume now.
    pub parked: IntGauge,
    /// What came of parked participants and resume requests: `resumed`, `reloaded` (back
    /// with a new peer connection), `expired` (the grace period ended: they left),
    /// `refused` (a resume token that named none).
    pub resumes: IntCounterVec,
    /// Host controls taken (told to the room and ordered), by action (mute, muteAll, remove, end) and from where
    /// (page, api).
    pub host_actions: IntCounterVec,
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
        let join_timeouts = IntCounter::new(
            "huiyi_signaling_join_timeouts_total",
            "Signaling connections closed for sending no join in time",
        )
        .expect("metric");
        let send_timeouts = IntCounter::new(
            "huiyi_signaling_send_timeouts_total",
            "Signaling clients dropped for taking no message within the send timeout",
        )
        .expect("metric");
        let connections_refused = IntCounterVec::new(
            Opts::new("huiyi_http_connections_refused_total", "HTTP connections closed at once by a limit"),
            &["limit"],
        )
        .expect("metric");
        let accept_errors =
            IntCounter::new("huiyi_http_accept_errors_total", "Failed accepts on the HTTP listener")
                .expect("metric");
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "huiyi_tls_handshake_failures_total",
                "TLS handshakes on the HTTP listener that failed or did not finish in time",
            ),
            &["reason"],
        )
        .expect("metric");
        let whep_redirects = IntCounter::new(
            "huiyi_whep_redirects_total",
            "WHEP requests an origin sent on to the least loaded of its edges (307)",
        )
        .expect("metric");
        let parked = IntGauge::new(
            "huiyi_signaling_parked",
            "Participants whose signaling connection dropped and whose session waits for a resume",
        )
        .expect("metric");
        let resumes = IntCounterVec::new(
            Opts::new(
                "huiyi_signaling_resumes_total",
                "Parked participants resumed or expired, and resume requests refused",
            ),
            &["outcome"],
        )
        .expect("metric");
        let host_actions = IntCounterVec::new(
            Opts::new(
                "huiyi_host_actions_total",
                "Host controls taken (told to the room), by action and from where",
            ),
            &["action", "via"],
        )
        .expect("metric");
        for m in [
            Box::new(host_actions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(whep_redirects.clone()),
            Box::new(parked.clone()),
            Box::new(resumes.clone()),
            Box::new(connections.clone()),
            Box::new(messages.clone()),
            Box::new(errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(join_seconds.clone()),
            Box::new(join_timeouts.clone()),
            Box::new(send_timeouts.clone()),
            Box::new(connections_refused.clone()),
            Box::new(accept_errors.clone()),
            Box::new(tls_failures.clone()),
        ] {
            registry.register(m).expect("register metric");
        }
        Self {
            connections,
            messages,
            errors,
            auth_failures,
            join_seconds,
            join_timeouts,
            send_timeouts,
            connections_refused,
            accept_errors,
            tls_failures,
            whep_redirects,
            parked,
            resumes,
            host_actions,
        }
    }
}
