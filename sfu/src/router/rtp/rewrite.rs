//! Rewrites a source's RTP sequence numbers and timestamps into one continuous outgoing
//! stream per subscriber, so a subscriber's decoder never sees a jump when the source
//! restarts, changes SSRC, or (later) switches simulcast layer.

/// Extends 16-bit RTP sequence numbers to 64 bits, tolerating reordering.
#[derive(Debug, Default, Clone)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// The extended value of `seq`: the candidate closest to the highest seen so far.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start one cycle up so early reordered packets cannot go below zero.
            let ext = (1 << 16) + seq as u64;
            self.highest = Some(ext);
            return ext;
        };
        let cycle = highest & !0xffff;
        let candidates = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
        let ext = candidates
            .into_iter()
            .map(|c| c.wrapping_add(seq as u64))
            .filter(|c| *c < u64::MAX >> 1)
            .min_by_key(|c| c.abs_diff(highest))
            .unwrap_or(cycle + seq as u64);
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }
}

/// A packet numbered this far behind the newest one sent is no reordering or late repair
/// (a retransmission can come a few hundred packets late on a top video layer).
const MAX_MISORDER: u64 = 1000;
/// A source that fed this stream nothing for this long and comes back numbered at or
/// behind what was sent has resumed (a pause, a top-N deselection), not sent late packets.
const RESUMED_AFTER_MS: u64 = 1000;

/// What the rewriter decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Outgoing extended sequence number (starts below 65536, as str0m expects).
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
}

/// Per-subscription sequence and timestamp rewriting across source switches.
#[derive(Debug, Clone)]
pub struct RtpRewriter {
    source: Option<u32>,
    /// The source before the current one: its late packets are stale, not a switch back.
    retired: Option<u32>,
    extender: SeqExtender,
    /// Extended source sequence of the first packet taken from the current source.
    source_base: u64,
    seq_offset: i64,
    ts_offset: u32,
    last_out_seq: Option<u64>,
    last_out_ts: u32,
    /// Arrival time (ms) and outgoing timestamp of the newest packet, to carry time across a switch.
    last_arrival_ms: u64,
    clock_rate: u32,
}

