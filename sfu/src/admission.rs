//! What a session's client may hand the media node, checked on the caller's thread before
//! anything reaches a shard: the size and m-line count of SDP (parsed here, so a media
//! thread never parses a stranger's text), one offer and one answer in flight per session, a
//! burst limit on negotiations, a cap on candidates, and the SDP bytes queued per shard.
//! A media thread serves many rooms; one participant's input must not stall it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{MediaKind, Mid};
use tracing::debug;

use crate::api::MediaError;
use crate::config::MediaConfig;
use crate::metrics::SfuMetrics;

/// The limits one session's input is held to (from [`MediaConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InputLimits {
    pub max_sdp_bytes: usize,
    pub max_mlines: usize,
    pub max_candidates: usize,
    pub negotiation_burst: u32,
}

impl InputLimits {
    pub fn from_config(config: &MediaConfig) -> Self {
        Self {
            max_sdp_bytes: config.max_sdp_bytes,
            max_mlines: config.max_mlines_per_offer,
            max_candidates: config.max_candidates_per_session,
            negotiation_burst: config.negotiation_burst.max(1),
        }
    }
}

/// An offer or answer on its way to a shard. While it lives its session has one in
/// flight and its bytes count against the shard's SDP queue; the shard drops it when done.
pub(crate) struct Ticket {
    in_flight: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
        self.in_flight.store(false, Ordering::Release);
    }
}

/// SDP bytes queued to one shard, within a bound.
#[derive(Clone)]
pub(crate) struct SdpQueue {
    pub queued: Arc<AtomicUsize>,
    pub limit: usize,
}

/// One session's gate: its limits and what it has used of them.
pub(crate) struct Gate {
    limits: InputLimits,
    /// Offers and answers are kept apart: the node's own offer may reach the client (and
    /// its answer come back) while the shard is still finishing the client's offer.
    offers: Lane,
    answers: Lane,
    /// Set by the shard while the node's offer awaits the client's answer: an answer at
    /// any other time is refused unread, so answers need no rate of their own (the
    /// node's offers set their pace).
    awaiting_answer: Arc<AtomicBool>,
    candidates: AtomicUsize,
    metrics: SfuMetrics,
}

/// One kind of SDP from one session: at most one in flight, and maybe a token bucket.
struct Lane {
    in_flight: Arc<AtomicBool>,
    /// Tokens and when they were last counted; `None`: no rate limit.
    bucket: Option<Mutex<(f64, Instant)>>,
}

impl Lane {
    fn new(burst: Option<u32>) -> Self {
        let bucket = burst.map(|b| Mutex::new((f64::from(b), Instant::now())));
        Self { in_flight: Arc::new(AtomicBool::new(false)), bucket }
    }
}

/// A parsed offer with the mids it names, ready for a shard.
pub(crate) struct CheckedOffer {
    pub offer: SdpOffer,
    pub mids: Vec<Mid>,
    /// The audio and video m-lines the client only receives on (a WHEP player's).
    pub recvonly: Vec<(Mid, MediaKind)>,
    pub ticket: Ticket,
}

pub(crate) struct CheckedAnswer {
    pub answer: SdpAnswer,
    pub ticket: Ticket,
}

impl Gate {
    pub fn new(limits: InputLimits, awaiting_answer: Arc<AtomicBool>, metrics: SfuMetrics) -> Self {
        Self {
            limits,
            offers: Lane::new(Some(limits.negotiation_burst)),
            answers: Lane::new(None),
            awaiting_answer,
            candidates: AtomicUsize::new(0),
            metrics,
        }
    }

    fn refuse(&self, kind: &'static str, message: String) -> MediaError {
        self.metrics.bad_input.with_label_values(&[kind]).inc();
        debug!(kind, %message, "client input refused before the media thread");
        MediaError::Refused(message)
    }

