//! The expected-delivery model: which of the packets the others sent a subscriber should
//! have received, now that the server forwards some on purpose and not others
//! (docs/loadtest.md, *How it measures*), and which subscriptions froze.

use std::time::{Duration, Instant};

use crate::stats::DeliveryCounter;

/// Rooms above this many participants get only the loudest speakers' audio: the
/// server's `audio_top_n_above` (default 10, docs/protocol.md *Receiving: slots*).
pub const AUDIO_TOP_N_ABOVE: usize = 10;

/// The start of a talk turn no subscriber is expected to receive: the server must see the
/// previous speakers stop before it hands their slot to a new one.
pub const TALK_GRACE: Duration = Duration::from_millis(100);

/// A received stream's runs are separated by gaps of more than this much of its packets
/// (the server stopped sending it for a while, on purpose), and wherever the receiver came
/// back to it from another layer of the same camera.
pub const RUN_GAP: Duration = Duration::from_secs(2);

/// A track subscribed to for longer than this must have delivered a packet within
/// `FROZEN_SILENCE` of the window's end.
pub const FROZEN_SUBSCRIBED: Duration = Duration::from_secs(3);
pub const FROZEN_SILENCE: Duration = Duration::from_secs(2);

/// Measurement streams per client: two for its microphone, one per possible camera layer.
pub const STREAMS_PER_CLIENT: u32 = 5;

/// What a measurement stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Audio every subscriber should receive: all of it in small rooms; in rooms with
    /// top-N audio, talking packets after the turn's first `TALK_GRACE`.
    Talk,
    /// Audio no subscriber is expected to receive (silence and the start of a turn in
    /// rooms with top-N audio); receiving it is not an error.
    Unexpected,
    /// One camera layer, by rank (0 = q, 1 = h, 2 = f).
    Video(usize),
}

impl StreamKind {
    /// The stream id in the stamp of client `serial`'s packets of this kind.
    pub fn id(self, serial: u32) -> u32 {
        let k = match self {
            StreamKind::Talk => 0,
            StreamKind::Unexpected => 1,
            StreamKind::Video(rank) => 2 + rank.min(2) as u32,
        };
        serial * STREAMS_PER_CLIENT + k
    }

    /// The client and kind a stream id belongs to.
    pub fn of(id: u32) -> (u32, StreamKind) {
        let kind = match id % STREAMS_PER_CLIENT {
            0 => StreamKind::Talk,
            1 => StreamKind::Unexpected,
            k => StreamKind::Video(k as usize - 2),
        };
        (id / STREAMS_PER_CLIENT, kind)
    }
}

/// One microphone's talk turns, to tell a turn's first `TALK_GRACE` from the rest.
#[derive(Debug, Default, Clone)]
pub struct TalkTurn {
    since: Option<Instant>,
}

impl TalkTurn {
    /// Whether a packet sent `now` is one every subscriber should get in a room with top-N
    /// audio: it is talking, and its turn started at least `TALK_GRACE` ago.
    pub fn expected(&mut self, talking: bool, now: Instant) -> bool {
        if !talking {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= TALK_GRACE
    }
}

/// What one sent stream did in the measurement window.
#[derive(Debug, Clone)]
pub struct SentStream {
    pub id: u32,
    pub owner: u32,
    pub kind: StreamKind,
    /// Packets it sent inside the window.
    pub packets: u64,
    /// Its publisher was connected before the window opened.
    pub before_window: bool,
    /// More missing packets than this start a new run (`RUN_GAP` of this stream).
    pub run_gap: u64,
}

/// What one subscriber received.
#[derive(Debug)]
pub struct Subscriber<'a> {
    pub serial: u32,
    /// Connected before the window opened and stayed to its end.
    pub whole_window: bool,
    /// It sent `subscribe`: the server chooses its video.
    pub has_view: bool,
    /// The participant's other connection (against Janus): its streams are not expected.
    pub twin: Option<u32>,
    pub received: &'a [(u32, DeliveryCounter)],
}

/// A subscriber's packets: those it should have received, those of them it did, and
/// those it received that nobody was expected to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    pub expected: u64,
    pub received: u64,
    pub unexpected: u64,
    /// The audio part of `expected` and `received` (a node that sheds video under load
    /// must keep this whole: ADR 0021).
    pub audio: (u64, u64),
}

impl Judgement {
    /// The share of the audio and of the video it should have received that it did.
    pub fn deliveries(&self) -> (Option<f64>, Option<f64>) {
        let share =
            |(expected, received): (u64, u64)| (expected > 0).then(|| received as f64 / expected as f64);
        (share(self.audio), share((self.expected - self.audio.0, self.received - self.audio.1)))
    }

    fn add(&mut self, (expected, received): (u64, u64)) {
        self.expected += expected;
        self.received += received;
    }

    fn add_audio(&mut self, counts: (u64, u64)) {
        self.add(counts);
        self.audio.0 += counts.0;
        self.audio.1 += counts.1;
    }
}

