//! The measurement maths: per-stream delivery with reordering and duplicates, sequence
//! extension across wrap, interarrival jitter (RFC 3550), and latency percentiles from
//! a fixed-bucket histogram (no allocation per packet).

/// Nearest-rank percentile (p in 0..=100) of unsorted values; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// A packet's offset in the measurement window of its stream, whose first packet had
/// sequence `first`; None for packets from before the window. Wraps at 2^32.
pub fn window_index(seq: u32, first: u32) -> Option<u64> {
    let d = seq.wrapping_sub(first);
    (d < 1 << 31).then_some(d as u64)
}

/// Which packets of one stream a receiver got inside the measurement window, counted
/// once each however often they arrive.
#[derive(Debug, Default, Clone)]
pub struct DeliveryCounter {
    bits: Vec<u64>,
    received: u64,
    duplicates: u64,
    /// Indexes that start a run whatever the gap before them (the receiver came back to
    /// this stream from another one).
    run_starts: Vec<u64>,
}

impl DeliveryCounter {
    /// Record packet `index` (its offset from the window's first sequence number).
    pub fn record(&mut self, index: u64) {
        let word = (index / 64) as usize;
        if word >= self.bits.len() {
            // Bounded by the window: a few thousand packets per stream per minute.
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        if self.bits[word] & bit != 0 {
            self.duplicates += 1;
        } else {
            self.bits[word] |= bit;
            self.received += 1;
        }
    }

    /// Packet `index` starts a new run: what is missing just before it was not lost.
    pub fn start_run(&mut self, index: u64) {
        // Bounded by the layer switches of one track in one window.
        self.run_starts.push(index);
    }

    /// Unique packets received with index below `expected`.
    pub fn received_of(&self, expected: u64) -> u64 {
        let full = (expected / 64) as usize;
        let mut n: u64 = self.bits.iter().take(full).map(|w| w.count_ones() as u64).sum();
        let rest = expected % 64;
        if rest > 0
            && let Some(w) = self.bits.get(full)
        {
            n += (w & ((1u64 << rest) - 1)).count_ones() as u64;
        }
        n
    }

    /// The lowest and highest index received.
    pub fn span(&self) -> Option<(u64, u64)> {
        let first_word = self.bits.iter().position(|w| *w != 0)?;
        let last_word = self.bits.iter().rposition(|w| *w != 0)?;
        let first = first_word as u64 * 64 + self.bits[first_word].trailing_zeros() as u64;
        let last = last_word as u64 * 64 + 63 - self.bits[last_word].leading_zeros() as u64;
        Some((first, last))
    }

    /// The received indexes in ascending order.
    fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, w)| {
            let mut w = *w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as u64;
                    w &= w - 1;
                    i as u64 * 64 + bit
                })
            })
        })
    }

    /// The stretches in which the stream was received: (first, last) index of each run of
    /// received packets, a new run starting after more than `max_gap` missing packets or
    /// at an index marked with [`DeliveryCounter::start_run`].
    pub fn runs(&self, max_gap: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for index in self.indexes() {
            match runs.last_mut() {
                Some((_, last)) if index - *last - 1 <= max_gap && !self.run_starts.contains(&index) => {
                    *last = index
                }
                _ => runs.push((index, index)),
            }
        }
        runs
    }

    /// Packets the runs span (received or lost inside them), and those received.
    pub fn within_runs(&self, max_gap: u64) -> (u64, u64) {
        let spanned = self.runs(max_gap).iter().map(|(first, last)| last - first + 1).sum();
        (spanned, self.received)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn unique(&self) -> u64 {
        self.received
    }
}

/// RFC 3550 interarrival jitter, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Jitter {
    last: Option<(u64, u64)>,
    jitter_us: f64,
}

impl Jitter {
    pub fn record(&mut self, sent_us: u64, received_us: u64) {
        if let Some((s, r)) = self.last {
            let d = (received_us as i64 - r as i64) - (sent_us as i64 - s as i64);
            self.jitter_us += (d.unsigned_abs() as f64 - self.jitter_us) / 16.0;
        }
        self.last = Some((sent_us, received_us));
    }

    pub fn ms(&self) -> f64 {
        self.jitter_us / 1000.0
    }
}

/// Latency histogram: 50 us buckets up to 100 ms, 1 ms buckets up to 10 s beyond.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    fine: Vec<u64>,
    coarse: Vec<u64>,
    count: u64,
    max_us: u64,
}

