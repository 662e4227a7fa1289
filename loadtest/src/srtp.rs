//! The generator's own SRTP receive side (docs/loadtest.md, *The receive path*): it reads
//! the session keys out of each client's DTLS handshake and opens received media itself,
//! so a media datagram costs a header parse and one AES-GCM open instead of a pass
//! through a whole WebRTC engine. It shares no code with the server it measures.
//!
//! - **Keys.** Every client's engine is built with [`crypto_provider`]: str0m's own crypto,
//!   its DTLS wrapped so that when a handshake exports the DTLS-SRTP keying material
//!   (RFC 5764 §4.2) a copy is kept on the thread, tagged with the client the engine was
//!   built for ([`building_for`] names it first). The worker takes it at that client's
//!   `Connected` with [`take_keys`].
//! - **Session keys** come from the master key and salt by the AES-CM key derivation of
//!   RFC 3711 §4.3.1 (key derivation rate 0), as RFC 7714 §11 asks for the GCM profiles.
//! - **Opening** (RFC 7714 §8): AEAD_AES_128_GCM with the RTP header as associated data,
//!   and the IV from the session salt, the SSRC and the packet's index. The index's
//!   rollover counter is guessed from the highest index seen (RFC 3711 §3.3.1), starting
//!   from the extended sequence number str0m gave for the stream's first packet.
//! - **Reading** what the generator measures: a datagram's tag is checked (and the whole
//!   payload decrypted) for one in [`CHECK_EVERY`] datagrams of a client, for every short
//!   one and every padded one; the others have only the first [`PREFIX`] bytes of their
//!   payload decrypted, where the stamp, the VP8 descriptor and frame tag are (GCM's body is
//!   AES in counter mode from the counter block after the tag's, so a prefix is a block or
//!   three of AES). A server that damages or misnumbers packets is still caught by the
//!   checked ones and by stamps that do not read.
//!
//! The GCM profiles are handled (AEAD_AES_256_GCM is what Huiyi and str0m agree on, RFC
//! 7714 §14.2 for its key derivation with AES-256); a session with AES-CM and HMAC-SHA1
//! stays on str0m's path. There is no replay window: the generator
//! measures what arrives, and a duplicate is counted by the delivery counter as one.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion, SrtpProfile,
};

const SALT_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// One datagram in this many has its tag checked and its whole payload decrypted.
pub const CHECK_EVERY: u32 = 16;
/// The payload bytes decrypted of the others: the stamp after a VP8 descriptor and a
/// keyframe's frame header (5 + 10 + 18 bytes), in whole AES blocks.
pub const PREFIX: usize = 48;
/// RFC 3711 §4.3.1 labels for SRTP's encryption key and salt.
const LABEL_KEY: u8 = 0;
const LABEL_SALT: u8 = 2;
/// A thread keeps at most this many exports no `Connected` took (a failed client's).
const MAX_KEPT: usize = 256;

/// A client's exported keying material: client key, server key, client salt, server salt.
pub struct Keys {
    client: u32,
    profile: SrtpProfile,
    material: Vec<u8>,
    /// This end was the DTLS client: the peer's (server's) halves are the second ones.
    local_is_client: bool,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys {{ client: {}, profile: {:?}, .. }}", self.client, self.profile)
    }
}

thread_local! {
    static BUILDING: Cell<u32> = const { Cell::new(u32::MAX) };
    static EXPORTED: RefCell<Vec<Keys>> = const { RefCell::new(Vec::new()) };
}

/// Name the client whose engine this thread builds next: its DTLS exports are that client's.
pub fn building_for(client: u32) {
    BUILDING.with(|b| b.set(client));
}

/// The keys `client`'s handshake exported on this thread, if it did.
pub fn take_keys(client: u32) -> Option<Keys> {
    EXPORTED.with(|e| {
        let mut kept = e.borrow_mut();
        let at = kept.iter().position(|k| k.client == client)?;
        Some(kept.swap_remove(at))
    })
}

/// str0m's crypto, with a DTLS that keeps a copy of each handshake's SRTP keys.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let dtls: &'static KeepingDtls = Box::leak(Box::new(KeepingDtls { inner: base.dtls_provider }));
            Arc::new(CryptoProvider { dtls_provider: dtls, ..base })
        })
        .clone()
}

