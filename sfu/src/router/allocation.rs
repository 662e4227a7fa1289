//! Layers over time: which layer each video sink aims at as layers start and stop
//! arriving, fitting each subscriber's video into its bandwidth estimate
//! (select/allocator.rs decides, this applies it), and pausing layers nobody takes.

use std::time::{Duration, Instant};

use str0m::media::Mid;

use super::Router;
use super::select::{AllocTrack, MAX_LAYERS, Priority, allocate, choose_layer};
use super::source::{Fed, SourceKey};
use crate::api::{SessionEvent, SessionId, TrackKind, TrackSource};

/// Layer bitrates are measured over this interval.
const MEASURE_INTERVAL: Duration = Duration::from_secs(1);
/// What a layer is assumed to cost before it was measured (q, h, f).
const NOMINAL_LAYER_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_700_000];
/// A simulcast layer nobody takes for this long is paused at its publisher.
const LAYER_PAUSE_AFTER: Duration = Duration::from_secs(2);
/// What an audio sink is assumed to cost: it always goes, video gets the rest.
const AUDIO_BPS: u64 = 50_000;

impl Router {
    /// Measure each layer's and each endpoint's bit rate over the last interval.
    pub(super) fn measure_rates(&mut self) {
        let now = self.now;
        if now.saturating_duration_since(self.last_measure) < MEASURE_INTERVAL {
            return;
        }
        let secs = now.saturating_duration_since(self.last_measure).as_secs_f64();
        self.last_measure = now;
        for endpoint in self.endpoints.values_mut() {
            endpoint.sent_bps = (std::mem::take(&mut endpoint.sent_bytes) as f64 * 8.0 / secs) as u64;
        }
        for room in self.rooms.values_mut() {
            for source in room.sources.values_mut() {
                for layer in source.layers.iter_mut() {
                    layer.bps = (std::mem::take(&mut layer.bytes) as f64 * 8.0 / secs) as u64;
                }
            }
        }
    }

    /// Send each subscriber only `share` of the video it shows (its media thread is behind,
    /// ADR 0021): the allocator steps layers down and pauses tiles, least important first,
    /// as for a low bandwidth estimate; audio is never touched. 1.0 lifts it.
    pub fn shed_video(&mut self, share: f64) {
        self.video_share = share.clamp(0.0, 1.0);
        self.allocate_bandwidth();
    }

