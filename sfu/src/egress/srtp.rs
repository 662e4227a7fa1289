//! SRTP for the forwarding fast path: session keys from the DTLS-SRTP keying material
//! (RFC 5764 §4.2, the AES-CM key derivation of RFC 3711 §4.3), RTP protection and
//! SRTCP unprotection with AEAD AES-GCM (RFC 7714). Only the GCM profiles are handled;
//! a session that negotiated AES-CM with HMAC-SHA1 keeps str0m's own send path.
//!
//! The cipher primitives are str0m's crypto provider's, the same ones str0m uses. Windows
//! of seen indexes (RFC 3711 §3.3.2) guard both directions: per SSRC we seal for, so no
//! SRTP index is sealed twice (a GCM nonce used twice under one key gives away the GHASH
//! key and the XOR of the two plaintexts), and per SSRC the peer sends SRTCP under, so a
//! replayed SRTCP packet is refused. Key material is zeroed when dropped and never printed.

use std::cell::Cell;
use std::fmt;

use str0m::config::CryptoProvider;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher};
use zeroize::Zeroize;

use crate::fasthash::FastMap;

/// Bytes of the GCM authentication tag appended to every protected packet.
pub const TAG_LEN: usize = 16;
const SALT_LEN: usize = 12;
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_SALT: u8 = 5;

/// 64-bit words of the window of sealed indexes per SSRC: 1,024 indexes, as far back as
/// the rewriter still numbers a late packet into its own place (`MAX_MISORDER` in
/// router/rtp/rewrite.rs). A seal further back than that is refused.
const SEALED_WINDOW_WORDS: usize = 16;
/// SSRCs one key seals for. Each send slot of a session has a media SSRC and at most one
/// RTX SSRC; a subscriber in a full room (300 participants, 6 tracks each) has under 3,600.
/// Past this a new SSRC is refused, never an old one forgotten: forgetting its window
/// would let its indexes be sealed again.
const MAX_SEALED_SSRCS: usize = 4096;
/// 64-bit words of the SRTCP replay window per sender SSRC (128 indexes; RFC 3711 asks
/// for at least 64).
const SRTCP_WINDOW_WORDS: usize = 2;
/// Sender SSRCs whose SRTCP windows one session keeps. A browser sends RTCP under one SSRC
/// per sending stream plus one for reception reports; renegotiations add more over a long
/// session. Past this the least recently heard is forgotten, rather than new ones refused:
/// refusing would leave the NACKs of a long session's new streams unanswered for good,
/// while forgetting only lets the forgotten SSRC's old packets be read again, which at
/// most makes us resend (once per packet per 100 ms, 64 per datagram, see egress/mod.rs);
/// str0m checks the same SRTCP against its own replay state.
pub const MAX_SRTCP_SENDERS: usize = 32;

/// Why a packet was not sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the packet does not fit the output buffer")]
    TooBig,
    #[error("shorter than an RTP header")]
    BadHeader,
    #[error("this SRTP index was sealed before, or is behind the window of sealed ones")]
    IndexUsed,
    #[error("more SSRCs than one key seals for")]
    TooManySsrcs,
    #[error("the cipher failed")]
    Cipher,
}

impl SealError {
    /// The label it is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            SealError::TooBig => "too_big",
            SealError::BadHeader => "bad_header",
            SealError::IndexUsed => "srtp_index_used",
            SealError::TooManySsrcs => "srtp_too_many_ssrcs",
            SealError::Cipher => "srtp_cipher_failed",
        }
    }
}

/// Why an SRTCP packet was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtcpError {
    #[error("shorter than an SRTCP packet")]
    Short,
    #[error("not encrypted (E bit clear)")]
    NotEncrypted,
    #[error("this SRTCP index was seen before, or is behind the replay window")]
    Replayed,
    #[error("did not authenticate")]
    Unauthenticated,
}

/// Which of the last `64 * W` indexes of one stream were seen: the highest one, and one
/// bit per index in a ring (bit `index % (64 * W)`).
#[derive(Clone, Copy)]
struct ReplayWindow<const W: usize> {
    highest: Option<u64>,
    ring: [u64; W],
}