#[derive(Debug)]
struct KeepingDtls {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for KeepingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let client = BUILDING.with(|b| b.get());
        Ok(Box::new(KeepingInstance { dtls: self.inner.new_dtls(cert, now, version, mtu)?, client }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct KeepingInstance {
    dtls: Box<dyn DtlsInstance>,
    client: u32,
}

impl DtlsInstance for KeepingInstance {
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.dtls.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output {
            let keys = Keys {
                client: self.client,
                profile: *profile,
                material: material.to_vec(),
                local_is_client: self.dtls.is_active(),
            };
            EXPORTED.with(|e| {
                let mut kept = e.borrow_mut();
                if kept.len() >= MAX_KEPT {
                    kept.remove(0);
                }
                kept.push(keys);
            });
        }
        output
    }

    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active)
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

/// RFC 3711 §4.3.1 with a key derivation rate of 0: AES-CM under the master key, its
/// counter block the master salt (a 12-byte GCM salt padded to 14 on the right, RFC 7714
/// §11) with the label XORed into byte 7, and two zero bytes of block counter.
fn derive(master_key: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) -> Option<()> {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let aes = if master_key.len() == 32 { &AES_256 } else { &AES_128 };
    let key = EncryptingKey::ctr(UnboundCipherKey::new(aes, master_key).ok()?).ok()?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv))).ok()?;
    Some(())
}

/// A received SRTP packet, opened: the header fields the generator reads, and the plain
/// payload, whole or its first [`PREFIX`] bytes (see the module's *Reading*).
#[derive(Debug)]
pub struct Opened<'a> {
    /// The sequence number extended with the rollover counter (the SRTP index).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: &'a [u8],
    /// The whole payload's length.
    pub payload_len: usize,
    /// Where its stream is among those learned (a place that never changes), for `note`.
    pub slot: usize,
    /// What the receiver last noted with the stream (`SrtpIn::note`; 0 before that): kept
    /// beside the stream's state here, so reading it costs no lookup of its own.
    pub note: u64,
}

/// Why a datagram was not opened here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOpened {
    /// Not RTP, or an SSRC not learned yet: str0m's path takes it.
    NotOurs,
    /// Shorter than its header says, or its padding is longer than it.
    Malformed,
    /// The authentication tag does not match: damaged, or not under these keys.
    Refused,
}

/// The receiving side of one client's SRTP session.
pub struct SrtpIn {
    key: LessSafeKey,
    /// The same session key for AES in counter mode: a payload's prefix alone.
    ctr: EncryptingKey,
    salt: [u8; SALT_LEN],
    /// Datagrams opened since the last whose tag was checked.
    unchecked: u32,
    /// The streams learned so far: SSRC, the highest index opened, the receiver's note. A
    /// viewer has a few (audio, video; their repairs stay with str0m), so a scan is the
    /// fastest map.
    streams: Vec<(u32, u64, u64)>,
}

impl SrtpIn {
    /// The peer's sending keys from a client's export; None for a profile not handled.
    pub fn new(keys: &Keys) -> Option<Self> {
        let key_len = match keys.profile {
            SrtpProfile::AEAD_AES_128_GCM => 16,
            SrtpProfile::AEAD_AES_256_GCM => 32,
            _ => return None,
        };
        if keys.material.len() != 2 * (key_len + SALT_LEN) {
            return None;
        }
        let (key_halves, salt_halves) = keys.material.split_at(2 * key_len);
        // The peer's half: the server's (second) when this end was the DTLS client.
        let half = usize::from(keys.local_is_client);
        let master_key = &key_halves[half * key_len..][..key_len];
        let master_salt = &salt_halves[half * SALT_LEN..][..SALT_LEN];
        Self::from_master(master_key, master_salt)
    }

