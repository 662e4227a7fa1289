//! Top-N audio: which audio tracks of a room are forwarded at all. Small rooms forward
//! everything. Large rooms forward the N loudest speakers plus one spare place, so a
//! speaker who just stopped keeps a hangover and is not cut off mid-word when someone
//! else starts; silent participants (DTX comfort noise) are not forwarded.
//!
//! The decision is made per packet, on arrival: a speaker who starts talking is
//! forwarded from its first voiced packet whenever a place is free or held by someone
//! who has gone quiet. Nobody who is still talking is ever displaced.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AudioSelectConfig {
    /// Speakers forwarded in large rooms.
    pub top_n: usize,
    /// Rooms of at most this many participants forward every audio track.
    pub all_up_to: usize,
    /// RFC 6464 level (-dBov) at or below which a packet counts as voice.
    pub voice_level: u8,
    /// A place is kept this long after its speaker's last voiced packet, unless a new
    /// speaker needs it.
    pub hangover: Duration,
}

impl Default for AudioSelectConfig {
    fn default() -> Self {
        Self { top_n: 3, all_up_to: 10, voice_level: 60, hangover: Duration::from_millis(1500) }
    }
}

/// What one packet changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<K> {
    pub forward: bool,
    /// The track was just admitted (and this one evicted to make room).
    pub admitted: Option<Option<K>>,
}

#[derive(Debug, Clone)]
struct Place<K> {
    key: K,
    last_voiced: Option<Instant>,
    /// The newest packet of this track was voiced.
    talking: bool,
}

#[derive(Debug, Clone)]
pub struct AudioSelector<K> {
    config: AudioSelectConfig,
    places: Vec<Place<K>>,
}

impl<K: Copy + Eq> AudioSelector<K> {
    pub fn new(config: AudioSelectConfig) -> Self {
        Self { config, places: Vec::new() }
    }

    pub fn is_selected(&self, key: K) -> bool {
        self.places.iter().any(|p| p.key == key)
    }