impl RtpRewriter {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            source: None,
            retired: None,
            extender: SeqExtender::default(),
            source_base: 0,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: None,
            last_out_ts: 0,
            last_arrival_ms: 0,
            clock_rate,
        }
    }

    /// The forwarder chose `ssrc` as the source from now on (a layer switch at a
    /// keyframe): it is taken even if it is the source switched away from last time.
    pub fn allow(&mut self, ssrc: u32) {
        if self.retired == Some(ssrc) {
            self.retired = None;
        }
    }

    /// The stream will carry another track: any source may start it.
    pub fn forget_retired(&mut self) {
        self.retired = None;
    }

    /// Rewrite one packet from source `ssrc`. `arrival_ms` is a monotonic receive time.
    /// Returns `None` for a stale packet of a source we already switched away from, or a
    /// packet older than the switch point.
    pub fn rewrite(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival_ms: u64) -> Option<Rewritten> {
        if self.source != Some(ssrc) {
            if self.retired == Some(ssrc) {
                return None;
            }
            self.switch_to(ssrc, seq, timestamp, arrival_ms);
        }
        let mut ext = self.extender.extend(seq);
        // A source that resumes after a pause (a bandwidth pause, a top-N deselection,
        // packets skipped for a codec the subscriber lacks) starts again at one past the
        // last number sent: ahead, the subscriber would take the jump for loss and NACK it;
        // behind (a gap whose length mod 2^16 falls past half the space), the SRTP fast path
        // would seal new content under a used nonce. A stream that merely went quiet with
        // its numbers running on (audio DTX) is not re-based.
        let discontinuous = ext < self.source_base
            || self.last_out_seq.is_some_and(|last| ext as i64 + self.seq_offset != last as i64 + 1);
        if discontinuous && arrival_ms.saturating_sub(self.last_arrival_ms) >= RESUMED_AFTER_MS {
            let retired = self.retired;
            self.switch_to(ssrc, seq, timestamp, arrival_ms);
            self.retired = retired;
            ext = self.extender.extend(seq);
        }
        if ext < self.source_base {
            return None;
        }
        let out_seq = (ext as i64 + self.seq_offset) as u64;
        if self.last_out_seq.is_some_and(|last| last > out_seq + MAX_MISORDER) {
            return None;
        }
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        if self.last_out_seq.is_none_or(|last| out_seq > last) {
            self.last_out_seq = Some(out_seq);
            self.last_out_ts = out_ts;
            self.last_arrival_ms = arrival_ms;
        }
        Some(Rewritten { seq: out_seq, timestamp: out_ts })
    }

    /// The number of the next outgoing packet after a switch: one past the last sent.
    fn switch_to(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival_ms: u64) {
        self.retired = self.source;
        self.source = Some(ssrc);
        self.extender = SeqExtender::default();
        let first_ext = self.extender.extend(seq);
        self.source_base = first_ext;
        let next_out = self.last_out_seq.map(|s| s + 1).unwrap_or(seq as u64);
        self.seq_offset = next_out as i64 - first_ext as i64;
        self.ts_offset = match self.last_out_seq {
            None => 0,
            Some(_) => {
                // Advance the outgoing clock by the wall time that passed, at least one tick,
                // so the decoder sees time moving forward.
                let elapsed_ms = arrival_ms.saturating_sub(self.last_arrival_ms);
                let ticks = (elapsed_ms * self.clock_rate as u64 / 1000).max(1) as u32;
                self.last_out_ts.wrapping_add(ticks).wrapping_sub(timestamp)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extender_handles_wrap_and_reordering() {
        let mut e = SeqExtender::default();
        let a = e.extend(65534);
        assert_eq!(e.extend(65535), a + 1);
        assert_eq!(e.extend(0), a + 2);
        assert_eq!(e.extend(65535), a + 1, "late packet from before the wrap");
        assert_eq!(e.extend(1), a + 3);
    }

    #[test]
    fn passes_through_a_single_source_unchanged_in_order() {
        let mut r = RtpRewriter::new(90_000);
        let p1 = r.rewrite(1, 100, 9000, 0).unwrap();
        let p2 = r.rewrite(1, 101, 12000, 33).unwrap();
        assert_eq!(p2.seq, p1.seq + 1);
        assert_eq!(p2.timestamp.wrapping_sub(p1.timestamp), 3000);
        assert!(p1.seq < 65536, "str0m wants a first extended seq below 2^16");
    }

    #[test]
    fn continuous_across_source_switch() {
        let mut r = RtpRewriter::new(90_000);
        let mut last = None;
        for i in 0..10u16 {
            last = r.rewrite(1, 5000 + i, 1_000_000 + i as u32 * 3000, i as u64 * 33);
        }
        let last = last.unwrap();
        // The source restarts with a new SSRC, a random sequence and timestamp, 100 ms later.
        let first_new = r.rewrite(2, 40_000, 77, 9 * 33 + 100).unwrap();
        assert_eq!(first_new.seq, last.seq + 1);
        assert_eq!(first_new.timestamp.wrapping_sub(last.timestamp), 9000, "100 ms at 90 kHz");
        let second_new = r.rewrite(2, 40_001, 77 + 3000, 9 * 33 + 133).unwrap();
        assert_eq!(second_new.seq, last.seq + 2);
        assert_eq!(second_new.timestamp.wrapping_sub(first_new.timestamp), 3000);
        // A late packet of the old source is dropped, not mapped onto the new numbering.
        assert_eq!(r.rewrite(1, 5010, 1_030_000, 400), None);
    }

    #[test]
    fn continuous_across_16_bit_wrap_of_source_and_switch() {
        let mut r = RtpRewriter::new(48_000);
        let a = r.rewrite(7, 65_535, u32::MAX - 959, 0).unwrap();
        let b = r.rewrite(7, 0, 0, 20).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(960));
        let c = r.rewrite(8, 65_535, 5, 40).unwrap();
        let d = r.rewrite(8, 0, 965, 60).unwrap();
        assert_eq!(c.seq, b.seq + 1);
        assert_eq!(d.seq, b.seq + 2);
        assert_eq!(d.timestamp.wrapping_sub(c.timestamp), 960);
    }

    #[test]
    fn reordered_packet_keeps_its_place_and_packets_before_switch_point_drop() {
        let mut r = RtpRewriter::new(90_000);
        let first = r.rewrite(1, 10, 0, 0).unwrap();
        let third = r.rewrite(1, 12, 0, 1).unwrap();
        let second = r.rewrite(1, 11, 0, 2).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert_eq!(third.seq, first.seq + 2);
        assert_eq!(r.rewrite(1, 9, 0, 3), None, "older than the first packet taken");
    }

    #[test]
    fn a_source_resuming_after_a_long_pause_never_reuses_sent_numbers() {
        // Gaps whose length mod 2^16 falls past half the space extend to numbers behind the
        // last sent; also a gap of almost exactly 2^16, which lands just behind it.
        for gap in [40_000u32, 32_768, 65_500, 65_535, 500, 20_000] {
            let mut r = RtpRewriter::new(90_000);
            let mut sent = Vec::new();
            for i in 0..10u32 {
                sent.push(r.rewrite(1, (1_000 + i) as u16, i * 3000, i as u64 * 33).unwrap().seq);
            }
            let last = *sent.last().unwrap();
            // The sink was paused for a minute while the source went on numbering.
            let resumed = r.rewrite(1, (1_009 + gap) as u16, 0, 60_000).expect("forwarded");
            assert_eq!(resumed.seq, last + 1, "gap {gap}: continues after the last sent, no jump to NACK");
            let next = r.rewrite(1, (1_010 + gap) as u16, 3000, 60_033).unwrap();
            assert_eq!(next.seq, last + 2, "gap {gap}");
        }
    }

    #[test]
    fn a_quiet_stream_whose_numbers_ran_on_is_not_rebased() {
        // Audio with DTX sends nothing for a while but numbers without gaps.
        let mut r = RtpRewriter::new(48_000);
        let first = r.rewrite(1, 100, 0, 0).unwrap();
        let after_silence = r.rewrite(1, 101, 48_000 * 3, 3_000).unwrap();
        assert_eq!(after_silence.seq, first.seq + 1);
        assert_eq!(after_silence.timestamp, first.timestamp.wrapping_add(48_000 * 3), "timestamps untouched");
    }

    #[test]
    fn a_packet_far_behind_without_a_pause_is_dropped() {
        let mut r = RtpRewriter::new(90_000);
        for i in 0..3000u16 {
            r.rewrite(1, 5_000 + i, 0, i as u64 / 10).unwrap();
        }
        assert_eq!(r.rewrite(1, 5_000 + 1500, 0, 301), None, "1,500 behind: not a reordering");
        assert!(r.rewrite(1, 5_000 + 2500, 0, 302).is_some(), "500 behind: a late repair keeps its place");
    }

    #[test]
    fn outgoing_extended_seq_grows_past_65535() {
        let mut r = RtpRewriter::new(90_000);
        let start = r.rewrite(1, 60_000, 0, 0).unwrap().seq;
        let mut last = start;
        for i in 1..10_000u32 {
            last = r.rewrite(1, (60_000 + i) as u16, 0, i as u64).unwrap().seq;
        }
        assert_eq!(last, start + 9_999);
        assert!(last > 65_535);
    }

    #[test]
    fn switching_back_to_an_earlier_source_when_the_forwarder_says_so() {
        // Layer h (ssrc 2) -> q (ssrc 1) -> h again: the third leg must flow.
        let mut r = RtpRewriter::new(90_000);
        let a = r.rewrite(2, 100, 1000, 0).unwrap();
        r.allow(1);
        let b = r.rewrite(1, 500, 7000, 33).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(r.rewrite(2, 101, 4000, 34), None, "a late h packet after the switch is stale");
        r.allow(2);
        let c = r.rewrite(2, 102, 7000, 66).expect("switching back is allowed");
        assert_eq!(c.seq, b.seq + 1);
        assert!(c.timestamp.wrapping_sub(b.timestamp) > 0 && c.timestamp.wrapping_sub(b.timestamp) < 1 << 31);
    }
}