    /// From one direction's master key (16 or 32 bytes) and 12-byte master salt.
    fn from_master(master_key: &[u8], master_salt: &[u8]) -> Option<Self> {
        let mut session_key = [0u8; 32];
        let session_key = &mut session_key[..master_key.len()];
        let mut salt = [0u8; SALT_LEN];
        derive(master_key, master_salt, LABEL_KEY, session_key)?;
        derive(master_key, master_salt, LABEL_SALT, &mut salt)?;
        let (aead, aes) =
            if master_key.len() == 32 { (&AES_256_GCM, &AES_256) } else { (&AES_128_GCM, &AES_128) };
        let key = LessSafeKey::new(UnboundKey::new(aead, session_key).ok()?);
        let ctr = EncryptingKey::ctr(UnboundCipherKey::new(aes, session_key).ok()?).ok()?;
        Some(Self { key, ctr, salt, unchecked: 0, streams: Vec::new() })
    }

    /// Open `ssrc`'s packets here from now on; `seq` is the extended sequence number of a
    /// packet of it str0m opened (it knows the rollover counter the stream started with).
    pub fn learn(&mut self, ssrc: u32, seq: u64) {
        match self.streams.iter_mut().find(|(s, _, _)| *s == ssrc) {
            Some((_, highest, _)) => *highest = (*highest).max(seq),
            None => self.streams.push((ssrc, seq, 0)),
        }
    }

    /// Keep `note` with the stream at `slot` (an `Opened::slot`), returned with its packets.
    pub fn note(&mut self, slot: usize, note: u64) {
        if let Some((_, _, kept)) = self.streams.get_mut(slot) {
            *kept = note;
        }
    }

    /// Open a datagram in place if it is RTP of a learned stream.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Opened<'a>, NotOpened> {
        // RTP version 2, and not RTCP (RFC 5761 §4: payload types 64-95 with the marker
        // bit are RTCP's packet types 192-223).
        if datagram.len() < 12 || datagram[0] >> 6 != 2 || (64..96).contains(&(datagram[1] & 0x7f)) {
            return Err(NotOpened::NotOurs);
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let Some(stream) = self.streams.iter().position(|(s, _, _)| *s == ssrc) else {
            return Err(NotOpened::NotOurs);
        };
        let header_len = header_len(datagram).ok_or(NotOpened::Malformed)?;
        if datagram.len() < header_len + TAG_LEN {
            return Err(NotOpened::Malformed);
        }
        let seq16 = u16::from_be_bytes([datagram[2], datagram[3]]);
        let index = estimate_index(self.streams[stream].1, seq16);
        let roc = (index >> 16) as u32;
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq16.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        let (header, body) = datagram.split_at_mut(header_len);
        let padded = header[0] & 0x20 != 0;
        let sealed_len = body.len() - TAG_LEN;
        // Short and padded datagrams are always checked; one in CHECK_EVERY of the others.
        let always = padded || sealed_len <= 2 * PREFIX;
        if !always {
            self.unchecked += 1;
        }
        let (plain, payload_len) = if always || self.unchecked >= CHECK_EVERY {
            if !always {
                self.unchecked = 0;
            }
            let plain = self
                .key
                .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&*header), body)
                .map_err(|_| NotOpened::Refused)?;
            let payload_len = if padded {
                // Padding: its last byte counts the padding bytes, itself included.
                let pad = *plain.last().ok_or(NotOpened::Malformed)? as usize;
                plain.len().checked_sub(pad).filter(|_| pad > 0).ok_or(NotOpened::Malformed)?
            } else {
                plain.len()
            };
            (&plain[..payload_len], payload_len)
        } else {
            // GCM's body: AES-CTR from the counter block IV || 2 (1 is the tag's).
            let mut counter = [0u8; 16];
            counter[..12].copy_from_slice(&iv);
            counter[15] = 2;
            let prefix = &mut body[..PREFIX];
            let context = EncryptionContext::Iv128(FixedLength::from(counter));
            self.ctr.less_safe_encrypt(prefix, context).map_err(|_| NotOpened::Refused)?;
            (&*prefix, sealed_len)
        };
        let highest = &mut self.streams[stream].1;
        *highest = (*highest).max(index);
        Ok(Opened {
            seq: index,
            timestamp: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            marker: header[1] & 0x80 != 0,
            payload: plain,
            payload_len,
            slot: stream,
            note: self.streams[stream].2,
        })
    }
}

