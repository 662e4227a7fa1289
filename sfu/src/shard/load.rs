//! How loaded a shard is, measured by the shard and read by the node's admission (ADR
//! 0020): the share of wall time its thread works rather than waits for input, and how long
//! the media it handles waited in its queue. Wall time rather than CPU time, so a thread
//! held back by a CPU quota or a busy neighbour counts as the busy one it is.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One measuring window; the busy share is smoothed over a few.
const WINDOW: Duration = Duration::from_millis(250);
/// How long after its media connected a session's load is taken as measured (its
/// subscriptions and the others' new slots for it follow the connection).
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// The share of the busy budget above which joins are judged by the projected load too.
const PROJECT_ABOVE: f64 = 0.75;

/// What the shard publishes, for `admits`.
#[derive(Debug, Default)]
pub(crate) struct ShardLoad {
    /// Share of wall time the shard worked, smoothed (per mille).
    busy_permille: AtomicU32,
    /// The part of it spent on signaling's commands and handshakes: the joins' own work,
    /// which ends when they settle (per mille, smoothed).
    control_permille: AtomicU32,
    /// The longest any media batch waited in the queue in the last window (µs).
    lag_us: AtomicU32,
    /// Sessions whose media connected at least `SETTLE` ago: the ones the busy share
    /// measures.
    settled_sessions: AtomicUsize,
    /// The shard sheds video (`VideoShedding`): its load reads low for what it carries.
    shedding: AtomicBool,
}

/// The admission budget of one shard (`MediaConfig::max_shard_busy`, `max_shard_lag`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub max_busy: f64,
    pub max_lag: Duration,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverBudget {
    /// The shard would work more than its budget's share of the time with one more.
    Busy,
    /// Media waits in its queue longer than the budget allows: it is behind already.
    Lag,
    /// It sheds video to keep up (ADR 0021): what it measures is with video cut.
    Shedding,
}

impl OverBudget {
    pub fn label(self) -> &'static str {
        match self {
            OverBudget::Busy => "shard_busy",
            OverBudget::Lag => "shard_lag",
            OverBudget::Shedding => "shard_shedding",
        }
    }

    /// Why, as the refused client is told.
    pub fn reason(self) -> &'static str {
        match self {
            OverBudget::Busy => "the room's media thread is at its load budget",
            OverBudget::Lag => "the room's media thread is behind",
            OverBudget::Shedding => "the room's media thread sheds video to keep up",
        }
    }
}

impl ShardLoad {
    /// Whether a shard with `sessions` now takes one more within `budget`. The media part
    /// of the busy share, measured with the settled sessions, is scaled to the sessions
    /// there will be: each brings about the same work (its media in, a grid's worth out);
    /// the joins' own work (negotiation, handshakes) is taken as it is, since it ends.
    /// Below three quarters of the budget nothing is refused on that projection (it is
    /// an estimate, and a join ramp's settling sessions inflate it); above the budget
    /// everything is.
    pub fn admits(&self, sessions: usize, budget: Budget) -> Result<(), OverBudget> {
        // A lag budget of zero is none.
        if !budget.max_lag.is_zero()
            && Duration::from_micros(self.lag_us.load(Ordering::Relaxed).into()) > budget.max_lag
        {
            return Err(OverBudget::Lag);
        }
        // A budget of all the time or more is none; with no lag budget either, the node
        // admits everyone its caps allow, shedding or not.
        let busy_off = budget.max_busy >= 1.0;
        if self.shedding.load(Ordering::Relaxed) && !(busy_off && budget.max_lag.is_zero()) {
            return Err(OverBudget::Shedding);
        }
        if busy_off {
            return Ok(());
        }
        let busy = f64::from(self.busy_permille.load(Ordering::Relaxed)) / 1000.0;
        let control = f64::from(self.control_permille.load(Ordering::Relaxed)) / 1000.0;
        let media = (busy - control).max(0.0);
        let settled = self.settled_sessions.load(Ordering::Relaxed).max(1);
        let projected = control + media * (sessions + 1) as f64 / settled as f64;
        if busy > budget.max_busy || (busy > budget.max_busy * PROJECT_ABOVE && projected > budget.max_busy) {
            return Err(OverBudget::Busy);
        }
        Ok(())
    }

