//! A client-facing session engine for the fuzz targets: the node's and the shard's calls
//! for one session, without a shard around it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use str0m::change::SdpPendingOffer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Event, IceCreds, Rtc};

use super::session::{contained, received_payload_types, sent_payload_types, session_rtc};
use crate::api::SessionId;
use crate::config::MediaConfig;
use crate::egress;
use crate::metrics::SfuMetrics;

/// One session's engine as `Shard::join` builds it, fed what its client can send through
/// the checks and engine calls the node and shard make for it (`Gate`, then `handle_offer`,
/// `offer_if_needed`, `handle_answer`, `handle_candidate`, `handle_datagram`, timers,
/// `drain`), each engine call `contained` as there. For the fuzz targets (fuzz/): a panic
/// that escapes these methods would end a shard; one they contain would end only this
/// session. Keep in step with the shard's calls above.
pub struct ClientFacing {
    pub rtc: Rtc,
    local: SocketAddr,
    gate: crate::admission::Gate,
    queue: crate::admission::SdpQueue,
    failed: Vec<SessionId>,
    metrics: SfuMetrics,
    pending_offer: Option<SdpPendingOffer>,
    /// The mids the server offered (its sinks).
    sinks: Vec<Mid>,
    /// Datagrams the engine sent (answers to checks, DTLS flights).
    pub sent: u64,
}

impl ClientFacing {
    const ID: SessionId = 1;

