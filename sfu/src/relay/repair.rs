//! Loss repair on a relay link, at the child: which packets a flow skipped, asked for again
//! (NACK) until they come or are too old to be worth it. A retransmission can be lost on
//! the same link as the packet it repairs, so one request is not enough.

use std::time::{Duration, Instant};

use crate::fasthash::FastMap;

/// A gap wider than this is a restart of the stream, not loss worth asking for.
const MAX_GAP: u16 = 64;
/// Asked again when nothing came this long after the last request.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Requests per packet at most (the first one included).
const MAX_TRIES: u8 = 3;
/// Older than this a packet is late for any player: no more requests.
const GIVE_UP: Duration = Duration::from_secs(1);
/// Packets waited for per flow at most; beyond, the oldest are given up.
const MAX_MISSING: usize = 256;

struct Missing {
    seq: u16,
    since: Instant,
    asked: Instant,
    tries: u8,
}

/// One flow: the next sequence number expected, and what it still waits for.
struct Flow {
    next: u16,
    missing: Vec<Missing>,
}

#[derive(Default)]
pub(crate) struct Repair {
    flows: FastMap<u64, Flow>,
}

impl Repair {
    /// A packet of `flow` arrived: the sequence numbers it shows were skipped, to ask for now.
    pub fn arrived(&mut self, flow: u64, seq: u16, now: Instant) -> Vec<u16> {
        let f = self.flows.entry(flow).or_insert_with(|| Flow { next: seq, missing: Vec::new() });
        if !f.missing.is_empty() {
            f.missing.retain(|m| m.seq != seq);
        }
        let gap = seq.wrapping_sub(f.next);
        if gap >= 0x8000 {
            return Vec::new(); // an older packet: a retransmission, or reordered
        }
        let skipped: Vec<u16> = if gap > 0 && gap <= MAX_GAP {
            (0..gap).map(|i| f.next.wrapping_add(i)).collect()
        } else {
            Vec::new()
        };
        f.next = seq.wrapping_add(1);
        if !skipped.is_empty() {
            f.missing.extend(skipped.iter().map(|&seq| Missing { seq, since: now, asked: now, tries: 1 }));
            let over = f.missing.len().saturating_sub(MAX_MISSING);
            f.missing.drain(..over);
        }
        skipped
    }

    /// What to ask for again now, per flow; packets asked for too often or too long ago are
    /// given up.
    pub fn due(&mut self, now: Instant) -> Vec<(u64, Vec<u16>)> {
        let mut out = Vec::new();
        for (flow, f) in self.flows.iter_mut().filter(|(_, f)| !f.missing.is_empty()) {
            f.missing.retain(|m| m.tries < MAX_TRIES && now.duration_since(m.since) < GIVE_UP);
            let mut again = Vec::new();
            for m in f.missing.iter_mut().filter(|m| now.duration_since(m.asked) >= RETRY_AFTER) {
                m.asked = now;
                m.tries += 1;
                again.push(m.seq);
            }
            if !again.is_empty() {
                out.push((*flow, again));
            }
        }
        out
    }

    /// Packets of `flow` still waited for.
    #[cfg(test)]
    fn waiting(&self, flow: u64) -> usize {
        self.flows.get(&flow).map_or(0, |f| f.missing.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_packet_is_asked_for_again_until_it_comes() {
        let mut r = Repair::default();
        let t0 = Instant::now();
        assert!(r.arrived(7, 100, t0).is_empty(), "the first packet sets the start");
        assert_eq!(r.arrived(7, 103, t0), vec![101, 102], "a jump: ask at once");
        assert!(r.due(t0 + Duration::from_millis(50)).is_empty(), "not yet");
        assert_eq!(r.due(t0 + Duration::from_millis(120)), vec![(7, vec![101, 102])], "nothing came: again");
        assert!(r.arrived(7, 101, t0 + Duration::from_millis(130)).is_empty(), "a retransmission");
        assert_eq!(
            r.due(t0 + Duration::from_millis(240)),
            vec![(7, vec![102])],
            "only what is still missing"
        );
        assert!(r.due(t0 + Duration::from_millis(360)).is_empty(), "three requests, then given up");
        assert_eq!(r.waiting(7), 0);
    }

    #[test]
    fn restarts_old_packets_and_bounds() {
        let mut r = Repair::default();
        let t0 = Instant::now();
        r.arrived(1, 10, t0);
        assert!(r.arrived(1, 11 + MAX_GAP + 1, t0).is_empty(), "a restart is not loss");
        assert!(r.arrived(1, 5, t0).is_empty(), "an old packet asks for nothing");
        r.arrived(2, 0, t0);
        for i in 0..20u16 {
            r.arrived(2, (i + 1) * 60, t0);
        }
        assert_eq!(r.waiting(2), MAX_MISSING, "at most MAX_MISSING wait per flow");
        assert!(r.due(t0 + GIVE_UP).is_empty(), "too old to ask for");
        assert_eq!(r.waiting(2), 0);
        assert_eq!(r.arrived(3, u16::MAX, t0), Vec::<u16>::new());
        assert_eq!(r.arrived(3, 1, t0), vec![0], "across the wrap");
    }
}