/// The RTP header's length: 12 bytes, the CSRCs, and the extension block if there is one.
fn header_len(packet: &[u8]) -> Option<usize> {
    let csrcs = (packet[0] & 0x0f) as usize;
    let mut len = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
    }
    (len <= packet.len()).then_some(len)
}

/// RFC 3711 §3.3.1: the index of a packet numbered `seq`, given the highest index seen:
/// the rollover counter of that one, or the one before or after, whichever puts `seq`
/// nearest to it.
fn estimate_index(highest: u64, seq: u16) -> u64 {
    let roc = highest >> 16;
    let last = (highest & 0xffff) as i64;
    let seq = seq as i64;
    let roc = if last < 0x8000 {
        if seq - last > 0x8000 { roc.wrapping_sub(1) } else { roc }
    } else if last - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    // A guessed roll back before 0 is no index at all; open it as the first roll.
    if roc == u64::MAX { seq as u64 } else { (roc << 16) | seq as u64 }
}

/// Two str0m engines in one process, the datagrams between them carried by hand: for the
/// tests and the benchmark of both receive paths (benches/receiving.rs).
pub mod pair {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use str0m::format::Codec;
    use str0m::media::{Direction, MediaKind, Mid, Pt};
    use str0m::net::{Protocol, Receive};
    use str0m::rtp::RtpWrite;
    use str0m::{Candidate, Event, Input, Output, Rtc};

    use super::{building_for, crypto_provider};

    pub struct Pair {
        pub now: Instant,
        pub sender: Rtc,
        pub receiver: Rtc,
        pub mid: Mid,
        sender_addr: SocketAddr,
        receiver_addr: SocketAddr,
    }

    fn engine(client: u32, addr: SocketAddr, now: Instant) -> Rtc {
        building_for(client);
        let mut rtc = Rtc::builder().set_rtp_mode(true).set_crypto_provider(crypto_provider()).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        rtc
    }

