//! The queues into a shard: its main one (datagrams of media and signaling's commands, in
//! order), the side channel for leaves that found it full, and the handshake lane (ICE and
//! DTLS, read before each input; ADR 0019).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};

use tokio::sync::mpsc;

use super::RelayInput;
use crate::admission::{CheckedAnswer, CheckedOffer, SdpQueue};
use crate::api::{
    JoinRequest, LeaveReason, MediaError, ParticipantInfo, SessionEvent, SessionId, ShownTrack, TrackSource,
};
use crate::io::{Datagrams, Delivery};

/// Where a join's answer goes: the session and everyone already in the room, or why not.
pub(crate) type JoinReply =
    tokio::sync::oneshot::Sender<Result<(SessionId, Vec<ParticipantInfo>), MediaError>>;

/// Batches of ICE and DTLS datagrams (one read's worth for one shard each, at most 32
/// datagrams) queued ahead of media per shard; beyond, they are dropped and counted.
pub(crate) const HANDSHAKE_BATCHES: usize = 256;

pub(crate) enum ShardInput {
    /// Datagrams from one read of the socket (the receive thread found this shard's).
    Datagrams(Datagrams),
    /// The handshake lane has datagrams: wakes an idle shard (a busy one reads the lane
    /// before each input anyway, so this marker may be dropped when the queue is full).
    Handshakes,
    Join {
        request: JoinRequest,
        events: mpsc::Sender<SessionEvent>,
        reply: JoinReply,
        /// Set while the session's client owes an answer to the node's offer (the node's
        /// gate takes answers only then).
        awaiting_answer: Arc<AtomicBool>,
    },
    /// A client's offer, checked and parsed on the caller's thread.
    Offer {
        session: SessionId,
        offer: CheckedOffer,
        tracks: Vec<(String, TrackSource)>,
    },
    Answer {
        session: SessionId,
        answer: CheckedAnswer,
    },
    Candidate {
        session: SessionId,
        candidate: String,
    },
    Mute {
        session: SessionId,
        track_id: String,
        muted: bool,
    },
    /// A host muted the session's microphone (held until it unmutes).
    HoldAudio {
        session: SessionId,
    },
    Subscribe {
        session: SessionId,
        tracks: Vec<ShownTrack>,
    },
    Leave {
        session: SessionId,
        reason: LeaveReason,
    },
    /// From a relay link (relay/): a join, a track, a packet, a request.
    Relay(RelayInput),
    Shutdown,
}

/// The queue into a shard, plus its load for placement.
#[derive(Clone)]
pub(crate) struct ShardSender {
    pub tx: SyncSender<ShardInput>,
    pub sessions: Arc<AtomicUsize>,
    /// Joins admitted to this shard and not answered yet (the node's admission counts
    /// them as sessions).
    pub joining: Arc<AtomicUsize>,
    /// What the shard measures of its own load (`ShardLoad::admits`).
    pub load: Arc<super::ShardLoad>,
    /// Datagrams in the queue, bounded by `queue_limit`.
    pub queued: Arc<AtomicUsize>,
    pub queue_limit: usize,
    /// Sessions to end that found the queue full: unbounded, so ending a session never
    /// waits (it is called from signaling's tasks), and read every turn.
    pub leaves: Sender<(SessionId, LeaveReason)>,
    /// ICE and DTLS datagrams, read before each input (`io::Lane`).
    pub handshakes: SyncSender<Datagrams>,
    /// Shared with the shard's `SideLanes::marked`.
    pub lane_marked: Arc<AtomicBool>,
    /// SDP bytes on their way to this shard, bounded.
    pub sdp: SdpQueue,
}

impl ShardSender {
    /// Queue received datagrams, within the bound on datagrams queued.
    pub fn datagrams(&self, batch: Datagrams) -> Delivery {
        let n = batch.len();
        if self.queued.load(Ordering::Relaxed) + n > self.queue_limit {
            return Delivery::Full(batch);
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(ShardInput::Datagrams(batch)) {
            Ok(()) => Delivery::Queued,
            Err(e) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                match e {
                    TrySendError::Full(ShardInput::Datagrams(b)) => Delivery::Full(b),
                    _ => Delivery::Gone(n),
                }
            }
        }
    }

    /// Queue received ICE and DTLS datagrams ahead of media, and wake the shard if idle.
    pub fn handshakes(&self, batch: Datagrams) -> Delivery {
        match self.handshakes.try_send(batch) {
            Ok(()) => {
                // One marker at a time: they take places in the media queue it does not count.
                if !self.lane_marked.swap(true, Ordering::AcqRel)
                    && self.tx.try_send(ShardInput::Handshakes).is_err()
                {
                    self.lane_marked.store(false, Ordering::Release);
                }
                Delivery::Queued
            }
            Err(TrySendError::Full(batch)) => Delivery::Full(batch),
            Err(TrySendError::Disconnected(batch)) => Delivery::Gone(batch.len()),
        }
    }