impl<const W: usize> ReplayWindow<W> {
    const SIZE: u64 = 64 * W as u64;

    fn new() -> Self {
        Self { highest: None, ring: [0; W] }
    }

    fn bit(index: u64) -> (usize, u64) {
        let at = index % Self::SIZE;
        ((at / 64) as usize, 1 << (at % 64))
    }

    /// Whether `index` is unseen and recent enough to tell: above the highest, or inside
    /// the window with its bit clear.
    fn is_new(&self, index: u64) -> bool {
        match self.highest {
            None => true,
            Some(high) if index > high => true,
            Some(high) if high - index >= Self::SIZE => false,
            Some(_) => {
                let (word, mask) = Self::bit(index);
                self.ring[word] & mask == 0
            }
        }
    }

    fn mark(&mut self, index: u64) {
        match self.highest {
            Some(high) if index <= high => {
                if high - index >= Self::SIZE {
                    return;
                }
            }
            Some(high) => {
                // The bits of the indexes passed over held ones now out of the window.
                if index - high >= Self::SIZE {
                    self.ring = [0; W];
                } else {
                    for skipped in high + 1..index {
                        let (word, mask) = Self::bit(skipped);
                        self.ring[word] &= !mask;
                    }
                }
                self.highest = Some(index);
            }
            None => {
                self.ring = [0; W];
                self.highest = Some(index);
            }
        }
        let (word, mask) = Self::bit(index);
        self.ring[word] |= mask;
    }
}

enum Cipher {
    Gcm128(Box<dyn AeadAes128GcmCipher>),
    Gcm256(Box<dyn AeadAes256GcmCipher>),
}

impl Cipher {
    fn encrypt(&mut self, iv: &[u8; 12], aad: &[u8], input: &[u8], output: &mut [u8]) -> bool {
        match self {
            Cipher::Gcm128(c) => c.encrypt(iv, aad, input, output).is_ok(),
            Cipher::Gcm256(c) => c.encrypt(iv, aad, input, output).is_ok(),
        }
    }

    fn decrypt(&mut self, iv: &[u8; 12], aads: &[&[u8]], input: &[u8], output: &mut [u8]) -> Option<usize> {
        match self {
            Cipher::Gcm128(c) => c.decrypt(iv, aads, input, output).ok(),
            Cipher::Gcm256(c) => c.decrypt(iv, aads, input, output).ok(),
        }
    }
}

/// One direction's master key and salt, as cut from the keying material.
struct Master {
    key: Vec<u8>,
    salt: [u8; SALT_LEN],
}

impl Master {
    /// One end's master key and salt in the keying material (client key, server key,
    /// client salt, server salt), whose length the caller checked.
    fn cut(material: &[u8], key_len: usize, client: bool) -> Self {
        let key_at = if client { 0 } else { key_len };
        let salt_at = 2 * key_len + if client { 0 } else { SALT_LEN };
        let mut master = Master { key: material[key_at..key_at + key_len].to_vec(), salt: [0; SALT_LEN] };
        master.salt.copy_from_slice(&material[salt_at..salt_at + SALT_LEN]);
        master
    }

    /// The AES-CM PRF of RFC 3711 §4.3.3 with a key derivation rate of zero: the salt
    /// (12 bytes for GCM, RFC 7714 §11, padded on the right) with the label at byte 7,
    /// a block counter in the last two bytes.
    fn derive(&self, crypto: &CryptoProvider, label: u8, out: &mut [u8]) {
        let mut block = [0u8; 16];
        block[..SALT_LEN].copy_from_slice(&self.salt);
        block[7] ^= label;
        let mut keystream = [0u8; 32];
        for (counter, chunk) in out.chunks_mut(16).enumerate() {
            block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
            match self.key.len() {
                16 => crypto.srtp_provider.srtp_aes_128_ecb_round(&self.key, &block, &mut keystream),
                _ => crypto.srtp_provider.srtp_aes_256_ecb_round(&self.key, &block, &mut keystream),
            }
            chunk.copy_from_slice(&keystream[..chunk.len()]);
        }
        block.zeroize();
        keystream.zeroize();
    }