    pub fn selected(&self) -> impl Iterator<Item = K> + '_ {
        self.places.iter().map(|p| p.key)
    }

    /// Places in a room of `room_size` participants; None means every track.
    pub fn capacity(&self, room_size: usize) -> Option<usize> {
        (room_size > self.config.all_up_to).then_some(self.config.top_n + 1)
    }

    /// One audio packet of `key` with RFC 6464 `level` (0 loudest, 127 silence) and the
    /// voice-activity flag if the sender sets it.
    pub fn on_packet(
        &mut self,
        key: K,
        level: Option<u8>,
        vad: Option<bool>,
        now: Instant,
        room_size: usize,
    ) -> Verdict<K> {
        let voiced = level.is_some_and(|l| l <= self.config.voice_level) && vad != Some(false);
        if let Some(place) = self.places.iter_mut().find(|p| p.key == key) {
            place.talking = voiced;
            if voiced {
                place.last_voiced = Some(now);
            }
            return Verdict { forward: true, admitted: None };
        }
        let new_place = Place { key, last_voiced: voiced.then_some(now), talking: voiced };
        let Some(capacity) = self.capacity(room_size) else {
            self.places.push(new_place);
            return Verdict { forward: true, admitted: Some(None) };
        };
        if !voiced {
            return Verdict { forward: false, admitted: None };
        }
        if self.places.len() < capacity {
            self.places.push(new_place);
            return Verdict { forward: true, admitted: Some(None) };
        }
        // Evict whoever went quiet longest ago; never someone still talking.
        let victim = self
            .places
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.talking)
            .min_by_key(|(_, p)| p.last_voiced)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                let evicted = std::mem::replace(&mut self.places[i], new_place).key;
                Verdict { forward: true, admitted: Some(Some(evicted)) }
            }
            None => Verdict { forward: false, admitted: None },
        }
    }

    /// Drop places above the room's capacity (it grew) and places whose hangover ended
    /// in a large room. Returns the tracks no longer forwarded.
    pub fn trim(&mut self, now: Instant, room_size: usize) -> Vec<K> {
        let Some(capacity) = self.capacity(room_size) else { return Vec::new() };
        let hangover = self.config.hangover;
        let mut out = Vec::new();
        self.places.retain(|p| {
            let keep = p.talking || p.last_voiced.is_some_and(|t| now.duration_since(t) < hangover);
            if !keep {
                out.push(p.key);
            }
            keep
        });
        while self.places.len() > capacity {
            let oldest = (0..self.places.len()).min_by_key(|i| self.places[*i].last_voiced).unwrap_or(0);
            out.push(self.places.remove(oldest).key);
        }
        out
    }

    pub fn remove(&mut self, key: K) {
        self.places.retain(|p| p.key != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: Option<u8> = Some(30);
    const QUIET: Option<u8> = Some(127);
    const BIG: usize = 300;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn selector() -> AudioSelector<u32> {
        AudioSelector::new(AudioSelectConfig::default())
    }

    #[test]
    fn small_rooms_forward_everything_including_silence() {
        let mut s = selector();
        let t0 = Instant::now();
        for key in 0..10 {
            let v = s.on_packet(key, QUIET, None, t0, 10);
            assert_eq!(v, Verdict { forward: true, admitted: Some(None) });
        }
        assert!(s.trim(ms(t0, 10_000), 10).is_empty());
    }

    #[test]
    fn large_rooms_forward_silence_never() {
        let mut s = selector();
        let t0 = Instant::now();
        assert!(!s.on_packet(1, QUIET, None, t0, BIG).forward);
        assert!(!s.on_packet(1, LOUD, Some(false), t0, BIG).forward, "VAD says no voice");
        assert!(s.on_packet(2, LOUD, Some(true), t0, BIG).forward);
        assert!(s.on_packet(2, QUIET, None, ms(t0, 20), BIG).forward, "a selected track keeps its place");
    }

    #[test]
    fn three_talkers_hand_over_to_three_new_ones_at_once() {
        // The meeting-300 rotation: A, B, C talk; at t=1000 they stop and D, E, F start,
        // their first packets interleaved with the old speakers' last ones.
        let (a, b, c, d, e, f) = (1, 2, 3, 4, 5, 6);
        let mut s = selector();
        let t0 = Instant::now();
        for t in (0..1000).step_by(20) {
            for k in [a, b, c] {
                assert!(s.on_packet(k, LOUD, None, ms(t0, t), BIG).forward);
            }
        }
        // D comes first while A, B, C still talk: the spare place takes it.
        assert!(s.on_packet(d, LOUD, None, ms(t0, 1000), BIG).forward);
        // E's first packet beats A's silence: all places are talking, E waits one packet.
        assert!(!s.on_packet(e, LOUD, None, ms(t0, 1001), BIG).forward);
        s.on_packet(a, QUIET, None, ms(t0, 1002), BIG);
        s.on_packet(b, QUIET, None, ms(t0, 1003), BIG);
        let v = s.on_packet(e, LOUD, None, ms(t0, 1021), BIG);
        assert!(v.forward);
        assert!(matches!(v.admitted, Some(Some(x)) if x == a || x == b));
        assert!(s.on_packet(f, LOUD, None, ms(t0, 1022), BIG).forward);
        let selected: Vec<u32> = s.selected().collect();
        assert!([d, e, f].iter().all(|k| selected.contains(k)), "{selected:?}");
        assert_eq!(selected.len(), 4);
    }

    #[test]
    fn a_speaker_who_stops_keeps_its_place_for_the_hangover_then_leaves() {
        let mut s = selector();
        let t0 = Instant::now();
        s.on_packet(1, LOUD, None, t0, BIG);
        s.on_packet(1, QUIET, None, ms(t0, 20), BIG);
        assert!(s.trim(ms(t0, 1000), BIG).is_empty(), "within the hangover");
        assert!(s.on_packet(1, QUIET, None, ms(t0, 1000), BIG).forward, "word endings still go out");
        assert_eq!(s.trim(ms(t0, 1600), BIG), vec![1]);
        assert!(!s.is_selected(1));
    }

    #[test]
    fn the_quiet_longest_goes_first_and_talkers_are_never_displaced() {
        let mut s = selector();
        let t0 = Instant::now();
        for (k, t) in [(1, 0), (2, 100), (3, 200), (4, 300)] {
            s.on_packet(k, LOUD, None, ms(t0, t), BIG);
            s.on_packet(k, QUIET, None, ms(t0, t + 20), BIG);
        }
        s.on_packet(4, LOUD, None, ms(t0, 400), BIG);
        let v = s.on_packet(5, LOUD, None, ms(t0, 500), BIG);
        assert_eq!(v.admitted, Some(Some(1)), "1 went quiet first");
        // 2 and 3 quiet, 4 and 5 talking: 6 takes 2's place, 7 takes 3's, 8 must wait.
        assert_eq!(s.on_packet(6, LOUD, None, ms(t0, 510), BIG).admitted, Some(Some(2)));
        assert_eq!(s.on_packet(7, LOUD, None, ms(t0, 520), BIG).admitted, Some(Some(3)));
        assert_eq!(s.on_packet(8, LOUD, None, ms(t0, 530), BIG), Verdict { forward: false, admitted: None });
    }

    #[test]
    fn a_room_that_grows_trims_to_top_n_plus_one() {
        let mut s = selector();
        let t0 = Instant::now();
        for k in 0..10 {
            s.on_packet(k, if k < 2 { LOUD } else { QUIET }, None, ms(t0, k as u64), 10);
        }
        let gone = s.trim(ms(t0, 100), 11);
        assert_eq!(gone.len(), 8, "the eight who never spoke");
        assert!(s.is_selected(0) && s.is_selected(1));
    }
}