const FINE_US: u64 = 50;
const FINE_BUCKETS: usize = 2000;
const COARSE_US: u64 = 1000;
const COARSE_BUCKETS: usize = 9900;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { fine: vec![0; FINE_BUCKETS], coarse: vec![0; COARSE_BUCKETS + 1], count: 0, max_us: 0 }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        self.count += 1;
        self.max_us = self.max_us.max(us);
        let fine = (us / FINE_US) as usize;
        if fine < FINE_BUCKETS {
            self.fine[fine] += 1;
        } else {
            let coarse = ((us - FINE_BUCKETS as u64 * FINE_US) / COARSE_US) as usize;
            self.coarse[coarse.min(COARSE_BUCKETS)] += 1;
        }
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.fine.iter_mut().zip(&other.fine) {
            *a += b;
        }
        for (a, b) in self.coarse.iter_mut().zip(&other.coarse) {
            *a += b;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }

    /// The upper edge of the bucket holding the p-th percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.fine.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(((i as u64 + 1) * FINE_US).min(self.max_us) as f64 / 1000.0);
            }
        }
        for (i, n) in self.coarse.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let edge = FINE_BUCKETS as u64 * FINE_US + (i as u64 + 1) * COARSE_US;
                return Some(edge.min(self.max_us) as f64 / 1000.0);
            }
        }
        Some(self.max_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn delivery_counts_reordered_packets_once_and_ignores_duplicates() {
        let mut d = DeliveryCounter::default();
        for i in [0, 2, 1, 3, 3, 2, 5, 7, 6] {
            d.record(i);
        }
        assert_eq!(d.unique(), 7);
        assert_eq!(d.duplicates(), 2);
        assert_eq!(d.received_of(8), 7, "4 is missing");
        assert_eq!(d.received_of(4), 4);
        assert_eq!(d.received_of(0), 0);
        assert_eq!(d.span(), Some((0, 7)));
        assert_eq!(DeliveryCounter::default().span(), None);
        d.record(200);
        assert_eq!(d.span(), Some((0, 200)));
        assert_eq!(d.received_of(8), 7, "packets beyond the window do not count");
        assert_eq!(d.received_of(201), 8);
    }

    #[test]
    fn runs_split_at_long_gaps_and_count_losses_inside() {
        let mut d = DeliveryCounter::default();
        assert!(d.runs(10).is_empty());
        assert_eq!(d.within_runs(10), (0, 0));
        // 0..=99 with 50 lost, then nothing for 11 packets, then 111..=199 with two lost,
        // then a gap of exactly 10, then 210..=300.
        for i in (0..=99).chain(111..=199).chain(210..=300) {
            if i != 50 && i != 150 && i != 151 {
                d.record(i);
            }
        }
        assert_eq!(d.runs(10), vec![(0, 99), (111, 300)], "a gap of 10 keeps a run, 11 splits it");
        // Spanned: 100 + 190; missing inside: 50, 150, 151 and the 10 of 200..=209.
        assert_eq!(d.within_runs(10), (290, 290 - 13));
        assert_eq!(d.runs(0).len(), 5, "any gap splits when none is allowed");
        let (spanned, got) = d.within_runs(0);
        assert_eq!(spanned, got, "runs without gaps lose nothing");
        // Indexes at word edges.
        let mut d = DeliveryCounter::default();
        for i in [63, 64, 127, 128, 1000] {
            d.record(i);
        }
        assert_eq!(d.runs(100), vec![(63, 128), (1000, 1000)]);
        // Coming back from another layer starts a run however short the gap.
        let mut d = DeliveryCounter::default();
        for i in (0..10).chain(15..20).chain(25..30) {
            d.record(i);
        }
        d.start_run(15);
        assert_eq!(d.runs(100), vec![(0, 9), (15, 29)]);
        assert_eq!(d.within_runs(100), (25, 20), "the gap before 15 is not lost, the one after is");
    }

    #[test]
    fn window_index_across_sequence_wrap() {
        assert_eq!(window_index(10, 10), Some(0));
        assert_eq!(window_index(15, 10), Some(5));
        assert_eq!(window_index(9, 10), None, "sent before the window");
        let first = u32::MAX - 1;
        assert_eq!(window_index(u32::MAX, first), Some(1));
        assert_eq!(window_index(0, first), Some(2));
        assert_eq!(window_index(3, first), Some(5));
        assert_eq!(window_index(first - 1, first), None);
    }

    #[test]
    fn jitter_is_zero_for_steady_flow_and_grows_with_variation() {
        let mut j = Jitter::default();
        for i in 0..100u64 {
            j.record(i * 20_000, i * 20_000 + 5_000);
        }
        assert!(j.ms() < 1e-9);
        let mut j = Jitter::default();
        for i in 0..1000u64 {
            let wobble = if i % 2 == 0 { 0 } else { 4_000 };
            j.record(i * 20_000, i * 20_000 + wobble);
        }
        assert!((j.ms() - 4.0).abs() < 0.3, "alternating 4 ms delay: {}", j.ms());
    }

    #[test]
    fn histogram_percentiles_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(us * 10); // 10 us .. 10 ms
        }
        let p50 = h.percentile_ms(50.0).unwrap();
        assert!((p50 - 5.0).abs() <= 0.05, "{p50}");
        let p99 = h.percentile_ms(99.0).unwrap();
        assert!((p99 - 9.9).abs() <= 0.05, "{p99}");
        assert_eq!(h.max_ms(), 10.0);
        h.record(250_000);
        assert_eq!(h.percentile_ms(100.0), Some(250.0));
        let mut other = LatencyHistogram::default();
        other.record(1_000);
        h.merge(&other);
        assert_eq!(h.count(), 1002);
        assert_eq!(LatencyHistogram::default().percentile_ms(50.0), None);
    }
}