    /// The cipher under the session key for `label`. The provider's cipher keeps its own
    /// copy of the key (its key schedule), out of our reach; ours is zeroed.
    fn cipher(&self, crypto: &CryptoProvider, label: u8, encrypt: bool) -> Cipher {
        if self.key.len() == 16 {
            let mut key = [0u8; 16];
            self.derive(crypto, label, &mut key);
            let cipher = Cipher::Gcm128(crypto.srtp_provider.aead_aes_128_gcm().create_cipher(key, encrypt));
            key.zeroize();
            cipher
        } else {
            let mut key = [0u8; 32];
            self.derive(crypto, label, &mut key);
            let cipher = Cipher::Gcm256(crypto.srtp_provider.aead_aes_256_gcm().create_cipher(key, encrypt));
            key.zeroize();
            cipher
        }
    }

    fn salt(&self, crypto: &CryptoProvider, label: u8) -> [u8; SALT_LEN] {
        let mut salt = [0u8; SALT_LEN];
        self.derive(crypto, label, &mut salt);
        salt
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.key.zeroize();
        self.salt.zeroize();
    }
}

impl fmt::Debug for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Master").field("key", &"[redacted]").field("salt", &"[redacted]").finish()
    }
}

/// Protects the RTP this end sends, never twice under one SRTP index.
pub struct SrtpSender {
    cipher: Cipher,
    salt: [u8; SALT_LEN],
    /// Per SSRC, the indexes (ROC << 16 | SEQ) sealed so far; never removed.
    sealed: Vec<(u32, ReplayWindow<SEALED_WINDOW_WORDS>)>,
    /// Where each SSRC's window is in `sealed`.
    window_of: FastMap<u32, u32>,
}

/// Where a sender's window for one SSRC was last found: a send slot keeps one per SSRC it
/// seals for, so its packets reach their window without a lookup. Only a hint: the
/// window found there must be the SSRC's, or the SSRC is looked up.
#[derive(Debug, Default)]
pub struct WindowHint(Cell<u32>);

/// Unprotects the SRTCP the peer sends (for the NACKs the fast path answers), refusing
/// replays: each sender SSRC numbers its SRTCP from zero, so each has its own window.
pub struct SrtcpReceiver {
    cipher: Cipher,
    salt: [u8; SALT_LEN],
    /// At most `MAX_SRTCP_SENDERS`; a few, so a scan beats a map.
    senders: Vec<SrtcpSender>,
    /// Counts authenticated packets: when each sender was last heard.
    heard: u64,
    evicted: u64,
}

/// One SSRC the peer sends SRTCP under.
struct SrtcpSender {
    ssrc: u32,
    window: ReplayWindow<SRTCP_WINDOW_WORDS>,
    last_heard: u64,
}

/// Both halves for one session, or `None` when the profile is not a GCM one.
///
/// `material` is the exported keying material: client key, server key, client salt,
/// server salt. `local_is_client` is whether this end took the DTLS client role.
pub fn session_keys(
    crypto: &CryptoProvider,
    profile: SrtpProfile,
    material: &[u8],
    local_is_client: bool,
) -> Option<(SrtpSender, SrtcpReceiver)> {
    let key_len = match profile {
        SrtpProfile::AEAD_AES_128_GCM => 16,
        SrtpProfile::AEAD_AES_256_GCM => 32,
        _ => return None,
    };
    if material.len() != 2 * (key_len + SALT_LEN) {
        return None;
    }
    let local = Master::cut(material, key_len, local_is_client);
    let remote = Master::cut(material, key_len, !local_is_client);
    let sender = SrtpSender {
        cipher: local.cipher(crypto, LABEL_RTP_KEY, true),
        salt: local.salt(crypto, LABEL_RTP_SALT),
        sealed: Vec::new(),
        window_of: FastMap::default(),
    };
    let receiver = SrtcpReceiver {
        cipher: remote.cipher(crypto, LABEL_RTCP_KEY, false),
        salt: remote.salt(crypto, LABEL_RTCP_SALT),
        senders: Vec::new(),
        heard: 0,
        evicted: 0,
    };
    Some((sender, receiver))
}

