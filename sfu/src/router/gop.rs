//! The keyframe cache of a broadcast's video (ADR 0012): per layer, the last keyframe and
//! every packet after it, so a new viewer starts at once from there (then live) instead of
//! waiting for the next keyframe or a round trip to the publisher.

use super::forward::SourcePacket;

/// A group of pictures longer than this is not kept (a publisher that sends keyframes
/// only when asked): viewers then ask for a keyframe, as in a meeting.
const MAX_PACKETS: usize = 2048;
const MAX_BYTES: usize = 2 << 20;

/// One layer's packets since its last keyframe.
#[derive(Default)]
pub struct Gop {
    packets: Vec<SourcePacket>,
    bytes: usize,
    /// The packets start at a keyframe and none since is missing from the cache.
    valid: bool,
    /// The sequence number the next packet must have for the group to stay whole.
    next_seq: u16,
}

impl Gop {
    /// A packet of the layer, in arrival order; `keyframe` when it starts a keyframe.
    pub fn record(&mut self, packet: &SourcePacket, keyframe: bool) {
        // A keyframe of several packets that each say so (H.264's parameter sets, then
        // the IDR) is one picture: its packets share a timestamp.
        if keyframe && self.packets.first().is_none_or(|first| first.timestamp != packet.timestamp) {
            self.packets.clear();
            self.bytes = 0;
            self.valid = true;
            self.next_seq = packet.seq;
        }
        if !self.valid {
            return;
        }
        if packet.seq != self.next_seq {
            // A gap or a late packet: a viewer started from here would decode garbage.
            self.forget();
            return;
        }
        self.next_seq = packet.seq.wrapping_add(1);
        if self.packets.len() >= MAX_PACKETS || self.bytes + packet.payload.len() > MAX_BYTES {
            self.forget();
            return;
        }
        self.bytes += packet.payload.len();
        self.packets.push(packet.clone());
    }

    /// The packets to start a viewer from, keyframe first; None when there is no whole
    /// group to give.
    pub fn packets(&self) -> Option<&[SourcePacket]> {
        (self.valid && !self.packets.is_empty()).then_some(&self.packets[..])
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn forget(&mut self) {
        self.packets = Vec::new();
        self.bytes = 0;
        self.valid = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn packet(seq: u16, timestamp: u32, len: usize) -> SourcePacket {
        SourcePacket {
            ssrc: 1,
            seq,
            timestamp,
            marker: false,
            pt: 96,
            payload: vec![0; len].into(),
            audio_level: None,
            voice_activity: None,
            arrival: Instant::now(),
        }
    }

    #[test]
    fn it_keeps_from_the_last_keyframe_on() {
        let mut gop = Gop::default();
        gop.record(&packet(1, 100, 10), false);
        assert!(gop.packets().is_none(), "nothing before a keyframe");
        gop.record(&packet(2, 200, 10), true);
        gop.record(&packet(3, 200, 10), true);
        gop.record(&packet(4, 300, 10), false);
        let seqs: Vec<u16> = gop.packets().expect("a group").iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [2, 3, 4], "a keyframe's packets with one timestamp are one picture");
        gop.record(&packet(5, 400, 10), true);
        assert_eq!(gop.packets().map(|p| p.len()), Some(1), "a new keyframe starts again");
    }

    #[test]
    fn a_gap_spoils_the_group_until_the_next_keyframe() {
        let mut gop = Gop::default();
        gop.record(&packet(10, 100, 10), true);
        gop.record(&packet(12, 200, 10), false);
        assert!(gop.packets().is_none(), "packet 11 is missing");
        gop.record(&packet(11, 150, 10), false);
        assert!(gop.packets().is_none(), "a late packet does not mend it");
        gop.record(&packet(13, 300, 10), true);
        assert_eq!(gop.packets().map(|p| p.len()), Some(1));
    }

    #[test]
    fn a_group_too_long_is_dropped_until_the_next_keyframe() {
        let mut gop = Gop::default();
        gop.record(&packet(0, 0, 1000), true);
        for seq in 1..MAX_PACKETS as u16 + 1 {
            gop.record(&packet(seq, u32::from(seq), 10), false);
        }
        assert!(gop.packets().is_none());
        gop.record(&packet(9000, 1, 10), false);
        assert!(gop.packets().is_none(), "still not whole");
        gop.record(&packet(9001, 2, 10), true);
        assert!(gop.packets().is_some());
    }
}