    /// Drain an engine: its datagrams, and its RTP packets as (seq, timestamp, marker, payload).
    pub fn drain(rtc: &mut Rtc, sent: &mut Vec<Vec<u8>>, media: &mut Vec<(u64, u32, bool, Vec<u8>)>) -> bool {
        let mut connected = false;
        loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(_) => return connected,
                Output::Transmit(t) => sent.push(t.contents.to_vec()),
                Output::Event(Event::Connected) => connected = true,
                Output::Event(Event::RtpPacket(p)) => {
                    media.push((*p.seq_no, p.header.timestamp, p.header.marker, p.payload.to_vec()))
                }
                Output::Event(_) => {}
            }
        }
    }

    impl Pair {
        /// A sender with one video track and a receiver, connected (ICE and DTLS done).
        pub fn connected(sender_id: u32, receiver_id: u32) -> Self {
            let now = Instant::now();
            let sender_addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
            let receiver_addr: SocketAddr = "10.0.0.2:6000".parse().unwrap();
            let mut sender = engine(sender_id, sender_addr, now);
            let mut receiver = engine(receiver_id, receiver_addr, now);
            let mut api = sender.sdp_api();
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            let answer = receiver.sdp_api().accept_offer(offer).unwrap();
            sender.sdp_api().accept_answer(pending, answer).unwrap();
            let mut pair = Pair { now, sender, receiver, mid, sender_addr, receiver_addr };
            let (mut sender_up, mut receiver_up) = (false, false);
            for _ in 0..500 {
                let (mut to_receiver, mut to_sender) = (Vec::new(), Vec::new());
                sender_up |= drain(&mut pair.sender, &mut to_receiver, &mut Vec::new());
                receiver_up |= drain(&mut pair.receiver, &mut to_sender, &mut Vec::new());
                for d in to_receiver {
                    pair.deliver(&d);
                }
                for d in to_sender {
                    let r = Receive::new(Protocol::Udp, pair.receiver_addr, pair.sender_addr, &d).unwrap();
                    pair.sender.handle_input(Input::Receive(pair.now, r)).unwrap();
                }
                if sender_up && receiver_up {
                    return pair;
                }
                pair.now += Duration::from_millis(5);
                pair.sender.handle_input(Input::Timeout(pair.now)).unwrap();
                pair.receiver.handle_input(Input::Timeout(pair.now)).unwrap();
            }
            panic!("the pair did not connect");
        }

        /// Hand the receiver a datagram from the sender.
        pub fn deliver(&mut self, datagram: &[u8]) {
            let r = Receive::new(Protocol::Udp, self.sender_addr, self.receiver_addr, datagram).unwrap();
            self.receiver.handle_input(Input::Receive(self.now, r)).unwrap();
        }

        /// The SRTP datagrams of VP8 packets numbered `seqs` (extended), as sent.
        pub fn send(&mut self, seqs: std::ops::Range<u64>) -> Vec<Vec<u8>> {
            self.send_sized(seqs, 200)
        }

        /// [`Pair::send`] with payloads of `len` bytes.
        pub fn send_sized(&mut self, seqs: std::ops::Range<u64>, len: usize) -> Vec<Vec<u8>> {
            let pt = {
                let config = self.sender.codec_config();
                let media = self.sender.media(self.mid).unwrap();
                let vp8 =
                    |pt: &Pt| config.find(|p| p.pt() == *pt).is_some_and(|p| p.spec().codec == Codec::Vp8);
                media.remote_pts().iter().copied().find(vp8).unwrap()
            };
            let ssrc = self.sender.direct_api().stream_tx_by_mid(self.mid, None).unwrap().ssrc();
            let mut datagrams = Vec::new();
            for seq in seqs {
                let payload: Vec<u8> = (0..len).map(|i| (seq as u8).wrapping_add(i as u8)).collect();
                let mut api = self.sender.direct_api();
                let ts = 3000 * seq as u32;
                let write =
                    RtpWrite::new(pt, seq.into(), ts, self.now, payload.as_slice()).marker(seq % 3 == 0);
                api.stream_tx(&ssrc).unwrap().write_rtp(write);
                drain(&mut self.sender, &mut datagrams, &mut Vec::new());
            }
            // The pacer lets them out as time passes.
            for _ in 0..100 {
                self.now += Duration::from_millis(2);
                self.sender.handle_input(Input::Timeout(self.now)).unwrap();
                drain(&mut self.sender, &mut datagrams, &mut Vec::new());
            }
            // RTP only (RFC 5761: RTCP has 64-95 in the payload type's place).
            datagrams.retain(|d| d[0] >> 6 == 2 && !(64..96).contains(&(d[1] & 0x7f)));
            datagrams
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn derives_rfc3711_test_vectors() {
        // RFC 3711 Appendix B.3 (AES-CM key derivation, 14-byte salt).
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut cipher_key = [0u8; 16];
        derive(&key, &salt, LABEL_KEY, &mut cipher_key).unwrap();
        assert_eq!(cipher_key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut cipher_salt = [0u8; 14];
        derive(&key, &salt, LABEL_SALT, &mut cipher_salt).unwrap();
        assert_eq!(cipher_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    }

    #[test]
    fn guesses_the_rollover_counter() {
        assert_eq!(estimate_index(10, 11), 11);
        assert_eq!(estimate_index(0xfff0, 0x0005), 0x1_0005, "a wrap forward");
        assert_eq!(estimate_index(0x1_0005, 0xfff0), 0xfff0, "a late packet from before the wrap");
        assert_eq!(estimate_index(0x2_8000, 0x7fff), 0x2_7fff);
        assert_eq!(estimate_index(5, 0xfff0), 0xfff0, "no roll before the first");
    }

    #[test]
    fn reads_header_lengths() {
        let mut p = vec![0x80u8; 40];
        assert_eq!(header_len(&p), Some(12));
        p[0] = 0x82;
        assert_eq!(header_len(&p), Some(20), "two CSRCs");
        p[0] = 0x90;
        p[14] = 0;
        p[15] = 2;
        assert_eq!(header_len(&p), Some(24), "an extension of two words");
        p[15] = 200;
        assert_eq!(header_len(&p), None, "an extension longer than the packet");
    }

    #[test]
    fn opens_what_str0m_opens_through_loss_reordering_and_a_wrap() {
        let mut pair = super::pair::Pair::connected(1001, 1002);
        let keys = take_keys(1002).expect("the receiver's handshake exported its keys");
        let mut own = SrtpIn::new(&keys).expect("a GCM profile");
        // Twelve packets across a sequence number wrap (65,530 to 65,541).
        let sent = pair.send(65_530..65_542);
        assert_eq!(sent.len(), 12);
        // The seventh is lost; the fourth and fifth arrive swapped.
        let order = [0, 1, 2, 4, 3, 5, 7, 8, 9, 10, 11];
        let (mut by_str0m, mut by_own) = (Vec::new(), Vec::new());
        for (n, &i) in order.iter().enumerate() {
            pair.deliver(&sent[i]);
            let mut got = Vec::new();
            super::pair::drain(&mut pair.receiver, &mut Vec::new(), &mut got);
            assert_eq!(got.len(), 1, "str0m opened datagram {i}");
            if n == 0 {
                // str0m opens a stream's first packet and tells us its rollover counter.
                let ssrc = u32::from_be_bytes(sent[i][8..12].try_into().unwrap());
                own.learn(ssrc, got[0].0);
            } else {
                let mut copy = sent[i].clone();
                let o = own.open(&mut copy).expect("our path opens it");
                // What it decrypted (the whole payload or its prefix), and the whole length.
                by_own.push((o.seq, o.timestamp, o.marker, o.payload.to_vec(), o.payload_len));
                let (seq, timestamp, marker, payload) = got.remove(0);
                let read = payload[..o.payload.len().min(payload.len())].to_vec();
                by_str0m.push((seq, timestamp, marker, read, payload.len()));
            }
        }
        assert_eq!(by_own, by_str0m, "both paths read the same packets");
        assert!(
            by_own.iter().any(|p| p.0 > 0xffff),
            "the wrap was crossed: {:?}",
            by_own.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        // RTCP and unlearned streams are not ours (a damaged packet: the next test).
        let mut rtcp = sent[11].clone();
        rtcp[1] = 200;
        assert_eq!(own.open(&mut rtcp).err(), Some(NotOpened::NotOurs));
        let mut other = sent[11].clone();
        other[8] ^= 0xff;
        assert_eq!(own.open(&mut other).err(), Some(NotOpened::NotOurs));
    }

    #[test]
    fn reads_the_prefix_of_most_and_checks_one_in_sixteen() {
        let mut pair = super::pair::Pair::connected(1003, 1004);
        let keys = take_keys(1004).expect("the receiver's handshake exported its keys");
        let mut own = SrtpIn::new(&keys).expect("a GCM profile");
        let sent = pair.send_sized(1..80, 1_200);
        let mut by_str0m = Vec::new();
        for d in &sent {
            pair.deliver(d);
            super::pair::drain(&mut pair.receiver, &mut Vec::new(), &mut by_str0m);
        }
        assert_eq!(by_str0m.len(), sent.len(), "str0m opened every one");
        let ssrc = u32::from_be_bytes(sent[0][8..12].try_into().unwrap());
        own.learn(ssrc, by_str0m[0].0);
        // Each reads as str0m read it: the header's fields, the length, the first bytes.
        for (d, (seq, timestamp, marker, payload)) in sent.iter().zip(&by_str0m).skip(1).take(40) {
            let mut copy = d.clone();
            let o = own.open(&mut copy).expect("opens");
            assert_eq!(
                (o.seq, o.timestamp, o.marker, o.payload_len),
                (*seq, *timestamp, *marker, payload.len())
            );
            assert!(o.payload.len() >= PREFIX, "at least the prefix: {}", o.payload.len());
            assert_eq!(o.payload, &payload[..o.payload.len()]);
        }
        // Damage in every one of the next sixteen: the one whose tag is checked is refused.
        let refused = sent[41..57]
            .iter()
            .filter(|d| {
                let mut damaged = (*d).clone();
                let last = damaged.len() - 1;
                damaged[last] ^= 1;
                own.open(&mut damaged).err() == Some(NotOpened::Refused)
            })
            .count();
        assert_eq!(refused, 1);
    }
}
