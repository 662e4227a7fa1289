//! A subscriber session's send-side bandwidth estimate, from the transport-wide feedback
//! on what the fast path sent it (ADR 0025). Delay based, after the shape of Google's
//! congestion control (draft-ietf-rmcat-gcc-02): packets are grouped by send time, the
//! growth of each group's queuing delay is smoothed into a trend, and a trend above an
//! adaptive threshold is overuse; the rate then drops below what the receiver got, holds
//! while the queue drains, and grows again while there is no overuse (slowly near the rate
//! where it last fell, faster away from it). Loss above 20% cuts the rate too; between 5%
//! and 20% it may not grow. Sans-IO: times are microseconds on the caller's clock.

use std::collections::VecDeque;

use super::twcc::Report;

/// Sent packets kept for their feedback (several seconds at a grid's rate).
const KEEP: usize = 16_384;
/// Packets sent within this of a group's first belong to the group.
const GROUP_US: u64 = 5_000;
/// Points in the delay trend's regression window.
const TREND_WINDOW: usize = 20;
const TREND_SMOOTHING: f64 = 0.9;
const TREND_GAIN: f64 = 4.0;
/// What the rate drops to, against what the receiver got, on overuse.
const BACKOFF: f64 = 0.85;
/// Growth per second away from the rate of the last drop, and near it.
const FAST_GROWTH: f64 = 0.08;
const NEAR_GROWTH_BPS: f64 = 60_000.0;
const MAX_GROWTH: f64 = 0.25;
/// The estimate never goes beyond this over what the receiver got (plus a floor), so an
/// application-limited path's estimate follows what is sent (the allocator keeps what it
/// allocated while the estimate is at or above the send rate).
const ACKED_HEADROOM: f64 = 1.5;
const MIN_BPS: f64 = 50_000.0;
const MAX_BPS: f64 = 100_000_000.0;
/// The receive rate is measured over this much of the receiver's clock.
const ACKED_WINDOW_US: i64 = 500_000;
/// A receive time this far behind the last one is a new time line, not reordering.
const CLOCK_JUMP_US: i64 = 10_000_000;
/// For this long after a fall the estimate grows no further than 1.5 times what got
/// through; then freely (at the growth rate), so that a layer upgrade can be tried.
const CEILING_FOR_US: u64 = 10_000_000;
/// Loss is judged over at least this many reported packets.
const LOSS_MIN_PACKETS: u32 = 100;
/// Loss above this cuts the rate; above `LOSS_HOLD` it may not grow. A queue that
/// overflows shows as delay first (the delay signal acts on it); loss alone, without
/// delay, is mostly a lossy radio link, where NACK repairs 10% and cutting the rate
/// would not lower it.
const LOSS_CUT: f64 = 0.2;
const LOSS_HOLD: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Normal,
    Overusing,
    Underusing,
}

#[derive(Clone, Copy)]
struct Sent {
    at_us: u64,
    size: u16,
    state: Fate,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Unreported,
    Lost,
    Received,
}

#[derive(Clone, Copy)]
struct Group {
    first_send: u64,
    last_send: u64,
    last_recv: i64,
}

/// The delay trend and its overuse detector.
struct Trend {
    accumulated_ms: f64,
    smoothed_ms: f64,
    first_arrival: Option<i64>,
    points: VecDeque<(f64, f64)>,
    deltas: u32,
    threshold: f64,
    last_update_ms: Option<f64>,
    over_ms: f64,
    over_count: u32,
    previous_trend: f64,
    signal: Signal,
}

impl Trend {
    fn new() -> Self {
        Self {
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            first_arrival: None,
            points: VecDeque::with_capacity(TREND_WINDOW),
            deltas: 0,
            threshold: 12.5,
            last_update_ms: None,
            over_ms: -1.0,
            over_count: 0,
            previous_trend: 0.0,
            signal: Signal::Normal,
        }
    }