impl SrtpSender {
    /// Writes the protected packet into `out` and returns its length: the RTP `header`
    /// (the authenticated data) and the encrypted `payload` with its tag; `roc` is the
    /// rollover counter of the packet's sequence number. `out` must hold the header, the
    /// payload and `TAG_LEN`. Refuses an index sealed before on the header's SSRC, or
    /// behind the window of those sealed.
    #[cfg(test)]
    pub fn protect(
        &mut self,
        header: &[u8],
        payload: &[u8],
        roc: u32,
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        self.protect_hinted(header, payload, roc, out, &WindowHint::default())
    }

    /// [`SrtpSender::protect`], finding the SSRC's window where `hint` says first.
    pub fn protect_hinted(
        &mut self,
        header: &[u8],
        payload: &[u8],
        roc: u32,
        out: &mut [u8],
        hint: &WindowHint,
    ) -> Result<usize, SealError> {
        let len = header.len() + payload.len();
        if header.len() < 12 {
            return Err(SealError::BadHeader);
        }
        if out.len() < len + TAG_LEN {
            return Err(SealError::TooBig);
        }
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let seq = u16::from_be_bytes([header[2], header[3]]);
        self.claim(ssrc, (u64::from(roc) << 16) | u64::from(seq), hint)?;
        let iv = AeadAes128Gcm::rtp_iv(self.salt, ssrc, roc, seq);
        out[..header.len()].copy_from_slice(header);
        if !self.cipher.encrypt(&iv, header, payload, &mut out[header.len()..len + TAG_LEN]) {
            return Err(SealError::Cipher);
        }
        Ok(len + TAG_LEN)
    }

    /// Marks `index` sealed on `ssrc` before it is: an index handed to the cipher counts
    /// as used whether or not its packet leaves.
    pub(crate) fn claim(&mut self, ssrc: u32, index: u64, hint: &WindowHint) -> Result<(), SealError> {
        let at = match self.sealed.get(hint.0.get() as usize) {
            Some((s, _)) if *s == ssrc => hint.0.get() as usize,
            _ => {
                let at = match self.window_of.get(&ssrc) {
                    Some(&at) => at as usize,
                    None if self.sealed.len() >= MAX_SEALED_SSRCS => return Err(SealError::TooManySsrcs),
                    None => {
                        self.window_of.insert(ssrc, self.sealed.len() as u32);
                        self.sealed.push((ssrc, ReplayWindow::new()));
                        self.sealed.len() - 1
                    }
                };
                hint.0.set(at as u32);
                at
            }
        };
        let window = &mut self.sealed[at].1;
        if !window.is_new(index) {
            return Err(SealError::IndexUsed);
        }
        window.mark(index);
        Ok(())
    }
}

