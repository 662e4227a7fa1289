//! Dominant speaker detection from the RFC 6464 audio level on every audio packet.
//! Speech is judged over three time scales: a participant becomes the dominant speaker
//! only after talking for most of the last second, so a cough, a door or a short "mm"
//! never takes the spotlight; the speaker keeps it until someone else clearly talks
//! more over the last two seconds, or stops talking, and never more often than once per
//! `min_hold`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::SessionId;

/// One 20 ms audio frame.
const SLOT_MS: u64 = 20;
/// Slots remembered: two seconds.
const SLOTS: usize = 100;
/// Slots in the medium window (one second) and the immediate one (300 ms).
const MEDIUM: usize = 50;
const IMMEDIATE: usize = 15;

#[derive(Debug, Clone, Copy)]
pub struct SpeakerConfig {
    /// Frames at or louder than this level (-dBov, 0 loudest) count as speech.
    pub voice_level: u8,
    /// Share of the last second with speech before someone can take over.
    pub min_medium_activity: f32,
    /// How much more of the last two seconds a challenger must speak than the speaker.
    pub takeover_margin: f32,
    /// Below this share of the last second the speaker is considered to have stopped.
    pub stopped_activity: f32,
    /// The least time between two changes of speaker.
    pub min_hold: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            voice_level: 60,
            min_medium_activity: 0.4,
            takeover_margin: 0.2,
            stopped_activity: 0.15,
            min_hold: Duration::from_secs(1),
        }
    }
}

/// Which 20 ms slots of the last two seconds had speech, for one participant.
#[derive(Debug, Clone)]
struct Activity {
    voiced: [bool; SLOTS],
    /// The newest slot number written (slot index = number % SLOTS).
    newest: u64,
}

impl Activity {
    fn new(slot: u64) -> Self {
        Self { voiced: [false; SLOTS], newest: slot }
    }

    /// Move the window forward to `slot`, forgetting slots that fell out of it.
    fn advance(&mut self, slot: u64) {
        if slot <= self.newest {
            return;
        }
        let gap = (slot - self.newest).min(SLOTS as u64);
        for s in 1..=gap {
            self.voiced[((self.newest + s) % SLOTS as u64) as usize] = false;
        }
        self.newest = slot;
    }

    fn record(&mut self, slot: u64, voiced: bool) {
        self.advance(slot);
        if self.newest - slot < SLOTS as u64 {
            let i = (slot % SLOTS as u64) as usize;
            self.voiced[i] |= voiced;
        }
    }

    /// Share of the last `window` slots (ending at `slot`) with speech.
    fn share(&self, slot: u64, window: usize) -> f32 {
        let mut voiced = 0;
        for back in 0..window as u64 {
            let Some(s) = slot.checked_sub(back) else { break };
            if s <= self.newest && self.newest - s < SLOTS as u64 && self.voiced[(s % SLOTS as u64) as usize]
            {
                voiced += 1;
            }
        }
        voiced as f32 / window as f32
    }
}

/// The dominant speaker of one room.
#[derive(Debug)]
pub struct SpeakerDetector {
    config: SpeakerConfig,
    epoch: Instant,
    participants: HashMap<SessionId, Activity>,
    current: Option<SessionId>,
    last_change: Option<Instant>,
}

impl SpeakerDetector {
    pub fn new(config: SpeakerConfig, epoch: Instant) -> Self {
        Self { config, epoch, participants: HashMap::new(), current: None, last_change: None }
    }

    fn slot(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 / SLOT_MS
    }

    /// An audio packet from `who` with RFC 6464 `level` (-dBov, 0..=127) arrived at `at`.
    pub fn record(&mut self, who: SessionId, level: u8, at: Instant) {
        let slot = self.slot(at);
        let voiced = level <= self.config.voice_level;
        self.participants.entry(who).or_insert_with(|| Activity::new(slot)).record(slot, voiced);
    }

    pub fn remove(&mut self, who: SessionId) {
        self.participants.remove(&who);
        if self.current == Some(who) {
            self.current = None;
        }
    }

    #[cfg(test)]
    pub fn current(&self) -> Option<SessionId> {
        self.current
    }