    /// Check and parse a client's offer.
    pub fn offer(&self, sdp: &str, queue: &SdpQueue) -> Result<CheckedOffer, MediaError> {
        let ticket = self.admit_sdp("offer", &self.offers, sdp, queue)?;
        let offer = match parse_contained(|| SdpOffer::from_sdp_string(sdp)) {
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                debug!(error = %e, "unparseable offer");
                return Err(self.refuse("sdp", "the offer is not valid SDP".into()));
            }
            None => return Err(self.refuse("sdp", "the offer could not be parsed".into())),
        };
        Ok(CheckedOffer { offer, mids: offer_mids(sdp), recvonly: recvonly_mids(sdp), ticket })
    }

    /// Check and parse a client's answer to the node's offer.
    pub fn answer(&self, sdp: &str, queue: &SdpQueue) -> Result<CheckedAnswer, MediaError> {
        if !self.awaiting_answer.load(Ordering::Acquire) {
            return Err(self.refuse("answer_unexpected", "an answer without an outstanding offer".into()));
        }
        let ticket = self.admit_sdp("answer", &self.answers, sdp, queue)?;
        let answer = match parse_contained(|| SdpAnswer::from_sdp_string(sdp)) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                debug!(error = %e, "unparseable answer");
                return Err(self.refuse("sdp", "the answer is not valid SDP".into()));
            }
            None => return Err(self.refuse("sdp", "the answer could not be parsed".into())),
        };
        Ok(CheckedAnswer { answer, ticket })
    }

    /// One more remote candidate, within the session's cap.
    pub fn candidate(&self) -> Result<(), MediaError> {
        let n = self.candidates.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_candidates {
            return Err(self.refuse(
                "candidate_limit",
                format!("a session may add at most {} candidates", self.limits.max_candidates),
            ));
        }
        Ok(())
    }

    fn admit_sdp(
        &self,
        what: &'static str,
        lane: &Lane,
        sdp: &str,
        queue: &SdpQueue,
    ) -> Result<Ticket, MediaError> {
        if sdp.len() > self.limits.max_sdp_bytes {
            return Err(self.refuse(
                "sdp_size",
                format!("the {what} is {} bytes; at most {}", sdp.len(), self.limits.max_sdp_bytes),
            ));
        }
        let mlines = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if mlines > self.limits.max_mlines {
            return Err(self.refuse(
                "sdp_mlines",
                format!("the {what} has {mlines} m-lines; at most {}", self.limits.max_mlines),
            ));
        }
        if lane.in_flight.swap(true, Ordering::AcqRel) {
            self.metrics.bad_input.with_label_values(&["negotiation_busy"]).inc();
            return Err(MediaError::Busy(if what == "offer" {
                "the previous offer of this session is still being handled"
            } else {
                "the previous answer of this session is still being handled"
            }));
        }
        // From here the ticket clears the flag whatever happens.
        let bytes = sdp.len();
        queue.queued.fetch_add(bytes, Ordering::Relaxed);
        let ticket = Ticket { in_flight: lane.in_flight.clone(), queued: queue.queued.clone(), bytes };
        // Offers only: an answer comes only while the node's own offer is outstanding, one
        // per session, and refusing it would leave that offer unanswered for good.
        if what == "offer" && queue.queued.load(Ordering::Relaxed) > queue.limit {
            self.metrics.bad_input.with_label_values(&["sdp_queue_full"]).inc();
            return Err(MediaError::Busy("the media node has too much negotiation queued"));
        }
        if !self.take_token(lane) {
            self.metrics.bad_input.with_label_values(&["negotiation_rate"]).inc();
            return Err(MediaError::Busy("too many offers and answers; at most one a second after a burst"));
        }
        Ok(ticket)
    }

    /// A token bucket: `negotiation_burst` at once, then one a second.
    fn take_token(&self, lane: &Lane) -> bool {
        let Some(bucket) = &lane.bucket else { return true };
        let mut bucket = bucket.lock().expect("negotiation bucket");
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + refill).min(f64::from(self.limits.negotiation_burst));
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The mids an offer names.
pub(crate) fn offer_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines().filter_map(|l| l.trim_end().strip_prefix("a=mid:")).map(Mid::from).collect()
}

/// The audio and video m-lines an offer marks `a=recvonly`, with their kind.
pub(crate) fn recvonly_mids(sdp: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    // (kind, mid, recvonly) of the m-section being read.
    let mut section: Option<(Option<MediaKind>, Option<Mid>, bool)> = None;
    let mut close = |section: Option<(Option<MediaKind>, Option<Mid>, bool)>| {
        if let Some((Some(kind), Some(mid), true)) = section {
            out.push((mid, kind));
        }
    };
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            close(section.take());
            let kind = match m.split_whitespace().next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            section = Some((kind, None, false));
        } else if let Some((_, mid, recvonly)) = section.as_mut() {
            if let Some(m) = line.strip_prefix("a=mid:") {
                *mid = Some(Mid::from(m));
            } else if line == "a=recvonly" {
                *recvonly = true;
            }
        }
    }
    close(section);
    out
}

