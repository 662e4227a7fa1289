//! What a media thread does with what it reads: a batch per system call from a client's
//! socket or the thread's shared one, each datagram opened by our own SRTP path or fed to
//! the client's engine, and each media packet measured.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Token;
use str0m::Input;
use str0m::net::{Protocol, Receive};

use super::{
    Media, RxStream, RxTrack, UNSET, Until, Worker, contained, expected_since, ms_since, second_entry,
};
use crate::expect::StreamKind;
use crate::media::{FirstFrame, find_any_stamp, vp8_is_keyframe_start};
use crate::net::RecvBatch;
use crate::srtp::NotOpened;
use crate::stats::window_index;

/// The thread's shared socket, when its clients share one.
pub(super) const SHARED: Token = Token(usize::MAX - 1);
/// Batches read from one socket before the timers run again: a server that stalled and
/// then sent its backlog at once left 20,000 datagrams to read in one go (75 ms), and
/// the media timers waited behind them.
const BATCHES_PER_TURN: usize = 32;
/// Clients on a shared socket each send from an address of their own: 127.1.0.1 on.
const FIRST_ADDRESS: u32 = 0x7f01_0001;

/// The loopback address client `serial` sends from on a shared socket.
pub fn address_of(serial: u32) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_ADDRESS + serial)
}

/// The client a shared socket's datagram to `address` is for.
fn serial_of(address: Ipv4Addr) -> Option<u32> {
    u32::from(address).checked_sub(FIRST_ADDRESS).filter(|s| *s < 0x00fe_0000)
}

/// Where a receiver measures the stream last received on an SSRC, kept with the SSRC in
/// our own SRTP path: the server may move another camera or layer onto the SSRC, so it holds
/// while `stream` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Noted {
    /// The measurement stream id.
    stream: u32,
    /// Its place in `Client::rx`.
    rx: u32,
    /// Its camera's place in `Client::rx_tracks`, or UNSET for audio.
    track: u32,
}

impl Noted {
    /// In 64 bits: the stream id, then each place plus one in 16 bits (0: nothing noted,
    /// and no track). Places past 16 bits are not noted (they are found by lookup).
    fn pack(self) -> u64 {
        let fits = |place: u32| place.checked_add(1).filter(|p| *p <= 0xffff).map(u64::from);
        let track = if self.track == UNSET { Some(0) } else { fits(self.track) };
        match (fits(self.rx), track) {
            (Some(rx), Some(track)) => u64::from(self.stream) | rx << 32 | track << 48,
            _ => 0,
        }
    }

    fn unpack(note: u64) -> Option<Self> {
        let rx = ((note >> 32) & 0xffff) as u32;
        let track = (note >> 48) as u32;
        (rx != 0).then(|| Noted {
            stream: note as u32,
            rx: rx - 1,
            track: if track == 0 { UNSET } else { track - 1 },
        })
    }
}

impl Worker {
    /// Read what a socket holds, a batch per system call: a client's own socket (`token`
    /// is its serial) or the thread's shared one (`SHARED`: each datagram's destination
    /// address names its client). Media of the streams our own SRTP path has learned is
    /// opened and measured here, the rest feeds the client's engine. Returns how many
    /// datagrams it read, and whether the socket may hold more (it stopped at
    /// `BATCHES_PER_TURN`: no new readiness event comes for what is already there).
    pub(super) fn receive(&mut self, token: Token, batch: &mut RecvBatch) -> (usize, bool) {
        // The engine holds one received RTP packet until polled, so each datagram is
        // polled up to its packet; the rest of the output (feedback, the next timeout, a
        // walk over every part of the engine) waits for the end of the batch.
        let mut undrained = std::mem::take(&mut self.undrained);
        let mut datagrams = 0;
        let mut more = false;
        for turn in 1.. {
            let received = if token == SHARED {
                self.shared_socket.as_ref().map(|s| batch.receive(s))
            } else {
                self.clients.get(&(token.0 as u32)).and_then(|c| c.socket.as_ref()).map(|s| batch.receive(s))
            };
            let Some(Ok(count)) = received else { break };
            let now = Instant::now();
            for i in 0..count {
                let id = if token == SHARED {
                    match batch.destination_v4(i).and_then(serial_of) {
                        Some(id) => id,
                        None => continue,
                    }
                } else {
                    token.0 as u32
                };
                self.arrival = batch.arrival_ns(i).map(|ns| self.instant_of(ns, now));
                // One message may carry a server's whole GSO send (`take_whole_sends`).
                let (source, message, segment) = batch.datagram_mut(i);
                let mut pending = false;
                for datagram in message.chunks_mut(segment) {
                    pending |= self.take_datagram(id, source, datagram, now);
                    datagrams += 1;
                }
                if pending {
                    undrained.push(id);
                }
                self.arrival = None;
            }
            // A short batch means the socket was empty when read; new datagrams raise a new event.
            if count < RecvBatch::SIZE {
                break;
            }
            // Bounded by datagrams too: a message may hold a whole GSO send.
            if turn == BATCHES_PER_TURN || datagrams >= BATCHES_PER_TURN * RecvBatch::SIZE {
                more = true;
                break;
            }
        }
        undrained.sort_unstable();
        undrained.dedup();
        for id in undrained.drain(..) {
            self.drain(id);
        }
        self.undrained = undrained;
        (datagrams, more)
    }

