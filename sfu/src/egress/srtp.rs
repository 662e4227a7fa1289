//! SRTP for the forwarding fast path: session keys from the DTLS-SRTP keying material
//! (RFC 5764 §4.2, the AES-CM key derivation of RFC 3711 §4.3), RTP protection and
//! SRTCP unprotection with AEAD AES-GCM (RFC 7714). Only the GCM profiles are handled;
//! a session that negotiated AES-CM with HMAC-SHA1 keeps str0m's own send path.
//!
//! The cipher primitives are str0m's crypto provider's, the same ones str0m uses.

use str0m::config::CryptoProvider;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher};

/// Bytes of the GCM authentication tag appended to every protected packet.
pub const TAG_LEN: usize = 16;
const SALT_LEN: usize = 12;
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_SALT: u8 = 5;

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
    }

    fn cipher(&self, crypto: &CryptoProvider, label: u8, encrypt: bool) -> Cipher {
        if self.key.len() == 16 {
            let mut key = [0u8; 16];
            self.derive(crypto, label, &mut key);
            Cipher::Gcm128(crypto.srtp_provider.aead_aes_128_gcm().create_cipher(key, encrypt))
        } else {
            let mut key = [0u8; 32];
            self.derive(crypto, label, &mut key);
            Cipher::Gcm256(crypto.srtp_provider.aead_aes_256_gcm().create_cipher(key, encrypt))
        }
    }

    fn salt(&self, crypto: &CryptoProvider, label: u8) -> [u8; SALT_LEN] {
        let mut salt = [0u8; SALT_LEN];
        self.derive(crypto, label, &mut salt);
        salt
    }
}

/// Protects the RTP this end sends.
pub struct SrtpSender {
    cipher: Cipher,
    salt: [u8; SALT_LEN],
}

/// Unprotects the SRTCP the peer sends (for the NACKs the fast path answers), refusing
/// replays (RFC 3711 §3.3.2: the highest index seen and a 64-index window below it).
pub struct SrtcpReceiver {
    cipher: Cipher,
    salt: [u8; SALT_LEN],
    highest: Option<u32>,
    window: u64,
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
    let cut = |client: bool| {
        let key_at = if client { 0 } else { key_len };
        let salt_at = 2 * key_len + if client { 0 } else { SALT_LEN };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&material[salt_at..salt_at + SALT_LEN]);
        Master { key: material[key_at..key_at + key_len].to_vec(), salt }
    };
    let local = cut(local_is_client);
    let remote = cut(!local_is_client);
    let sender = SrtpSender {
        cipher: local.cipher(crypto, LABEL_RTP_KEY, true),
        salt: local.salt(crypto, LABEL_RTP_SALT),
    };
    let receiver = SrtcpReceiver {
        cipher: remote.cipher(crypto, LABEL_RTCP_KEY, false),
        salt: remote.salt(crypto, LABEL_RTCP_SALT),
        highest: None,
        window: 0,
    };
    Some((sender, receiver))
}

impl SrtpSender {
    /// Writes the protected packet into `out`: the RTP `header` (the authenticated data)
    /// and the encrypted `payload` with its tag; `roc` is the rollover counter of the
    /// packet's sequence number. `out` must hold the header, the payload and `TAG_LEN`.
    pub fn protect(&mut self, header: &[u8], payload: &[u8], roc: u32, out: &mut [u8]) -> bool {
        let len = header.len() + payload.len();
        if header.len() < 12 || out.len() < len + TAG_LEN {
            return false;
        }
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let seq = u16::from_be_bytes([header[2], header[3]]);
        let iv = AeadAes128Gcm::rtp_iv(self.salt, ssrc, roc, seq);
        out[..header.len()].copy_from_slice(header);
        self.cipher.encrypt(&iv, header, payload, &mut out[header.len()..len + TAG_LEN])
    }
}

impl SrtcpReceiver {
    /// Decrypts one SRTCP packet into `out` as the plain compound RTCP packet; `None`
    /// when it does not authenticate, is too short, or is not encrypted (E bit clear).
    pub fn unprotect(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        // header (8) | encrypted body | tag (16) | E + SRTCP index (4)
        if packet.len() < 8 + TAG_LEN + 4 {
            return None;
        }
        let trailer_at = packet.len() - 4;
        let trailer = &packet[trailer_at..];
        let e_and_index = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if e_and_index & 0x8000_0000 == 0 {
            return None;
        }
        let index = e_and_index & 0x7fff_ffff;
        if self.replayed(index) {
            return None;
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let iv = AeadAes128Gcm::rtcp_iv(self.salt, ssrc, index);
        let body = &packet[8..trailer_at];
        out.clear();
        out.extend_from_slice(&packet[..8]);
        out.resize(8 + body.len(), 0);
        let n = self.cipher.decrypt(&iv, &[&packet[..8], trailer], body, &mut out[8..])?;
        out.truncate(8 + n);
        // Only an authenticated packet moves the window.
        self.accept(index);
        Some(out.len())
    }

    fn replayed(&self, index: u32) -> bool {
        match self.highest {
            None => false,
            Some(high) if index > high => false,
            Some(high) => {
                let behind = high - index;
                behind >= 64 || self.window & (1 << behind) != 0
            }
        }
    }

    fn accept(&mut self, index: u32) {
        match self.highest {
            Some(high) if index <= high => {
                if high - index < 64 {
                    self.window |= 1 << (high - index);
                }
            }
            Some(high) => {
                let ahead = index - high;
                self.window = if ahead >= 64 { 1 } else { (self.window << ahead) | 1 };
                self.highest = Some(index);
            }
            None => {
                self.window = 1;
                self.highest = Some(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        str0m::crypto::from_feature_flags()
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
    fn protect_refuses_a_short_output_buffer() {
        let crypto = provider();
        let (mut tx, _) = session_keys(&crypto, SrtpProfile::AEAD_AES_128_GCM, &[1; 56], true).unwrap();
        let packet = [0x80u8; 40];
        let mut out = [0u8; 50];
        assert!(!tx.protect(&packet[..12], &packet[12..], 0, &mut out));
        let mut out = [0u8; 56];
        assert!(tx.protect(&packet[..12], &packet[12..], 0, &mut out));
        assert_eq!(out[..12], packet[..12]);
        assert_ne!(out[12..40], packet[12..]);
    }

    #[test]
    fn unprotect_rejects_junk() {
        let crypto = provider();
        let (_, mut rx) = session_keys(&crypto, SrtpProfile::AEAD_AES_256_GCM, &[3; 88], true).unwrap();
        let mut out = Vec::new();
        assert!(rx.unprotect(&[0u8; 10], &mut out).is_none());
        let mut junk = vec![0x81u8; 60];
        junk[56] = 0x80; // E bit set
        assert!(rx.unprotect(&junk, &mut out).is_none());
    }

    #[test]
    fn replay_window_refuses_repeats_and_the_too_old() {
        let crypto = provider();
        let (_, mut rx) = session_keys(&crypto, SrtpProfile::AEAD_AES_128_GCM, &[5; 56], true).unwrap();
        assert!(!rx.replayed(10));
        rx.accept(10);
        assert!(rx.replayed(10));
        assert!(!rx.replayed(9), "older but inside the window and unseen");
        rx.accept(9);
        assert!(rx.replayed(9));
        rx.accept(100);
        assert!(rx.replayed(36), "64 behind the highest");
        assert!(!rx.replayed(37));
        assert!(!rx.replayed(101));
    }
}