    /// One group's delay growth over the group before it (`send_delta_ms` apart when
    /// sent), arriving at `arrival_us`.
    fn update(&mut self, delay_ms: f64, send_delta_ms: f64, arrival_us: i64) {
        self.deltas = (self.deltas + 1).min(1000);
        self.accumulated_ms += delay_ms;
        self.smoothed_ms = TREND_SMOOTHING * self.smoothed_ms + (1.0 - TREND_SMOOTHING) * self.accumulated_ms;
        let first = *self.first_arrival.get_or_insert(arrival_us);
        let x = (arrival_us - first) as f64 / 1000.0;
        if self.points.len() == TREND_WINDOW {
            self.points.pop_front();
        }
        self.points.push_back((x, self.smoothed_ms));
        if self.points.len() < TREND_WINDOW {
            return;
        }
        let slope = slope(&self.points).unwrap_or(self.previous_trend);
        let modified = f64::from(self.deltas.min(60)) * slope * TREND_GAIN;
        self.detect(modified, slope, send_delta_ms, x);
    }

    fn detect(&mut self, modified: f64, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if modified > self.threshold {
            if self.over_ms < 0.0 {
                self.over_ms = send_delta_ms / 2.0;
            } else {
                self.over_ms += send_delta_ms;
            }
            self.over_count += 1;
            if self.over_ms > 10.0 && self.over_count > 1 && trend >= self.previous_trend {
                self.over_ms = 0.0;
                self.over_count = 0;
                self.signal = Signal::Overusing;
            }
        } else if modified < -self.threshold {
            self.over_ms = -1.0;
            self.over_count = 0;
            self.signal = Signal::Underusing;
        } else {
            self.over_ms = -1.0;
            self.over_count = 0;
            self.signal = Signal::Normal;
        }
        self.previous_trend = trend;
        // The threshold follows the trend: slowly up, faster down, and not for outliers.
        let dt = self.last_update_ms.map_or(0.0, |last| (now_ms - last).clamp(0.0, 100.0));
        self.last_update_ms = Some(now_ms);
        if modified.abs() <= self.threshold + 15.0 {
            let k = if modified.abs() < self.threshold { 0.039 } else { 0.0087 };
            self.threshold = (self.threshold + k * (modified.abs() - self.threshold) * dt).clamp(6.0, 600.0);
        }
    }
}

/// Least-squares slope of the points.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points
        .iter()
        .fold((0.0, 0.0), |(num, den), (x, y)| (num + (x - mx) * (y - my), den + (x - mx) * (x - mx)));
    (den > 0.0).then(|| num / den)
}

/// One session's estimate.
pub struct Estimator {
    sent: VecDeque<Sent>,
    /// Transport-wide sequence number of `sent[0]`.
    first: u64,
    group: Option<Group>,
    last_group: Option<Group>,
    trend: Trend,
    bps: f64,
    /// Received packets in the last `ACKED_WINDOW_US` of the receiver's clock.
    acked: VecDeque<(i64, u16)>,
    acked_bytes: u64,
    /// The rate the last overuse brought the estimate down from (where growth slows).
    capacity: Option<f64>,
    last_update_us: Option<u64>,
    last_decrease_us: Option<u64>,
    /// Reported lost and received since `loss_since_us`, and the loss of the last stretch.
    lost: u32,
    received: u32,
    loss_since_us: Option<u64>,
    loss: f64,
    last_count: Option<u8>,
    decreases: u64,
}

impl Estimator {
    pub fn new(initial_bps: u64) -> Self {
        Self {
            sent: VecDeque::with_capacity(1024),
            first: 0,
            group: None,
            last_group: None,
            trend: Trend::new(),
            bps: (initial_bps as f64).clamp(MIN_BPS, MAX_BPS),
            acked: VecDeque::new(),
            acked_bytes: 0,
            capacity: None,
            last_update_us: None,
            last_decrease_us: None,
            lost: 0,
            received: 0,
            loss_since_us: None,
            loss: 0.0,
            last_count: None,
            decreases: 0,
        }
    }

    /// The transport-wide sequence number the next packet gets; `on_sent` must follow.
    pub fn next_seq(&self) -> u64 {
        self.first + self.sent.len() as u64
    }

    /// The packet numbered `next_seq()` went out, `size` bytes of RTP, at `at_us`.
    pub fn on_sent(&mut self, at_us: u64, size: usize) {
        if self.sent.len() == KEEP {
            self.sent.pop_front();
            self.first += 1;
        }
        self.sent.push_back(Sent {
            at_us,
            size: size.min(u16::MAX as usize) as u16,
            state: Fate::Unreported,
        });
    }