impl SrtcpReceiver {
    /// Decrypts one SRTCP packet into `out` as the plain compound RTCP packet and returns
    /// its length. Refuses one that is too short, not encrypted (E bit clear), does not
    /// authenticate, or repeats an index of its sender SSRC (or is behind its window).
    pub fn unprotect(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<usize, SrtcpError> {
        // header (8) | encrypted body | tag (16) | E + SRTCP index (4)
        if packet.len() < 8 + TAG_LEN + 4 {
            return Err(SrtcpError::Short);
        }
        let trailer_at = packet.len() - 4;
        let trailer = &packet[trailer_at..];
        let e_and_index = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if e_and_index & 0x8000_0000 == 0 {
            return Err(SrtcpError::NotEncrypted);
        }
        let index = e_and_index & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.sender(ssrc).is_some_and(|s| !s.window.is_new(index.into())) {
            return Err(SrtcpError::Replayed);
        }
        let iv = AeadAes128Gcm::rtcp_iv(self.salt, ssrc, index);
        let body = &packet[8..trailer_at];
        out.clear();
        out.extend_from_slice(&packet[..8]);
        out.resize(8 + body.len(), 0);
        let n = self
            .cipher
            .decrypt(&iv, &[&packet[..8], trailer], body, &mut out[8..])
            .ok_or(SrtcpError::Unauthenticated)?;
        out.truncate(8 + n);
        // Only an authenticated packet moves a window, or claims a place for its SSRC.
        self.accept(ssrc, index);
        Ok(out.len())
    }

    /// Sender SSRCs forgotten so far to stay within `MAX_SRTCP_SENDERS`.
    pub fn senders_evicted(&self) -> u64 {
        self.evicted
    }

    fn sender(&self, ssrc: u32) -> Option<&SrtcpSender> {
        self.senders.iter().find(|s| s.ssrc == ssrc)
    }

    fn accept(&mut self, ssrc: u32, index: u32) {
        self.heard += 1;
        let at = match self.senders.iter().position(|s| s.ssrc == ssrc) {
            Some(at) => at,
            None => {
                if self.senders.len() >= MAX_SRTCP_SENDERS {
                    let oldest =
                        self.senders.iter().enumerate().min_by_key(|(_, s)| s.last_heard).map(|(i, _)| i);
                    if let Some(oldest) = oldest {
                        self.senders.swap_remove(oldest);
                        self.evicted += 1;
                    }
                }
                self.senders.push(SrtcpSender { ssrc, window: ReplayWindow::new(), last_heard: 0 });
                self.senders.len() - 1
            }
        };
        let sender = &mut self.senders[at];
        sender.window.mark(index.into());
        sender.last_heard = self.heard;
    }
}

impl Drop for SrtpSender {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl Drop for SrtcpReceiver {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSender").field("keys", &"[redacted]").field("ssrcs", &self.sealed.len()).finish()
    }
}

impl fmt::Debug for SrtcpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtcpReceiver")
            .field("keys", &"[redacted]")
            .field("senders", &self.senders.len())
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        str0m::crypto::from_feature_flags()
    }

    const MATERIAL: [u8; 56] = [5; 56];

    fn sender() -> SrtpSender {
        session_keys(&provider(), SrtpProfile::AEAD_AES_128_GCM, &MATERIAL, true).unwrap().0
    }

    fn receiver() -> SrtcpReceiver {
        session_keys(&provider(), SrtpProfile::AEAD_AES_128_GCM, &MATERIAL, true).unwrap().1
    }

    /// An RTP header on `ssrc` numbered `seq`.
    fn header(ssrc: u32, seq: u16) -> [u8; 12] {
        let mut h = [0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h[2..4].copy_from_slice(&seq.to_be_bytes());
        h[8..12].copy_from_slice(&ssrc.to_be_bytes());
        h
    }

    fn seal(tx: &mut SrtpSender, ssrc: u32, roc: u32, seq: u16) -> Result<usize, SealError> {
        let mut out = [0u8; 12 + 4 + TAG_LEN];
        tx.protect(&header(ssrc, seq), &[1, 2, 3, 4], roc, &mut out)
    }

    /// The peer's end: SRTCP sealed as RFC 7714 §9 has it (the first 8 bytes and the
    /// E + index word authenticated, the rest encrypted), under the keys `session_keys`
    /// cuts for the remote end of AES-128-GCM `material` when this end is the DTLS client.
    pub(crate) struct Peer {
        cipher: Cipher,
        salt: [u8; SALT_LEN],
    }

    impl Peer {
        pub(crate) fn new(material: &[u8]) -> Self {
            let crypto = provider();
            let remote = Master::cut(material, 16, false);
            Self {
                cipher: remote.cipher(&crypto, LABEL_RTCP_KEY, true),
                salt: remote.salt(&crypto, LABEL_RTCP_SALT),
            }
        }

        /// A generic NACK of packet 7 of media SSRC 42, sent under `ssrc` with SRTCP
        /// index `index`.
        pub(crate) fn srtcp(&mut self, ssrc: u32, index: u32) -> Vec<u8> {
            let mut packet = vec![0x81, 205, 0, 3];
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 42, 0, 7, 0, 0]);
            self.seal(packet, index)
        }

        /// A plain compound packet sealed with SRTCP index `index` (its first packet's
        /// sender SSRC names the sender; set here to `ssrc`).
        pub(crate) fn sealed(&mut self, ssrc: u32, plain: &[u8]) -> Vec<u8> {
            let mut packet = plain.to_vec();
            packet[4..8].copy_from_slice(&ssrc.to_be_bytes());
            self.seal(packet, 0)
        }

        fn seal(&mut self, mut packet: Vec<u8>, index: u32) -> Vec<u8> {
            let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            let body = packet.split_off(8);
            let trailer = (0x8000_0000 | index).to_be_bytes();
            let aad = [&packet[..], &trailer[..]].concat();
            let iv = AeadAes128Gcm::rtcp_iv(self.salt, ssrc, index);
            let mut sealed = vec![0u8; body.len() + TAG_LEN];
            assert!(self.cipher.encrypt(&iv, &aad, &body, &mut sealed));
            packet.extend_from_slice(&sealed);
            packet.extend_from_slice(&trailer);
            packet
        }
    }

    /// The PRF input block: the 12-byte salt on the left, the label XORed into byte 7,
    /// the block counter in the last two bytes (RFC 3711 §4.3.3, RFC 7714 §11). That the
    /// derived keys are the ones the peer uses is checked end to end against a str0m
    /// client in nack_tests.rs.
    #[test]
    fn kdf_block_holds_salt_label_and_counter() {
        let crypto = provider();
        let key =
            [0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE, 0x41, 0x39];
        let salt = [0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A];
        let master = Master { key: key.to_vec(), salt };
        let mut derived = [0u8; 16];
        master.derive(&crypto, LABEL_RTP_KEY, &mut derived);
        let mut block = [0u8; 16];
        block[..12].copy_from_slice(&salt);
        let mut expected = [0u8; 32];
        crypto.srtp_provider.srtp_aes_128_ecb_round(&key, &block, &mut expected);
        assert_eq!(derived, expected[..16]);
        // And the label lands in byte 7.
        master.derive(&crypto, LABEL_RTP_SALT, &mut derived);
        block[7] ^= LABEL_RTP_SALT;
        crypto.srtp_provider.srtp_aes_128_ecb_round(&key, &block, &mut expected);
        assert_eq!(derived, expected[..16]);
    }

    #[test]
    fn refuses_non_gcm_profiles_and_short_material() {
        let crypto = provider();
        assert!(session_keys(&crypto, SrtpProfile::AES128_CM_SHA1_80, &[0; 60], true).is_none());
        assert!(session_keys(&crypto, SrtpProfile::AEAD_AES_128_GCM, &[0; 10], true).is_none());
        assert!(session_keys(&crypto, SrtpProfile::AEAD_AES_256_GCM, &[0; 88], false).is_some());
    }

    #[test]
    fn protect_refuses_a_short_output_buffer_and_header() {
        let mut tx = sender();
        let packet = [0x80u8; 40];
        let mut out = [0u8; 50];
        assert_eq!(tx.protect(&packet[..12], &packet[12..], 0, &mut out), Err(SealError::TooBig));
        assert_eq!(tx.protect(&packet[..11], &[], 0, &mut out), Err(SealError::BadHeader));
        let mut out = [0u8; 56];
        assert_eq!(
            tx.protect(&packet[..12], &packet[12..], 0, &mut out),
            Ok(56),
            "a refusal claims no index"
        );
        assert_eq!(out[..12], packet[..12]);
        assert_ne!(out[12..40], packet[12..]);
    }

    #[test]
    fn replay_window_keeps_the_highest_and_what_is_behind_it() {
        let mut w = ReplayWindow::<1>::new();
        // (index, new before it is marked)
        let cases = [
            (10, true),
            (10, false),
            (9, true),
            (9, false),
            (100, true),
            (36, false), // 64 behind the highest: too old to tell
            (37, true),
            (37, false),
            (101, true),
            (5_000, true), // a jump past the whole window
            (4_937, true),
            (4_936, false),
            (100, false),
        ];
        for (i, (index, new)) in cases.into_iter().enumerate() {
            assert_eq!(w.is_new(index), new, "case {i}: index {index}");
            w.mark(index);
            assert!(!w.is_new(index), "case {i}: marked");
        }
    }

    #[test]
    fn replay_window_forgets_the_bits_it_moves_past() {
        // In a one-word ring index 5 and 69 share a bit: moving past 69 must clear it.
        let mut w = ReplayWindow::<1>::new();
        w.mark(5);
        w.mark(64);
        assert!(!w.is_new(5), "59 behind, seen");
        w.mark(70);
        assert!(w.is_new(69), "passed over, never seen");
        assert!(!w.is_new(5), "now too old");
        assert!(!w.is_new(64));
    }

    #[test]
    fn an_index_is_sealed_once_per_ssrc() {
        let mut tx = sender();
        assert!(seal(&mut tx, 7, 0, 100).is_ok());
        assert_eq!(seal(&mut tx, 7, 0, 100), Err(SealError::IndexUsed), "same SSRC, ROC and SEQ");
        assert!(seal(&mut tx, 8, 0, 100).is_ok(), "another SSRC has its own indexes");
        assert!(seal(&mut tx, 7, 0, 99).is_ok(), "an unsealed index behind the highest: a reordered packet");
        assert_eq!(seal(&mut tx, 7, 0, 99), Err(SealError::IndexUsed));
        assert!(seal(&mut tx, 7, 1, 100).is_ok(), "the same SEQ in the next ROC is another index");
        assert_eq!(seal(&mut tx, 7, 1, 100), Err(SealError::IndexUsed));
    }

    #[test]
    fn a_hint_finds_only_its_own_ssrcs_window() {
        let mut tx = sender();
        let mut out = [0u8; 12 + 4 + TAG_LEN];
        let mut seal_hinted = |ssrc: u32, seq: u16, hint: &WindowHint| {
            tx.protect_hinted(&header(ssrc, seq), &[1, 2, 3, 4], 0, &mut out, hint)
        };
        let (seven, eight) = (WindowHint::default(), WindowHint::default());
        assert!(seal_hinted(7, 100, &seven).is_ok());
        assert!(seal_hinted(8, 100, &eight).is_ok());
        assert_eq!(seal_hinted(7, 100, &seven), Err(SealError::IndexUsed), "through its hint");
        assert_eq!(seal_hinted(7, 100, &eight), Err(SealError::IndexUsed), "through another SSRC's hint");
        assert_eq!(seal_hinted(8, 100, &WindowHint::default()), Err(SealError::IndexUsed), "through none");
        assert!(seal_hinted(7, 101, &eight).is_ok());
        assert_eq!(
            seal_hinted(7, 101, &seven),
            Err(SealError::IndexUsed),
            "the one sealed via the other hint"
        );
    }

    #[test]
    fn a_seal_behind_the_window_is_refused_even_if_never_sealed() {
        let mut tx = sender();
        let highest = 70_000u64;
        assert!(seal(&mut tx, 7, (highest >> 16) as u32, highest as u16).is_ok());
        let size = ReplayWindow::<SEALED_WINDOW_WORDS>::SIZE;
        assert!(size >= 1000, "covers the rewriter's reordering distance");
        let oldest_kept = highest - (size - 1);
        assert!(seal(&mut tx, 7, (oldest_kept >> 16) as u32, oldest_kept as u16).is_ok());
        let too_old = highest - size;
        assert_eq!(seal(&mut tx, 7, (too_old >> 16) as u32, too_old as u16), Err(SealError::IndexUsed));
        // What a rewriter that failed to re-base after a pause would number: 25,536 behind.
        for index in highest - 25_536..highest - 25_436 {
            assert_eq!(seal(&mut tx, 7, (index >> 16) as u32, index as u16), Err(SealError::IndexUsed));
        }
    }

    #[test]
    fn a_new_ssrc_past_the_cap_is_refused_and_known_ones_go_on() {
        let mut tx = sender();
        for ssrc in 0..MAX_SEALED_SSRCS as u32 {
            assert!(seal(&mut tx, ssrc, 0, 1).is_ok());
        }
        assert_eq!(seal(&mut tx, u32::MAX, 0, 1), Err(SealError::TooManySsrcs));
        assert!(seal(&mut tx, 0, 0, 2).is_ok());
    }

    #[test]
    fn unprotect_rejects_junk() {
        let crypto = provider();
        let (_, mut rx) = session_keys(&crypto, SrtpProfile::AEAD_AES_256_GCM, &[3; 88], true).unwrap();
        let mut out = Vec::new();
        assert_eq!(rx.unprotect(&[0u8; 10], &mut out), Err(SrtcpError::Short));
        let mut junk = vec![0x81u8; 60];
        junk[56] = 0x00; // E bit clear
        assert_eq!(rx.unprotect(&junk, &mut out), Err(SrtcpError::NotEncrypted));
        junk[56] = 0x80; // E bit set
        assert_eq!(rx.unprotect(&junk, &mut out), Err(SrtcpError::Unauthenticated));
    }

    #[test]
    fn srtcp_under_two_ssrcs_each_numbered_from_zero_is_all_read() {
        let (mut peer, mut rx) = (Peer::new(&MATERIAL), receiver());
        let (fast, slow) = (0xa, 0xb);
        let mut out = Vec::new();
        let mut sent = Vec::new();
        // Three from the busy SSRC to one from the other, each with its own index from 0.
        for i in 0..300u32 {
            sent.push((fast, i));
            if i % 3 == 2 {
                sent.push((slow, i / 3));
            }
        }
        for &(ssrc, index) in &sent {
            let packet = peer.srtcp(ssrc, index);
            assert_eq!(rx.unprotect(&packet, &mut out), Ok(16), "ssrc {ssrc:x} index {index}");
            assert_eq!(&out[..8], &packet[..8]);
            assert_eq!(&out[8..], &[0, 0, 0, 42, 0, 7, 0, 0]);
        }
        for (ssrc, index) in [(fast, 299), (fast, 250), (slow, 99), (slow, 50)] {
            assert_eq!(rx.unprotect(&peer.srtcp(ssrc, index), &mut out), Err(SrtcpError::Replayed));
        }
        assert_eq!(rx.senders_evicted(), 0);
    }

    #[test]
    fn only_an_authenticated_srtcp_packet_moves_the_window() {
        let (mut peer, mut rx) = (Peer::new(&MATERIAL), receiver());
        let mut out = Vec::new();
        assert!(rx.unprotect(&peer.srtcp(0xa, 0), &mut out).is_ok());
        let mut forged = peer.srtcp(0xa, 10_000);
        forged[10] ^= 1;
        assert_eq!(rx.unprotect(&forged, &mut out), Err(SrtcpError::Unauthenticated));
        let mut forged = peer.srtcp(0xc, 5);
        forged[10] ^= 1;
        assert_eq!(rx.unprotect(&forged, &mut out), Err(SrtcpError::Unauthenticated));
        assert!(rx.unprotect(&peer.srtcp(0xa, 1), &mut out).is_ok(), "the forged index 10,000 was not taken");
        assert_eq!(rx.senders.len(), 1, "a forged packet claims no place for its SSRC");
    }

    #[test]
    fn past_the_cap_the_least_recently_heard_srtcp_sender_is_forgotten() {
        let (mut peer, mut rx) = (Peer::new(&MATERIAL), receiver());
        let mut out = Vec::new();
        for ssrc in 0..MAX_SRTCP_SENDERS as u32 {
            assert!(rx.unprotect(&peer.srtcp(ssrc, 0), &mut out).is_ok());
        }
        assert!(rx.unprotect(&peer.srtcp(0, 1), &mut out).is_ok(), "SSRC 0 heard again: now the most recent");
        assert!(rx.unprotect(&peer.srtcp(1_000, 0), &mut out).is_ok(), "a new SSRC past the cap is read");
        assert_eq!(rx.senders_evicted(), 1);
        assert_eq!(rx.senders.len(), MAX_SRTCP_SENDERS);
        assert_eq!(rx.unprotect(&peer.srtcp(0, 1), &mut out), Err(SrtcpError::Replayed), "SSRC 0 was kept");
        // SSRC 1 was the least recently heard: its window went, so its old packet reads again.
        assert!(rx.unprotect(&peer.srtcp(1, 0), &mut out).is_ok());
        assert_eq!(rx.senders_evicted(), 2);
    }

    #[test]
    fn key_material_is_not_printed() {
        let (tx, rx) = session_keys(&provider(), SrtpProfile::AEAD_AES_128_GCM, &MATERIAL, true).unwrap();
        let master = Master::cut(&MATERIAL, 16, true);
        for printed in [format!("{tx:?}"), format!("{rx:?}"), format!("{master:?}")] {
            assert!(printed.contains("[redacted]"), "{printed}");
            assert!(!printed.contains("5, 5"), "{printed}");
        }
    }
}