    /// One received datagram of client `id`: opened by our own path, or fed to the engine
    /// and polled up to its packet; true when the engine has output left to poll.
    pub(super) fn take_datagram(
        &mut self,
        id: u32,
        source: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) -> bool {
        let Some(client) = self.clients.get_mut(&id) else { return false };
        if let Some(srtp) = client.srtp.as_mut() {
            match srtp.open(data) {
                Ok(opened) => {
                    self.counts.opened_own += 1;
                    let media = Media {
                        payload: opened.payload,
                        len: opened.payload_len,
                        timestamp: opened.timestamp,
                        seq: opened.seq,
                        marker: opened.marker,
                        slot: Some((opened.slot, opened.note)),
                    };
                    self.on_media(id, media, now);
                    return false;
                }
                Err(NotOpened::NotOurs) => {}
                Err(why) => {
                    if client.srtp_refused == 0 {
                        client.errors.push(format!("own SRTP path: a media datagram was {why:?}"));
                    }
                    client.srtp_refused += 1;
                    return false;
                }
            }
        }
        let Ok(receive) = Receive::new(Protocol::Udp, source, client.local, data) else { return false };
        let rtc = &mut client.rtc;
        match contained(&mut client.errors, || rtc.handle_input(Input::Receive(now, receive))) {
            Some(Ok(())) => self.drain_until(id, Until::Packet),
            Some(Err(_)) => false,
            None => {
                self.fail(id);
                false
            }
        }
    }

    /// A kernel arrival time (realtime ns) on the run's clock, never after `now`.
    pub(super) fn instant_of(&self, realtime_ns: u64, now: Instant) -> Instant {
        let (base, base_ns) = self.clocks;
        let at = match realtime_ns.checked_sub(base_ns) {
            Some(after) => base + Duration::from_nanos(after),
            None => base.checked_sub(Duration::from_nanos(base_ns - realtime_ns)).unwrap_or(base),
        };
        at.min(now)
    }