    pub fn command(&self, input: ShardInput) -> Result<(), MediaError> {
        self.tx.try_send(input).map_err(|e| match e {
            TrySendError::Full(_) => MediaError::Overloaded,
            TrySendError::Disconnected(_) => MediaError::ShuttingDown,
        })
    }

    /// End a session, without waiting: through the queue, or when it is full through the
    /// side channel the shard reads every turn.
    pub fn end(&self, session: SessionId, reason: LeaveReason) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(ShardInput::Leave { session, reason }) {
            let _ = self.leaves.send((session, reason));
        }
    }

    /// For messages that must not be lost (shutting down): waits for room in the queue.
    pub fn command_blocking_ok(&self, input: ShardInput) {
        let _ = self.tx.send(input);
    }
}

/// The queues a shard reads before each input of its main one.
pub(crate) struct SideLanes {
    pub leaves: Receiver<(SessionId, LeaveReason)>,
    pub handshakes: Receiver<Datagrams>,
    /// A wake-up marker for the handshake lane is in the main queue (one at a time).
    pub marked: Arc<AtomicBool>,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::mpsc::{channel, sync_channel};

    use super::*;
    use crate::io::DatagramPool;

    #[test]
    fn ending_a_session_never_waits_for_a_full_queue() {
        let (tx, rx) = sync_channel(1);
        let (leaves, leaves_rx) = channel();
        let (handshakes, _) = sync_channel(1);
        let sender = ShardSender {
            tx,
            sessions: Default::default(),
            joining: Default::default(),
            load: Default::default(),
            queued: Default::default(),
            queue_limit: 1,
            leaves,
            handshakes,
            lane_marked: Default::default(),
            sdp: SdpQueue { queued: Default::default(), limit: 1 },
        };
        sender.command(ShardInput::Shutdown).expect("room for one");
        // With the queue full, a blocking send would wait here for the shard forever.
        sender.end(7, LeaveReason::Disconnected);
        assert_eq!(leaves_rx.try_recv().ok(), Some((7, LeaveReason::Disconnected)), "on the side channel");
        assert!(matches!(rx.try_recv(), Ok(ShardInput::Shutdown)));
        sender.end(8, LeaveReason::Left);
        assert!(matches!(rx.try_recv(), Ok(ShardInput::Leave { session: 8, reason: LeaveReason::Left })));
    }

    #[test]
    fn handshakes_get_in_while_the_media_queue_is_full() {
        let (tx, rx) = sync_channel(1);
        let (handshakes, handshakes_rx) = sync_channel(1);
        let pool = DatagramPool::default();
        let sender = ShardSender {
            tx,
            sessions: Default::default(),
            joining: Default::default(),
            load: Default::default(),
            queued: Arc::new(AtomicUsize::new(0)),
            queue_limit: 1,
            leaves: channel().0,
            handshakes,
            lane_marked: Default::default(),
            sdp: SdpQueue { queued: Default::default(), limit: 1 },
        };
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let batch = |data: &[u8]| {
            let mut b = pool.take_for_test();
            b.push_for_test(from, data);
            b
        };
        assert!(matches!(sender.datagrams(batch(&[0x80, 96])), Delivery::Queued));
        assert!(matches!(sender.datagrams(batch(&[0x80, 96])), Delivery::Full(_)), "media waits its turn");
        // A DTLS record still gets in, ahead of the media; the wake-up marker found no room.
        assert!(matches!(sender.handshakes(batch(&[22, 0xfe, 0xfd])), Delivery::Queued));
        assert!(matches!(rx.try_recv(), Ok(ShardInput::Datagrams(_))));
        assert!(rx.try_recv().is_err(), "no marker: the busy shard reads the lane before each input");
        assert_eq!(handshakes_rx.try_recv().map(|b| b.len()).ok(), Some(1));
        // Its own bound is counted apart.
        assert!(matches!(sender.handshakes(batch(&[0, 1])), Delivery::Queued));
        assert!(matches!(rx.try_recv(), Ok(ShardInput::Handshakes)), "an idle shard is woken");
        assert!(matches!(sender.handshakes(batch(&[0, 1])), Delivery::Full(_)));
        // One marker at a time: none more until the shard has read the lane.
        assert!(handshakes_rx.try_recv().is_ok());
        assert!(matches!(sender.handshakes(batch(&[0, 1])), Delivery::Queued));
        assert!(rx.try_recv().is_err(), "the first marker is still unread");
        sender.lane_marked.store(false, Ordering::Release);
        assert!(handshakes_rx.try_recv().is_ok());
        assert!(matches!(sender.handshakes(batch(&[0, 1])), Delivery::Queued));
        assert!(matches!(rx.try_recv(), Ok(ShardInput::Handshakes)));
    }
}