    /// Whether the shard sheds video now.
    pub fn set_shedding(&self, shedding: bool) {
        self.shedding.store(shedding, Ordering::Relaxed);
    }

    /// The smoothed busy share (0 to 1) and the last window's longest queue wait.
    pub fn now(&self) -> (f64, Duration) {
        (
            f64::from(self.busy_permille.load(Ordering::Relaxed)) / 1000.0,
            Duration::from_micros(self.lag_us.load(Ordering::Relaxed).into()),
        )
    }
}

/// The shard's side: idle time and queue waits added up over a window, then published.
pub(crate) struct LoadMeter {
    since: Instant,
    idle: Duration,
    control: Duration,
    lag: Duration,
    busy: f64,
    control_share: f64,
}

impl LoadMeter {
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            idle: Duration::ZERO,
            control: Duration::ZERO,
            lag: Duration::ZERO,
            busy: 0.0,
            control_share: 0.0,
        }
    }

    /// The shard waited for input this long.
    pub fn idle(&mut self, waited: Duration) {
        self.idle += waited;
    }

    /// The shard spent this long on a signaling command or on handshakes.
    pub fn control(&mut self, spent: Duration) {
        self.control += spent;
    }

    /// A media batch waited this long in the queue before the shard took it.
    pub fn queued(&mut self, waited: Duration) {
        self.lag = self.lag.max(waited);
    }

    /// Whether a window has ended: then `publish` it.
    pub fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= WINDOW
    }

    /// Publish the window that ended to `load`, with the sessions settled now (`SETTLE`).
    pub fn publish(&mut self, now: Instant, settled: usize, load: &ShardLoad) {
        let elapsed = now.saturating_duration_since(self.since).max(Duration::from_micros(1));
        let busy = 1.0 - (self.idle.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        // Smoothed over about two windows: one slow turn is not a trend.
        self.busy = (self.busy + busy) / 2.0;
        let control = (self.control.as_secs_f64() / elapsed.as_secs_f64()).min(busy);
        self.control_share = (self.control_share + control) / 2.0;
        load.control_permille.store((self.control_share * 1000.0).round() as u32, Ordering::Relaxed);
        load.busy_permille.store((self.busy * 1000.0).round() as u32, Ordering::Relaxed);
        load.lag_us.store(self.lag.as_micros().min(u32::MAX as u128) as u32, Ordering::Relaxed);
        load.settled_sessions.store(settled, Ordering::Relaxed);
        self.since = now;
        self.idle = Duration::ZERO;
        self.control = Duration::ZERO;
        self.lag = Duration::ZERO;
    }
}

/// Behind: media waited longer than this in the queue in `SHED_AFTER` windows in a row.
/// (A busy thread that keeps up is not behind: joins' negotiation may fill it a while.)
const SHED_LAG: Duration = Duration::from_millis(50);
const SHED_AFTER: u32 = 2;
/// Each step down keeps this share of the video sent before it.
const SHED_STEP: f64 = 0.7;
/// Below this share nothing of the video is kept (tiles of a few kbps are not worth it).
const SHED_FLOOR: f64 = 0.05;
/// Calm: media waited less than this, and the thread worked less than `CALM_BUSY`, in
/// `CALM_AFTER` windows in a row; then the share grows a step. The thread keeps up then:
/// a thread admitted up to its busy budget may work near 0.9 of the time after the joins
/// settle, and with 0.85 here a burst of lag once shed a room's video for half a minute.
const CALM_LAG: Duration = Duration::from_millis(20);
const CALM_BUSY: f64 = 0.95;
const CALM_AFTER: u32 = 4;
const CALM_STEP: f64 = 1.25;

/// How much of the video its subscribers show a shard sends (ADR 0021): all of it, until
/// the shard is behind; then less, a step each half second it stays behind, and more
/// again, a step each second it is calm. Audio is never shed.
#[derive(Debug)]
pub(crate) struct VideoShedding {
    share: f64,
    behind: u32,
    calm: u32,
}

impl Default for VideoShedding {
    fn default() -> Self {
        Self { share: 1.0, behind: 0, calm: 0 }
    }
}