    pub fn new(config: &MediaConfig, local: SocketAddr, now: Instant) -> Self {
        // As `Shard::join`: the engine's DTLS instance is bound to the session named here.
        egress::keys::set_current_session(Self::ID);
        let mut rtc = session_rtc(config, IceCreds::new(), now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        // Answers are always let through to the engine here (the shard's flag would be set
        // whenever it has an offer out), and offers are not rate-limited (one per call).
        let mut limits = crate::admission::InputLimits::from_config(config);
        limits.negotiation_burst = u32::MAX;
        let awaiting = Arc::new(AtomicBool::new(true));
        let gate = crate::admission::Gate::new(limits, awaiting, metrics.clone());
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let queue = crate::admission::SdpQueue { queued, limit: usize::MAX };
        Self {
            rtc,
            local,
            gate,
            queue,
            failed: Vec::new(),
            metrics,
            pending_offer: None,
            sinks: Vec::new(),
            sent: 0,
        }
    }

    /// An engine call panicked: the shard would end the session and call it no more.
    pub fn engine_panicked(&self) -> bool {
        !self.failed.is_empty()
    }

    /// A client offer: the answer's SDP, or why not.
    pub fn offer(&mut self, sdp: &str) -> Result<String, String> {
        let checked = self.gate.offer(sdp, &self.queue).map_err(|e| e.to_string())?;
        if self.engine_panicked() || self.pending_offer.is_some() {
            return Err("ignored".into());
        }
        let crate::admission::CheckedOffer { offer, mids, ticket: _ticket, .. } = checked;
        let (failed, metrics, id) = (&mut self.failed, &self.metrics, Self::ID);
        let rtc = &mut self.rtc;
        let accepted =
            contained(failed, metrics, id, || rtc.sdp_api().accept_offer(offer)).ok_or("panicked")?;
        let answer = accepted.map_err(|e| e.to_string())?;
        let rtc = &self.rtc;
        contained(failed, metrics, id, || sent_payload_types(rtc)).ok_or("panicked")?;
        for mid in mids {
            self.publication(mid);
        }
        self.drain();
        // Not contained in `handle_offer` either.
        Ok(answer.to_sdp_string())
    }

    /// A server offer adding a send-only audio and video m-line, as `offer_if_needed` makes
    /// for new slots: its SDP and the mids it added.
    pub fn server_offer(&mut self) -> Option<(String, Vec<String>)> {
        if self.engine_panicked() || self.pending_offer.is_some() {
            return None;
        }
        let rtc = &mut self.rtc;
        let built = contained(&mut self.failed, &self.metrics, Self::ID, || {
            let mut api = rtc.sdp_api();
            let mids: Vec<Mid> = [MediaKind::Audio, MediaKind::Video]
                .into_iter()
                .map(|kind| {
                    api.add_media(kind, Direction::SendOnly, Some("PA_x".into()), Some("TR_x".into()), None)
                })
                .collect();
            (mids, api.apply())
        });
        let (mids, applied) = built?;
        let (offer, pending) = applied?;
        self.pending_offer = Some(pending);
        self.sinks.extend(&mids);
        self.drain();
        Some((offer.to_sdp_string(), mids.iter().map(|m| m.to_string()).collect()))
    }

    /// A client answer to the pending server offer.
    pub fn answer(&mut self, sdp: &str) -> Result<(), String> {
        let checked = self.gate.answer(sdp, &self.queue).map_err(|e| e.to_string())?;
        if self.engine_panicked() {
            return Err("ignored".into());
        }
        let crate::admission::CheckedAnswer { answer, ticket: _ticket } = checked;
        let pending = self.pending_offer.take().ok_or("no outstanding offer")?;
        let (failed, metrics, id) = (&mut self.failed, &self.metrics, Self::ID);
        let rtc = &mut self.rtc;
        let accepted = contained(failed, metrics, id, || rtc.sdp_api().accept_answer(pending, answer))
            .ok_or("panicked")?;
        accepted.map_err(|e| e.to_string())?;
        let (rtc, sinks) = (&mut self.rtc, &self.sinks);
        contained(failed, metrics, id, || {
            for mid in sinks {
                rtc.direct_api().stream_tx_by_mid(*mid, None).map(|s| s.ssrc());
            }
        })
        .ok_or("panicked")?;
        let (rtc, sinks) = (&self.rtc, &self.sinks);
        contained(failed, metrics, id, || {
            let _ = sent_payload_types(rtc);
            for mid in sinks {
                let _ = received_payload_types(rtc, *mid);
            }
        })
        .ok_or("panicked")?;
        self.drain();
        Ok(())
    }

    /// A client's ICE candidate line; whether the engine took it.
    pub fn candidate(&mut self, candidate: &str) -> bool {
        if self.gate.candidate().is_err() {
            return false;
        }
        let line = candidate.trim().trim_start_matches("a=");
        if self.engine_panicked()
            || line.is_empty()
            || line.split_whitespace().nth(4).is_some_and(|a| a.ends_with(".local"))
        {
            return false;
        }
        let rtc = &mut self.rtc;
        let added = contained(&mut self.failed, &self.metrics, Self::ID, || {
            Candidate::from_sdp_string(line).map(|c| rtc.add_remote_candidate(c))
        });
        self.drain();
        matches!(added, Some(Ok(())))
    }

    /// A datagram from `source` on the media port; whether the engine took it.
    pub fn datagram(&mut self, source: SocketAddr, data: &[u8], now: Instant) -> bool {
        if self.engine_panicked() {
            return false;
        }
        // Not contained in `handle_datagram` either.
        let Ok(receive) = str0m::net::Receive::new(str0m::net::Protocol::Udp, source, self.local, data)
        else {
            return false;
        };
        let input = str0m::Input::Receive(now, receive);
        let rtc = &mut self.rtc;
        if contained(&mut self.failed, &self.metrics, Self::ID, || rtc.accepts(&input)) != Some(true) {
            return false;
        }
        let rtc = &mut self.rtc;
        let handled = contained(&mut self.failed, &self.metrics, Self::ID, || rtc.handle_input(input));
        self.drain();
        matches!(handled, Some(Ok(())))
    }

    /// The session's timer firing at `now`.
    pub fn timeout(&mut self, now: Instant) {
        if self.engine_panicked() {
            return;
        }
        let rtc = &mut self.rtc;
        contained(&mut self.failed, &self.metrics, Self::ID, || rtc.handle_input(str0m::Input::Timeout(now)));
        self.drain();
    }

    /// What `sync_publication` reads of one of the client's mids.
    fn publication(&mut self, mid: Mid) {
        let rtc = &self.rtc;
        contained(&mut self.failed, &self.metrics, Self::ID, || {
            let media = rtc.media(mid)?;
            let receiving =
                matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) && !media.disabled();
            Some((receiving, media.kind()))
        });
    }

    /// `Shard::drain`: poll until the engine asks for a timeout (or fails).
    fn drain(&mut self) {
        while !self.engine_panicked() {
            let rtc = &mut self.rtc;
            match contained(&mut self.failed, &self.metrics, Self::ID, || rtc.poll_output()) {
                Some(Ok(str0m::Output::Event(Event::MediaAdded(added)))) => self.publication(added.mid),
                Some(Ok(str0m::Output::Event(Event::MediaChanged(changed)))) => self.publication(changed.mid),
                Some(Ok(str0m::Output::Transmit(_))) => self.sent += 1,
                Some(Ok(str0m::Output::Event(_))) => {}
                Some(Ok(str0m::Output::Timeout(_)) | Err(_)) | None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_engine_call_fails_only_its_session() {
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        let mut failed = Vec::new();
        assert_eq!(contained(&mut failed, &metrics, 7, || 42), Some(42));
        assert!(failed.is_empty());
        let r: Option<()> = contained(&mut failed, &metrics, 9, || panic!("engine bug"));
        assert_eq!(r, None);
        let _: Option<()> = contained(&mut failed, &metrics, 9, || panic!("again"));
        assert_eq!(failed, vec![9], "marked once");
        assert_eq!(metrics.session_panics.get(), 2);
    }
}
