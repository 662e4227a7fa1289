//! A peer's SRTCP sender (AEAD AES-GCM, RFC 7714 §9, keys by RFC 3711 §4.3 with the
//! 96-bit salt of RFC 7714 §11), written from the RFCs apart from the server's receiver in
//! sfu/src/egress/srtp.rs, so a fuzz target can hand the server packets that authenticate.
//! Only str0m's cipher primitives are shared.

use str0m::config::CryptoProvider;
use str0m::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher};

const SALT_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// RFC 3711 §4.3.2: the SRTCP encryption key and salt.
const LABEL_SRTCP_KEY: u8 = 0x03;
const LABEL_SRTCP_SALT: u8 = 0x05;

enum Cipher {
    Gcm128(Box<dyn AeadAes128GcmCipher>),
    Gcm256(Box<dyn AeadAes256GcmCipher>),
}

pub struct SrtcpSealer {
    cipher: Cipher,
    salt: [u8; SALT_LEN],
}

/// RFC 3711 §4.3.3 with a key derivation rate of zero: AES in counter mode under the
/// master key, starting from (master salt XOR label << 48) << 16.
fn prf(crypto: &CryptoProvider, key: &[u8], salt: &[u8; SALT_LEN], label: u8, out: &mut [u8]) {
    // x is 112 bits: the 96-bit salt padded on the right, the 56-bit key id (label and a
    // zero index) right-aligned, so the label lands in byte 14 - 7.
    let mut x = [0u8; 14];
    x[..SALT_LEN].copy_from_slice(salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..14].copy_from_slice(&x);
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut stream = [0u8; 32];
        if key.len() == 16 {
            crypto.srtp_provider.srtp_aes_128_ecb_round(key, &block, &mut stream);
        } else {
            crypto.srtp_provider.srtp_aes_256_ecb_round(key, &block, &mut stream);
        }
        chunk.copy_from_slice(&stream[..chunk.len()]);
    }
}

impl SrtcpSealer {
    /// The sender of one end of a session: `material` is the DTLS-SRTP keying material
    /// (client key, server key, client salt, server salt, RFC 5764 §4.2); `client` whether
    /// this end is the DTLS client.
    pub fn new(crypto: &CryptoProvider, key_len: usize, material: &[u8], client: bool) -> Self {
        assert_eq!(material.len(), 2 * (key_len + SALT_LEN));
        let key = if client { &material[..key_len] } else { &material[key_len..2 * key_len] };
        let salt_at = 2 * key_len + if client { 0 } else { SALT_LEN };
        let master_salt: [u8; SALT_LEN] = material[salt_at..salt_at + SALT_LEN].try_into().unwrap();
        let mut salt = [0u8; SALT_LEN];
        prf(crypto, key, &master_salt, LABEL_SRTCP_SALT, &mut salt);
        let cipher = if key_len == 16 {
            let mut k = [0u8; 16];
            prf(crypto, key, &master_salt, LABEL_SRTCP_KEY, &mut k);
            Cipher::Gcm128(crypto.srtp_provider.aead_aes_128_gcm().create_cipher(k, true))
        } else {
            let mut k = [0u8; 32];
            prf(crypto, key, &master_salt, LABEL_SRTCP_KEY, &mut k);
            Cipher::Gcm256(crypto.srtp_provider.aead_aes_256_gcm().create_cipher(k, true))
        };
        Self { cipher, salt }
    }

    /// The SRTCP packet for a compound RTCP packet (at least its 8-byte first header) with
    /// SRTCP index `index` (31 bits): header | ciphertext and tag | E flag and index.
    pub fn seal(&mut self, plain: &[u8], index: u32) -> Vec<u8> {
        assert!(plain.len() >= 8 && index < 1 << 31);
        let (header, body) = plain.split_at(8);
        let trailer = (0x8000_0000 | index).to_be_bytes();
        let ssrc = u32::from_be_bytes(header[4..8].try_into().unwrap());
        // The two AEAD profiles build their nonce alike (RFC 7714 §9.1).
        let iv = AeadAes128Gcm::rtcp_iv(self.salt, ssrc, index);
        let mut aad = header.to_vec();
        aad.extend_from_slice(&trailer);
        let mut sealed = vec![0u8; body.len() + TAG_LEN];
        let ok = match &mut self.cipher {
            Cipher::Gcm128(c) => c.encrypt(&iv, &aad, body, &mut sealed),
            Cipher::Gcm256(c) => c.encrypt(&iv, &aad, body, &mut sealed),
        };
        ok.expect("AES-GCM seals");
        let mut packet = header.to_vec();
        packet.extend_from_slice(&sealed);
        packet.extend_from_slice(&trailer);
        packet
    }
}