    /// Fit each subscriber's video into its bandwidth estimate (and the share its media
    /// thread can carry, `shed_video`).
    pub(super) fn allocate_bandwidth(&mut self) {
        let now = self.now;
        let shedding = self.video_share < 1.0;
        // Endpoints with an estimate; while shedding (and once after, to lift the caps it
        // left) the others too. Relay links are never shed: the next node chooses for
        // its own viewers.
        let ids: Vec<SessionId> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                e.estimate.is_some()
                    || ((shedding || e.sinks.values().any(|s| s.cap.is_some()))
                        && e.sinks.values().all(|s| s.strategy != super::Strategy::Relay))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(endpoint) = self.endpoints.get_mut(&id) else { continue };
            let Some(room) = self.rooms.get(&endpoint.room) else { continue };
            let estimate = endpoint.estimate;
            // Audio sinks whose source is selected (a sink keeps a source top-N dropped
            // until it is reused, and sends nothing of it).
            let audio_bps = AUDIO_BPS
                * endpoint
                    .sinks
                    .values()
                    .filter(|s| {
                        s.kind == TrackKind::Audio && s.source.is_some_and(|k| room.audio.is_selected(k))
                    })
                    .count() as u64;
            // (place in the client's list, mid, the track as the allocator sees it, its
            // current cap), sorted so ties (every track of a client without a list) keep one
            // order for all three.
            let mut shown: Vec<(usize, Mid, AllocTrack, Option<u8>)> = Vec::new();
            for (mid, sink) in &endpoint.sinks {
                let Some(source) = sink.source.and_then(|k| room.sources.get(&k)) else { continue };
                if sink.kind != TrackKind::Video {
                    continue;
                }
                let arriving = source.arriving(now);
                let layer_bps = std::array::from_fn(|l| {
                    if !arriving[l] {
                        0
                    } else if source.layers[l].bps > 0 {
                        source.layers[l].bps
                    } else {
                        NOMINAL_LAYER_BPS[l]
                    }
                });
                let priority = if source.track.source == TrackSource::Screen {
                    Priority::Screen
                } else if sink.source.map(|k| k.0) == room.dominant {
                    Priority::Speaker
                } else {
                    Priority::Normal
                };
                let track = AllocTrack { priority, wanted: choose_layer(sink.wanted, arriving), layer_bps };
                // Never allocated yet: start from what it wants (step down if it must),
                // rather than creep up from nothing.
                shown.push((sink.order, *mid, track, sink.cap.unwrap_or(Some(MAX_LAYERS as u8 - 1))));
            }
            shown.sort_unstable_by_key(|(order, mid, _, _)| (*order, *mid));
            let mids: Vec<Mid> = shown.iter().map(|(_, mid, _, _)| *mid).collect();
            let current: Vec<Option<u8>> = shown.iter().map(|(_, _, _, cap)| *cap).collect();
            let tracks: Vec<AllocTrack> = shown.into_iter().map(|(_, _, track, _)| track).collect();
            let desired: u64 = audio_bps
                + tracks.iter().filter_map(|t| t.wanted.map(|w| t.layer_bps[w as usize])).sum::<u64>();
            // An estimate above what is actually sent says nothing is congested: GCC cannot
            // see capacity it is not using, so its estimate of an application-limited path
            // only tracks the send rate. Then what is allocated now may stay; only an
            // estimate below the send rate steps layers down.
            let current_cost: u64 = tracks
                .iter()
                .zip(&current)
                .filter_map(|(t, c)| c.zip(t.wanted).map(|(l, w)| t.layer_bps[l.min(w) as usize]))
                .sum();
            let budget = match estimate {
                Some(e) if e >= endpoint.sent_bps => e.max(current_cost + audio_bps),
                Some(e) => e,
                None => u64::MAX,
            };
            let budget = if shedding {
                let video = (desired.saturating_sub(audio_bps) as f64 * self.video_share) as u64;
                budget.min(audio_bps + video)
            } else {
                budget
            };
            let mut allocation = allocate(budget.saturating_sub(audio_bps), &tracks, &current);
            if estimate.is_none() && !shedding {
                // Nothing to fit any more: no caps.
                allocation = vec![Some(MAX_LAYERS as u8 - 1); tracks.len()];
            }
            let mut keyframes = Vec::new();
            let mut paused = 0;
            let mut told = Vec::new();
            let wanted: Vec<bool> = tracks.iter().map(|t| t.wanted.is_some()).collect();
            for ((mid, cap), wanted) in mids.into_iter().zip(allocation).zip(wanted) {
                let Some(sink) = endpoint.sinks.get_mut(&mid) else { continue };
                sink.cap = if estimate.is_none() && !shedding { None } else { Some(cap) };
                if cap.is_none() {
                    paused += 1;
                    sink.current = None;
                }
                let source = sink.source.and_then(|k| room.sources.get(&k));
                // The subscriber shows a paused track as paused, not frozen: tell it.
                // (A track with nothing arriving to take is not paused for bandwidth.)
                let pause =
                    (sink.cap == Some(None) && wanted).then(|| source.map(|s| s.track.id.clone())).flatten();
                if pause != sink.told_paused {
                    if let Some(track_id) = std::mem::replace(&mut sink.told_paused, pause.clone()) {
                        told.push(SessionEvent::TrackPaused { track_id, paused: false, reason: "" });
                    }
                    if let Some(track_id) = pause {
                        let reason = if shedding { "load" } else { "bandwidth" };
                        told.push(SessionEvent::TrackPaused { track_id, paused: true, reason });
                    }
                }
                let Some(source) = source else { continue };
                let target = sink.choose_target(source.arriving(now));
                if target != sink.target {
                    sink.target = target;
                    if let (Some(layer), Some(key)) = (target, sink.source)
                        && sink.current != target
                    {
                        keyframes.push((key, layer));
                    }
                }
            }
            if paused > 0 {
                if shedding {
                    self.metrics.paused_by_load.inc_by(paused);
                } else {
                    self.metrics.paused_by_bandwidth.inc_by(paused);
                }
            }
            // A sink whose source went was told its pause ends (its tile shows another
            // track, or none).
            for sink in endpoint.sinks.values_mut().filter(|s| s.source.is_none()) {
                if let Some(track_id) = sink.told_paused.take() {
                    told.push(SessionEvent::TrackPaused { track_id, paused: false, reason: "" });
                }
            }
            for event in told {
                self.emit(id, event);
            }
            for (key, layer) in keyframes {
                self.request_keyframe(key, layer, now);
            }
        }
    }

    /// Tell a simulcast publisher which layers someone takes, so it stops encoding the
    /// others: a layer is paused after nobody wanted it or was sent it for
    /// `LAYER_PAUSE_AFTER`, and resumed as soon as someone wants it. The lowest layer always
    /// stays on, for a fast start.
    pub(super) fn pause_unneeded_layers(&mut self, key: SourceKey, now: Instant) {
        let Some(room) = self.endpoints.get(&key.0).and_then(|e| self.rooms.get_mut(&e.room)) else { return };
        let Some(source) = room.sources.get(&key) else { return };
        let offered = source.offered();
        if offered.iter().filter(|o| **o).count() < 2 {
            return;
        }
        let mut needed = [false; MAX_LAYERS];
        for Fed { sink: (sink_endpoint, sink_mid), .. } in &source.sinks {
            let Some(sink) = self.endpoints.get(sink_endpoint).and_then(|e| e.sinks.get(sink_mid)) else {
                continue;
            };
            if sink.strategy == super::Strategy::Relay {
                // The next node chooses for its own viewers: it needs every layer.
                needed = offered;
            } else {
                if let Some(l) = choose_layer(sink.wanted, offered) {
                    needed[l as usize] = true;
                }
                // The layer it is sent now, until it switches (at a keyframe of the one it
                // wants, which an encoder may take seconds to start): without it the sink
                // would fall to the lowest layer meanwhile.
                if let Some(sent) = sink.current.and_then(|l| needed.get_mut(l as usize)) {
                    *sent = true;
                }
            }
        }
        let lowest = offered.iter().position(|o| *o).unwrap_or(0);
        needed[lowest] = true;
        let Some(source) = room.sources.get_mut(&key) else { return };
        let mut changed = false;
        for (l, layer) in source.layers.iter_mut().enumerate() {
            if !offered[l] {
                continue;
            }
            if needed[l] {
                layer.unneeded_since = None;
                changed |= std::mem::replace(&mut layer.paused, false);
            } else {
                let since = *layer.unneeded_since.get_or_insert(now);
                if !layer.paused && now.saturating_duration_since(since) >= LAYER_PAUSE_AFTER {
                    layer.paused = true;
                    changed = true;
                }
            }
        }
        if changed {
            let active: Vec<String> = source
                .layers
                .iter()
                .filter(|l| l.ssrc.is_some() && !l.paused)
                .filter_map(|l| l.rid.map(|r| r.to_string()))
                .collect();
            let track_id = source.track.id.clone();
            self.metrics.layer_pauses.inc();
            self.emit(key.0, SessionEvent::Layers { track_id, active });
        }
    }

    /// Choose again the layer each sink of a source should carry, from what arrives now.
    pub(super) fn retarget_layers(&mut self, key: SourceKey, now: Instant) {
        let Some(room) = self.endpoints.get(&key.0).and_then(|e| self.rooms.get(&e.room)) else { return };
        let Some(source) = room.sources.get(&key) else { return };
        if source.track.kind != TrackKind::Video {
            return;
        }
        let arriving = source.arriving(now);
        let mut keyframes = Vec::new();
        for Fed { sink: (sink_endpoint, sink_mid), .. } in &source.sinks {
            let Some(sink) = self.endpoints.get_mut(sink_endpoint).and_then(|e| e.sinks.get_mut(sink_mid))
            else {
                continue;
            };
            let target = sink.choose_target(arriving);
            if target != sink.target {
                sink.target = target;
                if let Some(layer) = target
                    && sink.current != target
                    && !keyframes.contains(&layer)
                {
                    keyframes.push(layer);
                }
            }
        }
        for layer in keyframes {
            self.request_keyframe(key, layer, now);
        }
    }
}
