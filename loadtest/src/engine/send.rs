//! What a media thread sends: each publisher's audio and camera frames, stamped when they
//! are written and given to the engine at once.

use std::cmp::Reverse;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::Rid;
use str0m::rtp::{ExtensionValues, RtpWrite};

use super::{Client, Due, Worker, tx_stream};
use crate::expect::StreamKind;
use crate::media::{AUDIO_FRAME, DTX_INTERVAL, PacketPlan, STAMP_LEN, Stamp, Vp8Packetizer};

impl Worker {
    /// The speaker rotation: which audio publishers talk now.
    pub(super) fn talking(&self, slot: usize, now: Instant) -> bool {
        let plan = &self.scenario.audio;
        if plan.speakers == 0 || plan.publishers == 0 {
            return false;
        }
        let turn = (now.duration_since(self.shared.epoch).as_secs_f64() / plan.rotate_s) as usize;
        let first = (turn * plan.speakers) % plan.publishers;
        (slot + plan.publishers - first) % plan.publishers < plan.speakers
    }

    pub(super) fn send_audio(&mut self, id: u32, due: Instant, now: Instant) {
        let slot = self.clients.get(&id).map(|c| c.setup.slot);
        let talking = slot.is_some_and(|s| self.talking(s, now));
        let top_n = self.scenario.audio_top_n();
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(audio) = client.audio.as_mut() else { return };
        if audio.tx.is_none() {
            audio.tx = tx_stream(&mut client.rtc, audio.mid, None, Codec::Opus);
        }
        let next = if talking { AUDIO_FRAME } else { DTX_INTERVAL };
        self.timers.push(Reverse((due + next, id, Due::Audio)));
        let Some((ssrc, pt)) = audio.tx else { return };
        let frame = if talking {
            audio.frame = (audio.frame + 1) % self.opus.voice.len();
            &self.opus.voice[audio.frame]
        } else {
            &self.opus.silence
        };
        // With top-N audio only talking is forwarded, and not a turn's very start.
        let expected = audio.turn.expected(talking, now) || !top_n;
        let (kind, seq) = if expected {
            (StreamKind::Talk, &mut audio.seq[0])
        } else {
            (StreamKind::Unexpected, &mut audio.seq[1])
        };
        let stream = kind.id(id);
        let sent_us = self.shared.us(now);
        let stamp = Stamp { stream, seq: *seq, sent_us };
        self.payload.clear();
        self.payload.resize(STAMP_LEN, 0);
        stamp.write(&mut self.payload);
        self.payload.extend_from_slice(&frame.bytes);
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level.min(127) as i8)),
            voice_activity: Some(talking),
            ..Default::default()
        };
        let samples = (next.as_millis() as u32) * 48;
        let mut api = client.rtc.direct_api();
        if let Some(tx) = api.stream_tx(&ssrc) {
            tx.write_rtp(
                RtpWrite::new(pt, audio.rtp_seq.into(), audio.ts, now, self.payload.as_slice())
                    .ext_vals(ext)
                    .marker(false),
            );
            self.shared.note_sent(stream, *seq, sent_us);
            self.counts.packets_sent += 1;
            *seq += 1;
            audio.rtp_seq += 1;
        }
        audio.ts = audio.ts.wrapping_add(samples);
    }

    /// A camera frame due at `due`: each layer whose frame is due then is written (a
    /// simulcast encoder makes all its layers of a frame at once; q at 15 fps is in every
    /// other one), and the camera's timer set for the next layer due.
    pub(super) fn send_camera(&mut self, id: u32, due: Instant, now: Instant) {
        let Some(video) = self.clients.get(&id).and_then(|c| c.video.as_ref()) else { return };
        let layers = video.layers.len();
        for index in 0..layers {
            self.send_video(id, index, due, now);
        }
        let Some(video) = self.clients.get(&id).and_then(|c| c.video.as_ref()) else { return };
        if let Some(next) = video.layers.iter().filter_map(|l| l.next_frame).min() {
            self.timers.push(Reverse((next, id, Due::Camera)));
        }
    }

    /// Layer `index`'s frame, if it is due by `due`.
    fn send_video(&mut self, id: u32, index: usize, due: Instant, now: Instant) {
        let Some(Client { rtc, video: Some(video), .. }) = self.clients.get_mut(&id) else { return };
        let (mid, simulcast) = (video.mid, video.simulcast);
        let Some(layer) = video.layers.get_mut(index) else { return };
        let Some(frame_due) = layer.next_frame.filter(|at| *at <= due) else { return };
        layer.next_frame = Some(frame_due + layer.shape.frame_interval());
        if layer.tx.is_none() {
            let rid = simulcast.then(|| Rid::from(layer.shape.rid));
            layer.tx = tx_stream(rtc, mid, rid, Codec::Vp8);
        }
        let frame_ticks = 90_000 / layer.shape.fps;
        let Some((ssrc, pt)) = layer.tx.filter(|_| !layer.paused) else {
            // A paused encoder's clock runs on: the next frame's timestamp shows the pause.
            layer.ts = layer.ts.wrapping_add(frame_ticks);
            return;
        };
        let keyframe = layer.keyframes.next_is_keyframe();
        layer.packetizer.next_frame(keyframe);
        let size = if keyframe { layer.sizes.1 } else { layer.sizes.0 };
        let plans: Vec<PacketPlan> = Vp8Packetizer::plan(size).collect();
        let sent_us = self.shared.us(now);
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx(&ssrc) else { return };
        for plan in plans {
            let stamp = Stamp { stream: layer.stream, seq: layer.seq, sent_us };
            layer.packetizer.write(plan, keyframe, stamp, &layer.shape, &mut self.payload);
            tx.write_rtp(
                RtpWrite::new(pt, layer.rtp_seq.into(), layer.ts, now, self.payload.as_slice())
                    .marker(plan.last)
                    .nackable(true),
            );
            self.shared.note_sent(layer.stream, layer.seq, sent_us);
            self.counts.packets_sent += 1;
            layer.seq += 1;
            layer.rtp_seq += 1;
        }
        layer.ts = layer.ts.wrapping_add(frame_ticks);
    }
}