    /// The current estimate, bits per second.
    pub fn bps(&self) -> u64 {
        self.bps as u64
    }

    /// How many times the estimate fell for overuse or loss.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    #[cfg(test)]
    pub fn signal(&self) -> Signal {
        self.trend.signal
    }

    /// What the receiver got per second over the last half second of its clock (none
    /// before a tenth of a second of it was reported).
    pub fn acked_bps(&self) -> Option<u64> {
        let (first, last) = (self.acked.front()?, self.acked.back()?);
        let span = last.0 - first.0;
        (span >= ACKED_WINDOW_US / 5).then(|| (self.acked_bytes as f64 * 8.0 * 1e6 / span as f64) as u64)
    }

    /// Read one feedback report at `now_us`; the estimate may move.
    pub fn on_feedback(&mut self, report: &Report, now_us: u64) {
        if self.last_count == Some(report.count) {
            return; // the same report again
        }
        self.last_count = Some(report.count);
        let next = self.next_seq();
        // The 16-bit base is the sent number nearest below what was sent last.
        let base = next.saturating_sub(1 << 15)
            + u64::from(report.base_seq.wrapping_sub((next.saturating_sub(1 << 15)) as u16));
        for (i, arrival) in report.arrivals.iter().enumerate() {
            let seq = base + i as u64;
            let Some(index) = seq.checked_sub(self.first).map(|i| i as usize) else { continue };
            let Some(sent) = self.sent.get_mut(index) else { break };
            match (*arrival, sent.state) {
                (Some(recv), Fate::Unreported | Fate::Lost) => {
                    if sent.state == Fate::Lost {
                        self.lost = self.lost.saturating_sub(1);
                    }
                    sent.state = Fate::Received;
                    self.received += 1;
                    let (at_us, size) = (sent.at_us, sent.size);
                    self.on_arrival(at_us, recv, size);
                }
                (None, Fate::Unreported) => {
                    sent.state = Fate::Lost;
                    self.lost += 1;
                }
                _ => {}
            }
        }
        self.update_rate(now_us);
    }

    fn on_arrival(&mut self, send_us: u64, recv_us: i64, size: u16) {
        // The receiver's clock went back (its 24-bit reference time wrapped, or a peer
        // says so): what was measured on the old time line is dropped.
        if self.acked.back().is_some_and(|(last, _)| recv_us < last - CLOCK_JUMP_US) {
            self.acked.clear();
            self.acked_bytes = 0;
            self.group = None;
            self.last_group = None;
        }
        self.acked.push_back((recv_us, size));
        self.acked_bytes += u64::from(size);
        while let Some(&(at, bytes)) = self.acked.front() {
            if recv_us - at <= ACKED_WINDOW_US {
                break;
            }
            self.acked.pop_front();
            self.acked_bytes -= u64::from(bytes);
        }
        match &mut self.group {
            Some(g) if send_us >= g.first_send && send_us - g.first_send <= GROUP_US => {
                g.last_send = g.last_send.max(send_us);
                g.last_recv = g.last_recv.max(recv_us);
            }
            Some(g) if send_us < g.first_send => {} // reordered from an earlier group
            _ => {
                let done =
                    self.group.replace(Group { first_send: send_us, last_send: send_us, last_recv: recv_us });
                if let (Some(done), Some(before)) = (done, self.last_group) {
                    let send_delta = done.last_send as f64 - before.last_send as f64;
                    let recv_delta = (done.last_recv - before.last_recv) as f64;
                    self.trend.update(
                        (recv_delta - send_delta) / 1000.0,
                        send_delta / 1000.0,
                        done.last_recv,
                    );
                }
                if done.is_some() {
                    self.last_group = done;
                }
            }
        }
    }