/// What `sub` should have received of everyone else's streams, and did.
///
/// - Audio it should get (`Talk`) counts over the whole window when both it and the
///   publisher were there throughout, otherwise over the span it received.
/// - Video for a subscriber with a view counts on the runs in which each layer was
///   received (the server picks one layer per shown track; frozen tracks are found by
///   [`Shown::frozen`]). Without a view, the server sends every camera: a track received at
///   one layer counts over the whole window, at several layers on their runs, and a
///   track not received at all counts as its top layer missed.
pub fn judge(sub: &Subscriber, sent: &[SentStream]) -> Judgement {
    let counter = |id: u32| sub.received.iter().find(|(s, _)| *s == id).map(|(_, d)| d);
    let got_any = |id: u32| counter(id).is_some_and(|d| d.unique() > 0);
    let mut j = Judgement::default();
    for s in sent.iter().filter(|s| s.owner != sub.serial && Some(s.owner) != sub.twin) {
        let got = counter(s.id);
        let whole = sub.whole_window && s.before_window;
        match s.kind {
            StreamKind::Unexpected => j.unexpected += got.map_or(0, |d| d.unique()),
            StreamKind::Talk if whole => {
                j.add_audio((s.packets, got.map_or(0, |d| d.received_of(s.packets))))
            }
            StreamKind::Talk => {
                if let Some((first, last)) = got.and_then(|d| d.span()) {
                    j.add_audio((last - first + 1, got.map_or(0, |d| d.unique())));
                }
            }
            StreamKind::Video(rank) if whole && !sub.has_view => {
                let layers =
                    || sent.iter().filter(|o| o.owner == s.owner && matches!(o.kind, StreamKind::Video(_)));
                let received_layers = layers().filter(|o| got_any(o.id)).count();
                let top = layers()
                    .filter_map(|o| match o.kind {
                        StreamKind::Video(r) => Some(r),
                        _ => None,
                    })
                    .max();
                match (received_layers, got) {
                    (0, _) if top == Some(rank) => j.add((s.packets, 0)),
                    (1, Some(d)) if d.unique() > 0 => j.add((s.packets, d.received_of(s.packets))),
                    (_, Some(d)) => j.add(d.within_runs(s.run_gap)),
                    _ => {}
                }
            }
            StreamKind::Video(_) => {
                if let Some(d) = got {
                    j.add(d.within_runs(s.run_gap));
                }
            }
        }
    }
    j
}

/// A track a client with a view showed at the end of the window.
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    /// When a subscription first listed it (microseconds on the run's clock).
    pub since_us: u64,
    /// The last packet of any of its layers received inside the window.
    pub last_packet_us: Option<u64>,
}