impl VideoShedding {
    /// The share sent now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// After each published window: the new share when it changed.
    pub fn next(&mut self, busy: f64, lag: Duration) -> Option<f64> {
        let before = self.share;
        if lag > SHED_LAG {
            self.calm = 0;
            self.behind += 1;
            if self.behind >= SHED_AFTER {
                self.behind = 0;
                self.share *= SHED_STEP;
                if self.share < SHED_FLOOR {
                    self.share = 0.0;
                }
            }
        } else if lag < CALM_LAG && busy < CALM_BUSY {
            self.behind = 0;
            self.calm += 1;
            if self.calm >= CALM_AFTER && self.share < 1.0 {
                self.calm = 0;
                self.share = (self.share.max(SHED_FLOOR) * CALM_STEP).min(1.0);
            }
        } else {
            self.behind = 0;
            self.calm = 0;
        }
        (self.share != before).then_some(self.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget { max_busy: 0.8, max_lag: Duration::from_millis(100) };

    /// Runs `windows` windows in which the shard is idle `idle` of each, with `settled`.
    fn run(
        meter: &mut LoadMeter,
        load: &ShardLoad,
        at: &mut Instant,
        windows: usize,
        idle: f64,
        settled: usize,
    ) {
        for _ in 0..windows {
            meter.idle(WINDOW.mul_f64(idle));
            *at += WINDOW;
            assert!(meter.due(*at));
            meter.publish(*at, settled, load);
        }
    }

    #[test]
    fn an_idle_shard_admits_and_a_busy_one_refuses() {
        let (load, mut at) = (ShardLoad::default(), Instant::now());
        let mut meter = LoadMeter::new(at);
        run(&mut meter, &load, &mut at, 10, 1.0, 0);
        assert_eq!(load.admits(0, BUDGET), Ok(()));
        run(&mut meter, &load, &mut at, 10, 0.1, 100);
        let (busy, _) = load.now();
        assert!((busy - 0.9).abs() < 0.01, "{busy}");
        assert_eq!(load.admits(100, BUDGET), Err(OverBudget::Busy));
        let off = Budget { max_busy: 1.0, ..BUDGET };
        assert_eq!(load.admits(100, off), Ok(()), "a budget of all the time is none");
    }

    /// Sessions that joined since the busy share was measured count as the load they will
    /// bring: a burst of joins stops at the budget rather than past it.
    #[test]
    fn recent_joins_count_before_their_load_shows() {
        let (load, mut at) = (ShardLoad::default(), Instant::now());
        let mut meter = LoadMeter::new(at);
        // 100 settled sessions keep the shard 65% busy.
        run(&mut meter, &load, &mut at, 12, 0.35, 100);
        assert_eq!(load.admits(110, BUDGET), Ok(()), "72% with 111");
        assert_eq!(load.admits(120, BUDGET), Ok(()), "78.7% with 121");
        assert_eq!(load.admits(125, BUDGET), Err(OverBudget::Busy), "81.9% with 126");
    }

    /// Early in a meeting the joins' work is most of it: a few settled sessions and a
    /// shard under three quarters of its budget refuse no one.
    #[test]
    fn well_under_the_budget_the_projection_refuses_no_one() {
        let (load, mut at) = (ShardLoad::default(), Instant::now());
        let mut meter = LoadMeter::new(at);
        run(&mut meter, &load, &mut at, 12, 0.45, 1);
        assert_eq!(load.admits(30, BUDGET), Ok(()), "55% busy, one settled");
    }

    /// Negotiation and handshakes are the joins' own work: counted as they are, not
    /// scaled by the sessions still settling.
    #[test]
    fn the_joins_own_work_is_not_projected() {
        let (load, mut at) = (ShardLoad::default(), Instant::now());
        let mut meter = LoadMeter::new(at);
        // 50 settled sessions; the shard works 70% of the time, 40% of it on joins.
        for _ in 0..12 {
            meter.idle(WINDOW.mul_f64(0.3));
            meter.control(WINDOW.mul_f64(0.4));
            at += WINDOW;
            meter.publish(at, 50, &load);
        }
        assert_eq!(load.admits(64, BUDGET), Ok(()), "40% + 30% x 65/50 = 79%");
        assert_eq!(load.admits(70, BUDGET), Err(OverBudget::Busy), "40% + 30% x 71/50 = 82.6%");
    }

    #[test]
    fn media_waiting_in_the_queue_refuses_joins_whatever_the_busy_share() {
        let (load, mut at) = (ShardLoad::default(), Instant::now());
        let mut meter = LoadMeter::new(at);
        meter.queued(Duration::from_millis(150));
        run(&mut meter, &load, &mut at, 1, 0.9, 10);
        assert_eq!(load.admits(10, BUDGET), Err(OverBudget::Lag));
        // The next window without such a wait admits again.
        run(&mut meter, &load, &mut at, 1, 0.9, 10);
        assert_eq!(load.admits(10, BUDGET), Ok(()));
    }

    #[test]
    fn video_is_shed_while_behind_and_comes_back_when_calm() {
        let mut shedding = VideoShedding::default();
        let late = Duration::from_millis(80);
        let fine = Duration::from_millis(5);
        assert_eq!(shedding.next(0.9, late), None, "one late window is not a trend");
        assert_eq!(shedding.next(0.9, late), Some(0.7));
        assert_eq!(shedding.next(0.99, fine), None, "busy but keeping up: not behind");
        assert_eq!(shedding.next(0.9, late), None);
        assert_eq!(shedding.next(0.9, late), Some(0.7 * 0.7));
        // Calm for a second: a step back up, and so on until all of it (a thread admitted
        // up to its budget works near 0.9 of the time and still keeps up).
        let mut shares = Vec::new();
        for _ in 0..40 {
            if let Some(share) = shedding.next(0.9, fine) {
                shares.push(share);
            }
        }
        assert!(shares.first().is_some_and(|s| (s - 0.7 * 0.7 * CALM_STEP).abs() < 1e-9), "{shares:?}");
        assert_eq!(shares.last().copied(), Some(1.0));
        assert!(shares.windows(2).all(|w| w[0] < w[1]));
        // In between (neither behind nor calm) nothing moves.
        assert_eq!(shedding.next(0.9, Duration::from_millis(30)), None);
    }

    #[test]
    fn a_shard_long_behind_sheds_all_video_and_starts_again_from_a_little() {
        let mut shedding = VideoShedding::default();
        let late = Duration::from_millis(500);
        let mut last = 1.0;
        for _ in 0..40 {
            if let Some(share) = shedding.next(1.0, late) {
                last = share;
            }
        }
        assert_eq!(last, 0.0);
        for _ in 0..3 {
            assert_eq!(shedding.next(0.1, Duration::ZERO), None);
        }
        assert_eq!(shedding.next(0.1, Duration::ZERO), Some(SHED_FLOOR * CALM_STEP));
    }

    #[test]
    fn a_shard_shedding_video_admits_no_one_and_zero_budgets_are_none() {
        let load = ShardLoad::default();
        load.set_shedding(true);
        assert_eq!(load.admits(1, BUDGET), Err(OverBudget::Shedding));
        load.set_shedding(false);
        assert_eq!(load.admits(1, BUDGET), Ok(()));
        let mut at = Instant::now();
        let mut meter = LoadMeter::new(at);
        meter.queued(Duration::from_secs(2));
        run(&mut meter, &load, &mut at, 1, 0.0, 10);
        let off = Budget { max_busy: 1.0, max_lag: Duration::ZERO };
        assert_eq!(load.admits(10, off), Ok(()), "busy 1.0 and lag 0 turn the budget off");
        load.set_shedding(true);
        assert_eq!(load.admits(10, off), Ok(()), "with the budget off, shedding refuses no one");
        let lag_only = Budget { max_busy: 1.0, max_lag: Duration::from_secs(5) };
        assert_eq!(load.admits(10, lag_only), Err(OverBudget::Shedding));
    }

    #[test]
    fn nothing_is_due_before_a_window_ends() {
        let (load, at) = (ShardLoad::default(), Instant::now());
        let meter = LoadMeter::new(at);
        assert!(!meter.due(at + WINDOW / 2));
        assert_eq!(load.now(), (0.0, Duration::ZERO));
    }
}