    fn update_rate(&mut self, now_us: u64) {
        let dt =
            self.last_update_us.map_or(0.0, |last| now_us.saturating_sub(last).min(1_000_000) as f64 / 1e6);
        self.last_update_us = Some(now_us);
        let acked = self.acked_bps().unwrap_or(0) as f64;
        let before = self.bps;
        // Loss is judged afresh over each stretch of at least LOSS_MIN_PACKETS reported
        // packets (or a second with some), and acted on once.
        let reported = self.lost + self.received;
        let stretch = now_us.saturating_sub(*self.loss_since_us.get_or_insert(now_us));
        let fresh = reported >= LOSS_MIN_PACKETS || (stretch >= 1_000_000 && reported >= 10);
        if fresh {
            self.loss = f64::from(self.lost) / f64::from(reported);
            (self.lost, self.received, self.loss_since_us) = (0, 0, Some(now_us));
        }
        let loss = self.loss;
        let since_decrease = self.last_decrease_us.map_or(u64::MAX, |at| now_us.saturating_sub(at));
        let mut decreased = false;
        if self.trend.signal == Signal::Overusing && acked > 0.0 && since_decrease >= 200_000 {
            let target = BACKOFF * acked;
            if target < self.bps {
                self.capacity = Some(acked);
                self.bps = target;
                decreased = true;
            }
        }
        if fresh && loss > LOSS_CUT && since_decrease >= 300_000 && !decreased {
            // From what got through (the estimate may be far above what is sent).
            let from = if acked > 0.0 { acked.min(self.bps) } else { self.bps };
            let target = from * (1.0 - 0.5 * loss);
            if target < self.bps {
                self.capacity = Some(from);
                self.bps = target;
                decreased = true;
            }
        }
        if decreased {
            self.decreases += 1;
            self.last_decrease_us = Some(now_us);
        } else if self.trend.signal == Signal::Normal && loss < LOSS_HOLD && since_decrease >= 300_000 {
            let near = self.capacity.is_some_and(|c| self.bps < c * 1.15);
            // Away from the last drop, growth quickens the longer it goes unchecked.
            let calm_secs = since_decrease.min(60_000_000) as f64 / 1e6;
            let rate = (FAST_GROWTH * (1.0 + calm_secs / 5.0)).min(MAX_GROWTH);
            self.bps += if near { NEAR_GROWTH_BPS * dt } else { self.bps * rate * dt };
            if self.capacity.is_some_and(|c| self.bps > c * 1.5) {
                self.capacity = None; // far past it: the path has changed
            }
        }
        if acked > 0.0 && !decreased {
            // Growth stops short of what was never sent (it is not a fall itself: the
            // estimate of a path limited by what we send stays where it was): soon after a
            // fall at 1.5 times what got through; later at four times and a megabit, so the
            // allocator can try the next layer up (from h to f is three times the rate)
            // and the path's queue says if it fits.
            let ceiling = if since_decrease < CEILING_FOR_US {
                acked * ACKED_HEADROOM + 100_000.0
            } else {
                acked * 4.0 + 1_000_000.0
            };
            self.bps = self.bps.min(before.max(ceiling));
        }
        self.bps = self.bps.clamp(MIN_BPS, MAX_BPS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender at `min(demand, estimate)` over a bottleneck of `capacity_bps` with a
    /// 100 ms queue (more is dropped, as tbf does) and 20 ms of path delay; the receiver
    /// reports every 50 ms. Returns the estimate and the loss of each second.
    struct Path {
        estimator: Estimator,
        now_us: u64,
        link_free_us: u64,
        credit: f64,
        /// (seq, arrival or none) not yet reported.
        pending: Vec<(u64, Option<i64>, u64)>,
        count: u8,
        sent: u64,
        dropped: u64,
    }

    impl Path {
        fn new(initial: u64) -> Self {
            Self {
                estimator: Estimator::new(initial),
                now_us: 0,
                link_free_us: 0,
                credit: 0.0,
                pending: Vec::new(),
                count: 0,
                sent: 0,
                dropped: 0,
            }
        }

        /// Run for `secs`, sending up to `demand_bps`; each second's estimate.
        fn run(&mut self, secs: u64, demand_bps: u64, capacity_bps: u64) -> Vec<u64> {
            self.run_with(secs, &|_| demand_bps, capacity_bps)
        }

        /// As `run`, with the demand a function of the estimate (an allocator's layers).
        fn run_with(&mut self, secs: u64, demand: &dyn Fn(u64) -> u64, capacity_bps: u64) -> Vec<u64> {
            let mut each_second = Vec::new();
            let end = self.now_us + secs * 1_000_000;
            while self.now_us < end {
                self.now_us += 1_000;
                let estimate = self.estimator.bps();
                let rate = demand(estimate).min(estimate) as f64;
                self.credit += rate / 8.0 / 1000.0;
                while self.credit >= 1200.0 {
                    self.credit -= 1200.0;
                    let seq = self.estimator.next_seq();
                    self.estimator.on_sent(self.now_us, 1200);
                    self.sent += 1;
                    let start = self.link_free_us.max(self.now_us);
                    let arrival = if start - self.now_us > 100_000 {
                        self.dropped += 1;
                        None
                    } else {
                        self.link_free_us = start + 1200 * 8 * 1_000_000 / capacity_bps;
                        Some(self.link_free_us as i64 + 20_000)
                    };
                    self.pending.push((seq, arrival, self.now_us));
                }
                if self.now_us.is_multiple_of(50_000) {
                    // Report what has arrived (or should have) by now.
                    let now = self.now_us as i64;
                    let due: Vec<_> = self
                        .pending
                        .iter()
                        .filter(|(_, a, sent)| a.map_or(*sent as i64 + 150_000 <= now, |a| a <= now))
                        .cloned()
                        .collect();
                    if let (Some(first), Some(last)) = (due.first(), due.last()) {
                        let (base, end) = (first.0, last.0);
                        let mut arrivals = vec![None; (end - base + 1) as usize];
                        for (seq, a, _) in &due {
                            arrivals[(seq - base) as usize] = *a;
                        }
                        self.pending.retain(|(seq, _, _)| *seq > end);
                        self.count = self.count.wrapping_add(1);
                        let report = Report { base_seq: base as u16, count: self.count, arrivals };
                        self.estimator.on_feedback(&report, self.now_us + 20_000);
                    }
                }
                if self.now_us.is_multiple_of(1_000_000) {
                    each_second.push(self.estimator.bps());
                }
            }
            each_second
        }
    }

    #[test]
    fn a_narrow_link_brings_the_estimate_down_fast_and_holds_it_there() {
        let mut path = Path::new(3_000_000);
        path.run(10, 3_000_000, 20_000_000);
        let before = path.estimator.bps();
        assert!(before >= 2_800_000, "a wide link: the estimate follows the demand ({before})");
        let (sent, dropped) = (path.sent, path.dropped);
        let shaped = path.run(30, 3_000_000, 1_000_000);
        assert!(shaped[1] <= 1_000_000, "under the link within 2 s: {shaped:?}");
        for (s, bps) in shaped.iter().enumerate().skip(3) {
            assert!((500_000..=1_100_000).contains(bps), "second {s}: {bps} ({shaped:?})");
        }
        let loss = (path.dropped - dropped) as f64 / (path.sent - sent) as f64;
        println!("shaped {shaped:?}, loss {loss}");
        assert!(loss < 0.05, "the queue overflows only at first: {loss}");
    }

    #[test]
    fn the_estimate_climbs_back_when_the_link_widens() {
        let mut path = Path::new(3_000_000);
        path.run(20, 3_000_000, 1_000_000);
        let climb = path.run(15, 3_000_000, 20_000_000);
        println!("climb {climb:?}");
        assert!(climb[14] >= 2_700_000, "back to the demand within 15 s: {climb:?}");
    }

    /// One tile: h (600 kbit/s) unless the estimate carries f (1.8 Mbit/s) with the
    /// allocator's 15% headroom. After a narrow spell the estimate must grow past what h
    /// sends, or f never comes back.
    #[test]
    fn after_a_fall_the_estimate_grows_past_a_layer_step() {
        let layers = |estimate: u64| if estimate as f64 * 0.85 >= 1_800_000.0 { 1_800_000 } else { 600_000 };
        let mut path = Path::new(10_000_000);
        path.run_with(5, &layers, 20_000_000);
        path.run_with(10, &layers, 500_000);
        let wide = path.run_with(30, &layers, 20_000_000);
        println!("wide again {wide:?}");
        assert!(wide[25..].iter().all(|bps| *bps as f64 * 0.85 >= 1_800_000.0), "f back: {wide:?}");
    }

    #[test]
    fn an_application_limited_path_is_not_overuse() {
        let mut path = Path::new(10_000_000);
        let seconds = path.run(20, 500_000, 20_000_000);
        assert_eq!(path.dropped, 0);
        assert_ne!(path.estimator.signal(), Signal::Overusing);
        assert!(seconds.iter().all(|bps| *bps >= 500_000), "{seconds:?}");
    }
}