    /// Decide at `now`; returns the new dominant speaker when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<SessionId> {
        let slot = self.slot(now);
        let c = self.config;
        let scores = |a: &Activity| (a.share(slot, IMMEDIATE), a.share(slot, MEDIUM), a.share(slot, SLOTS));
        // Candidates talk now and have talked for most of the last second.
        let best = self
            .participants
            .iter()
            .map(|(id, a)| (*id, scores(a)))
            .filter(|(_, (immediate, medium, _))| *immediate > 0.0 && *medium >= c.min_medium_activity)
            .max_by(|a, b| a.1.2.total_cmp(&b.1.2).then(a.1.1.total_cmp(&b.1.1)).then(b.0.cmp(&a.0)))?;
        if Some(best.0) == self.current {
            return None;
        }
        if self.last_change.is_some_and(|t| now.duration_since(t) < c.min_hold) {
            return None;
        }
        let takes_over = match self.current.and_then(|id| self.participants.get(&id)) {
            None => true,
            Some(current) => {
                let (_, medium, long) = scores(current);
                medium < c.stopped_activity || best.1.2 > long + c.takeover_margin
            }
        };
        if !takes_over {
            return None;
        }
        self.current = Some(best.0);
        self.last_change = Some(now);
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: u8 = 30;
    const QUIET: u8 = 127;

    /// Feed 20 ms frames from `from_ms` to `to_ms` for `who` at `level`, polling every 100 ms.
    struct Sim {
        t0: Instant,
        d: SpeakerDetector,
        changes: Vec<(u64, SessionId)>,
    }

    impl Sim {
        fn new() -> Self {
            let t0 = Instant::now();
            Self { t0, d: SpeakerDetector::new(SpeakerConfig::default(), t0), changes: Vec::new() }
        }

        /// Run `ms` of audio where `talking(id, t_ms)` says who talks.
        fn run(
            &mut self,
            from_ms: u64,
            to_ms: u64,
            ids: &[SessionId],
            talking: impl Fn(SessionId, u64) -> bool,
        ) {
            for t in (from_ms..to_ms).step_by(SLOT_MS as usize) {
                let at = self.t0 + Duration::from_millis(t);
                for id in ids {
                    let level = if talking(*id, t) { LOUD } else { QUIET };
                    self.d.record(*id, level, at);
                }
                if t % 100 == 0
                    && let Some(who) = self.d.poll(at)
                {
                    self.changes.push((t, who));
                }
            }
        }
    }

    #[test]
    fn one_talker_becomes_the_speaker_within_half_a_second() {
        let mut s = Sim::new();
        s.run(0, 3000, &[1, 2, 3], |id, t| id == 2 && t >= 500);
        assert_eq!(s.changes.len(), 1, "{:?}", s.changes);
        let (at, who) = s.changes[0];
        assert_eq!(who, 2);
        assert!((800..=1100).contains(&at), "after about 400 ms of speech: {at}");
    }

    #[test]
    fn a_cough_never_takes_over() {
        let mut s = Sim::new();
        // 1 talks throughout; 2 coughs for 200 ms twice; 3 says "mm" for 300 ms.
        s.run(0, 5000, &[1, 2, 3], |id, t| match id {
            1 => true,
            2 => (2000..2200).contains(&t) || (3500..3700).contains(&t),
            _ => (2600..2900).contains(&t),
        });
        assert_eq!(s.changes.iter().map(|c| c.1).collect::<Vec<_>>(), vec![1], "{:?}", s.changes);
    }

    #[test]
    fn overlapping_talkers_hand_over_once_the_first_stops() {
        let mut s = Sim::new();
        // 1 talks 0-4 s; 2 starts at 3 s (overlap) and goes on to 8 s.
        s.run(0, 8000, &[1, 2], |id, t| if id == 1 { t < 4000 } else { t >= 3000 });
        let who: Vec<SessionId> = s.changes.iter().map(|c| c.1).collect();
        assert_eq!(who, vec![1, 2], "{:?}", s.changes);
        let handover = s.changes[1].0;
        assert!((4000..=5000).contains(&handover), "after 1 stops, not during the overlap: {handover}");
    }

    #[test]
    fn no_oscillation_between_equal_talkers() {
        let mut s = Sim::new();
        // Two people talk over each other the whole time.
        s.run(0, 10_000, &[1, 2], |_, _| true);
        assert_eq!(s.changes.len(), 1, "one speaker is picked and kept: {:?}", s.changes);
    }

    #[test]
    fn a_participant_who_leaves_stops_being_the_speaker() {
        let mut s = Sim::new();
        s.run(0, 2000, &[1, 2], |id, _| id == 1);
        assert_eq!(s.d.current(), Some(1));
        s.d.remove(1);
        assert_eq!(s.d.current(), None);
        s.run(2000, 4000, &[2], |_, t| t >= 2500);
        assert_eq!(s.d.current(), Some(2));
    }
}