impl Shown {
    /// Shown for more than `FROZEN_SUBSCRIBED` and nothing in the last `FROZEN_SILENCE` of
    /// the window: a frozen tile.
    pub fn frozen(&self, window_end_us: u64) -> bool {
        let subscribed = FROZEN_SUBSCRIBED.as_micros() as u64;
        let silence = FROZEN_SILENCE.as_micros() as u64;
        self.since_us.saturating_add(subscribed) < window_end_us
            && self.last_packet_us.is_none_or(|t| t.saturating_add(silence) < window_end_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_name_client_and_kind() {
        for serial in [0, 1, 77] {
            for kind in [StreamKind::Talk, StreamKind::Unexpected, StreamKind::Video(0), StreamKind::Video(2)]
            {
                assert_eq!(StreamKind::of(kind.id(serial)), (serial, kind));
            }
        }
        assert_ne!(StreamKind::Video(1).id(3), StreamKind::Talk.id(4));
    }

    #[test]
    fn a_talk_turn_is_expected_after_its_first_100_ms_and_silence_never() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut turn = TalkTurn::default();
        assert!(!turn.expected(false, at(0)), "silence (DTX)");
        let first: Vec<bool> = (0..8).map(|i| turn.expected(true, at(400 + 20 * i))).collect();
        assert_eq!(first, [false, false, false, false, false, true, true, true], "20 ms frames: 5 in grace");
        assert!(!turn.expected(false, at(5000)));
        assert!(!turn.expected(true, at(5020)), "a new turn has its own grace");
        assert!(!turn.expected(true, at(5119)));
        assert!(turn.expected(true, at(5120)));
    }

    fn counter(indexes: impl IntoIterator<Item = u64>) -> DeliveryCounter {
        let mut d = DeliveryCounter::default();
        for i in indexes {
            d.record(i);
        }
        d
    }

    fn stream(owner: u32, kind: StreamKind, packets: u64) -> SentStream {
        SentStream { id: kind.id(owner), owner, kind, packets, before_window: true, run_gap: 20 }
    }

    #[test]
    fn audio_counts_talking_packets_and_never_silence() {
        let sent = [stream(1, StreamKind::Talk, 100), stream(1, StreamKind::Unexpected, 40)];
        let received = [
            (StreamKind::Talk.id(1), counter((0..100).filter(|i| *i != 7))),
            (StreamKind::Unexpected.id(1), counter(0..3)),
        ];
        let sub =
            Subscriber { serial: 2, whole_window: true, has_view: true, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 100, received: 99, unexpected: 3, audio: (100, 99) }
        );
        // Nothing from a talking publisher is a loss; nothing of its silence is not.
        let sub = Subscriber { serial: 2, whole_window: true, has_view: false, twin: None, received: &[] };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 100, received: 0, unexpected: 0, audio: (100, 0) }
        );
        // One's own streams are never expected.
        let sub = Subscriber { serial: 1, whole_window: true, has_view: false, twin: None, received: &[] };
        assert_eq!(judge(&sub, &sent), Judgement::default());
        // Nor those of the participant's other connection (against Janus it publishes on one
        // and subscribes on the other).
        let sub = Subscriber { serial: 2, whole_window: true, has_view: false, twin: Some(1), received: &[] };
        assert_eq!(judge(&sub, &sent), Judgement::default());
        // Who came mid-window is judged on the span it received.
        let received = [(StreamKind::Talk.id(1), counter((40..60).filter(|i| *i != 50)))];
        let sub =
            Subscriber { serial: 2, whole_window: false, has_view: false, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 20, received: 19, unexpected: 0, audio: (20, 19) }
        );
    }

    #[test]
    fn a_view_is_judged_on_the_runs_of_each_layer_received() {
        let sent = [
            stream(1, StreamKind::Video(0), 300),
            stream(1, StreamKind::Video(1), 600),
            stream(1, StreamKind::Video(2), 900),
        ];
        // q, then h for a while (one loss), then q again: the q gap is a layer switch.
        let received = [
            (StreamKind::Video(0).id(1), counter((0..100).chain(200..300))),
            (StreamKind::Video(1).id(1), counter((200..400).filter(|i| *i != 300))),
        ];
        let sub =
            Subscriber { serial: 2, whole_window: true, has_view: true, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 400, received: 399, unexpected: 0, audio: (0, 0) }
        );
        // Away on h and back within the run gap: the receiver marked its return to q.
        let mut q = counter((0..100).chain(130..300));
        q.start_run(130);
        let received = [(StreamKind::Video(0).id(1), q), (StreamKind::Video(1).id(1), counter(200..260))];
        let sub =
            Subscriber { serial: 2, whole_window: true, has_view: true, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 330, received: 330, unexpected: 0, audio: (0, 0) }
        );
        // A view that shows nothing of a track expects nothing of it (`Shown::frozen` judges that).
        let sub = Subscriber { serial: 2, whole_window: true, has_view: true, twin: None, received: &[] };
        assert_eq!(judge(&sub, &sent), Judgement::default());
    }

    #[test]
    fn without_a_view_every_camera_is_expected_for_the_whole_window() {
        let sent = [stream(1, StreamKind::Video(1), 600), stream(1, StreamKind::Video(2), 900)];
        // The top layer, missing its first 10 packets: counted.
        let received = [(StreamKind::Video(2).id(1), counter(10..900))];
        let sub =
            Subscriber { serial: 2, whole_window: true, has_view: false, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 900, received: 890, unexpected: 0, audio: (0, 0) }
        );
        // Nothing at all: the top layer is missed.
        let sub = Subscriber { serial: 2, whole_window: true, has_view: false, twin: None, received: &[] };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 900, received: 0, unexpected: 0, audio: (0, 0) }
        );
        // Moved between layers (its bandwidth estimate): each layer on its runs.
        let received = [
            (StreamKind::Video(1).id(1), counter(0..300)),
            (StreamKind::Video(2).id(1), counter((450..900).filter(|i| *i != 500))),
        ];
        let sub =
            Subscriber { serial: 2, whole_window: true, has_view: false, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 750, received: 749, unexpected: 0, audio: (0, 0) }
        );
        // A subscriber who came mid-window: runs only.
        let received = [(StreamKind::Video(2).id(1), counter(10..900))];
        let sub =
            Subscriber { serial: 2, whole_window: false, has_view: false, twin: None, received: &received };
        assert_eq!(
            judge(&sub, &sent),
            Judgement { expected: 890, received: 890, unexpected: 0, audio: (0, 0) }
        );
    }

    #[test]
    fn frozen_tiles_are_old_subscriptions_without_recent_packets() {
        let s = |since: u64, last: Option<u64>| Shown {
            since_us: since * 1000,
            last_packet_us: last.map(|l| l * 1000),
        };
        let end = 60_000_000;
        let shown = [
            s(1_000, Some(59_900)),  // fine
            s(1_000, Some(57_000)),  // silent for 3 s: frozen
            s(1_000, None),          // never delivered: frozen
            s(58_000, None),         // subscribed 2 s ago: too early to tell
            s(56_000, Some(58_500)), // fine
        ];
        let frozen: Vec<bool> = shown.iter().map(|s| s.frozen(end)).collect();
        assert_eq!(frozen, [false, true, true, false, false]);
    }
}