/// Run a parser that may panic on hostile input (str0m's), as the shard's `contained`
/// does for engine calls; `None` if it panicked.
fn parse_contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(burst: u32) -> (Gate, SdpQueue) {
        let limits =
            InputLimits { max_sdp_bytes: 2_000, max_mlines: 2, max_candidates: 3, negotiation_burst: burst };
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        (
            Gate::new(limits, Arc::new(AtomicBool::new(true)), metrics),
            SdpQueue { queued: Arc::new(AtomicUsize::new(0)), limit: 10_000 },
        )
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
        a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn one_offer_in_flight_and_its_bytes_counted_until_the_shard_is_done() {
        let (g, q) = gate(10);
        let first = g.offer(OFFER, &q).expect("a valid offer");
        assert_eq!(first.mids, vec![Mid::from("0")]);
        assert_eq!(q.queued.load(Ordering::Relaxed), OFFER.len());
        assert!(matches!(g.offer(OFFER, &q), Err(MediaError::Busy(_))), "a second waits for the first");
        drop(first);
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
        assert!(g.offer(OFFER, &q).is_ok());
    }

    #[test]
    fn size_mlines_and_garbage_are_refused_and_free_the_session() {
        let (g, q) = gate(10);
        let big = format!("{OFFER}{}", "a=x\r\n".repeat(500));
        assert!(matches!(g.offer(&big, &q), Err(MediaError::Refused(_))));
        let three = format!("{OFFER}m=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        assert!(matches!(g.offer(&three, &q), Err(MediaError::Refused(m)) if m.contains("m-lines")));
        assert!(matches!(g.offer("m=garbage", &q), Err(MediaError::Refused(_))));
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
        assert!(g.offer(OFFER, &q).is_ok(), "refusals leave nothing in flight");
    }

    #[test]
    fn an_answer_may_arrive_while_the_offer_is_still_handled() {
        let (g, q) = gate(10);
        let _offer = g.offer(OFFER, &q).expect("offer");
        let answer = OFFER.replace("a=setup:actpass", "a=setup:active");
        assert!(g.answer(&answer, &q).is_ok(), "offers and answers are separate lanes");
    }

    #[test]
    fn an_answer_is_taken_only_while_an_offer_is_outstanding() {
        let (mut g, q) = gate(10);
        g.awaiting_answer = Arc::new(AtomicBool::new(false));
        let answer = OFFER.replace("a=setup:actpass", "a=setup:active");
        assert!(matches!(g.answer(&answer, &q), Err(MediaError::Refused(_))));
        g.awaiting_answer.store(true, Ordering::Release);
        assert!(g.answer(&answer, &q).is_ok());
    }

    #[test]
    fn negotiations_beyond_the_burst_wait_for_tokens() {
        let (g, q) = gate(2);
        assert!(g.offer(OFFER, &q).is_ok());
        assert!(g.offer(OFFER, &q).is_ok());
        assert!(matches!(g.offer(OFFER, &q), Err(MediaError::Busy(_))));
    }

    #[test]
    fn the_shard_queue_bound_counts_bytes() {
        let (g, _) = gate(10);
        let q = SdpQueue { queued: Arc::new(AtomicUsize::new(9_900)), limit: 10_000 };
        assert!(matches!(g.offer(OFFER, &q), Err(MediaError::Busy(_))));
        assert_eq!(q.queued.load(Ordering::Relaxed), 9_900);
        let answer = OFFER.replace("a=setup:actpass", "a=setup:active");
        assert!(
            g.answer(&answer, &q).is_ok(),
            "an answer to the node's offer is never refused for the queue"
        );
    }

    #[test]
    fn recvonly_m_lines_are_found_with_their_kind() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\na=mid:2\r\n";
        assert_eq!(
            recvonly_mids(sdp),
            vec![(Mid::from("0"), MediaKind::Audio), (Mid::from("2"), MediaKind::Video)]
        );
    }

    #[test]
    fn candidates_are_capped_per_session() {
        let (g, _) = gate(10);
        for _ in 0..3 {
            g.candidate().unwrap();
        }
        assert!(g.candidate().is_err());
    }
}