    /// A received media packet, opened by str0m or by our own path: count it, time it, and
    /// follow its camera's frames. `fallback` is when it arrived if the kernel gave no stamp.
    pub(super) fn on_media(&mut self, id: u32, media: Media<'_>, fallback: Instant) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        // The payload tells audio from video (no lookup of the stream and its m-line
        // per packet); the stamp's stream id must agree.
        let Some((stamp, video)) = find_any_stamp(media.payload) else { return };
        let Some(sent) = self.shared.streams.get(stamp.stream as usize) else { return };
        let (owner, kind) = StreamKind::of(stamp.stream);
        if video != matches!(kind, StreamKind::Video(_)) {
            return;
        }
        // When it reached this client's socket (the kernel's stamp), which is when
        // it arrived, however long this thread took to get to it.
        let now = self.arrival.unwrap_or(fallback);
        let received_us = self.shared.us(now);
        self.counts.packets_received += 1;
        self.counts.bytes_received += media.len as u64;
        if client.join_ms.is_none() && client.setup.join_measurable {
            client.join_ms = Some(now.duration_since(client.setup.ws_open_at).as_secs_f64() * 1000.0);
        }
        let latency_us = received_us.saturating_sub(stamp.sent_us);
        let second = received_us / 1_000_000;
        let entry = second_entry(&mut self.seconds, second);
        entry.0 += 1;
        entry.1 += media.len as u64;
        entry.2.record(latency_us);
        // Where this stream and its camera are measured: known from the last packet on the
        // same SSRC, unless the server moved another stream onto it.
        let known = media.slot.and_then(|(_, note)| Noted::unpack(note)).filter(|n| n.stream == stamp.stream);
        let (rx_at, track_at) = match known {
            Some(noted) => (noted.rx, noted.track),
            None => {
                let rx = client.rx.place_of(stamp.stream, RxStream::default);
                let track = match kind {
                    StreamKind::Video(layer) => {
                        let (shared, view) = (&self.shared, client.view.as_ref());
                        let (slots, last_offer_at) = (&client.slots, client.last_offer_at);
                        client.rx_tracks.place_of(owner, || RxTrack {
                            layer,
                            first_keyframe_ms: None,
                            first_frame_ms: None,
                            assembling: None,
                            switch: None,
                            started: expected_since(shared, view, slots, owner)
                                .map_or(last_offer_at, |t| t.max(last_offer_at)),
                        })
                    }
                    _ => UNSET,
                };
                if let (Some((slot, _)), Some(srtp)) = (media.slot, client.srtp.as_mut()) {
                    srtp.note(slot, Noted { stream: stamp.stream, rx, track }.pack());
                }
                (rx, track)
            }
        };
        if let Some(seconds) = client.followed.as_mut()
            && self.shared.in_window(received_us)
        {
            let at = ((received_us - self.shared.window_start_us()) / 1_000_000) as usize;
            if seconds.len() <= at {
                seconds.resize(at + 1, [0; 6]);
            }
            let second = &mut seconds[at];
            match kind {
                StreamKind::Video(layer) => {
                    second[layer.min(2)] += media.len as u64;
                    second[4] |= 1 << (owner % 64);
                }
                _ => second[3] += 1,
            }
            second[5] = second[5].max(client.paused_tiles.len() as u64);
        }
        let Some(rx) = client.rx.at_mut(rx_at, stamp.stream) else { return };
        rx.jitter.record(stamp.sent_us, received_us);
        if self.shared.in_window(received_us) {
            rx.last_in_window_us = Some(received_us);
        }
        // Back from another layer of the same camera: the server had moved the tile.
        let returned = match kind {
            StreamKind::Video(layer) => {
                client.rx_tracks.at_mut(track_at, owner).is_some_and(|t| t.layer != layer)
            }
            _ => false,
        };
        if self.shared.in_window(stamp.sent_us) {
            self.latency.record(latency_us);
            if self.arrival.is_some() {
                self.receive_queue.record(now.elapsed().as_micros() as u64);
            }
            if rx.first.is_none() {
                rx.first = Some(sent.first.load(Ordering::Relaxed)).filter(|f| *f != UNSET);
            }
            if let Some(first) = rx.first
                && let Some(index) = window_index(stamp.seq, first)
            {
                rx.delivery.record(index);
                if returned {
                    rx.delivery.start_run(index);
                }
            }
        }
        if let StreamKind::Video(layer) = kind
            && let Some(track) = client.rx_tracks.at_mut(track_at, owner)
        {
            let keyframe = vp8_is_keyframe_start(media.payload);
            if track.first_frame_ms.is_none() {
                let (ts, seq) = (media.timestamp, media.seq);
                if keyframe && track.assembling.as_ref().is_none_or(|a| a.timestamp() != ts) {
                    track.assembling = Some(FirstFrame::new(ts, seq));
                }
                if let Some(frame) = track.assembling.as_mut()
                    && frame.add(ts, seq, media.marker)
                {
                    track.first_frame_ms = Some(ms_since(track.started, now));
                    track.assembling = None;
                }
            }
            if keyframe {
                if track.first_keyframe_ms.is_none() {
                    track.first_keyframe_ms = Some(ms_since(track.started, now));
                }
                if let Some((asked, from)) = track.switch
                    && from != layer
                {
                    client.switch_keyframe_ms.push(ms_since(asked, now));
                    track.switch = None;
                }
            }
            track.layer = layer;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_keeps_the_places_that_fit() {
        for noted in [
            Noted { stream: 0, rx: 0, track: UNSET },
            Noted { stream: u32::MAX - 1, rx: 0xfffe, track: 0xfffe },
            Noted { stream: 12, rx: 3, track: 0 },
        ] {
            assert_eq!(Noted::unpack(noted.pack()), Some(noted));
        }
        assert_eq!(Noted::unpack(0), None, "nothing noted yet");
        assert_eq!(Noted { stream: 1, rx: 0xffff, track: 0 }.pack(), 0, "too far to note");
        assert_eq!(Noted { stream: 1, rx: 2, track: 0xffff }.pack(), 0, "a camera too far to note");
    }

    #[test]
    fn each_client_has_an_address_of_its_own() {
        assert_eq!(address_of(0), Ipv4Addr::new(127, 1, 0, 1));
        for serial in [0, 1, 255, 256, 70_000] {
            assert_eq!(serial_of(address_of(serial)), Some(serial));
        }
        assert_eq!(serial_of(Ipv4Addr::new(127, 0, 0, 1)), None, "not a client's");
    }
}
