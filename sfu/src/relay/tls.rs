//! QUIC's TLS for relay links, and who may use one.
//!
//! Relay nodes share the cluster secret, not a certificate authority: the parent shows a
//! certificate it made at start, which the child does not check against any authority.
//! Instead both sides prove the secret bound to this very connection: each sends an
//! HMAC-SHA256, under the secret, of a value exported from the connection's TLS keys
//! (RFC 5705). A machine in the middle holds two different TLS sessions, so it can neither
//! replay one side's proof to the other nor make its own (ADR 0012).

use std::sync::Arc;

use aws_lc_rs::hmac;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use super::wire::ALPN;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-huiyi-relay-proof";

/// Which side of a link a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Child,
    Parent,
}

/// The proof that `side` holds `secret`, bound to `conn`'s TLS session.
pub fn proof(conn: &quinn::Connection, secret: &[u8], side: Side) -> Option<String> {
    let mut exported = [0u8; 32];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"").ok()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(match side {
        Side::Child => b"child",
        Side::Parent => b"parent",
    });
    ctx.update(&exported);
    Some(hex(ctx.sign().as_ref()))
}

/// Whether `claimed` is `side`'s proof for this connection (compared in constant time).
pub fn verify(conn: &quinn::Connection, secret: &[u8], side: Side, claimed: &str) -> bool {
    proof(conn, secret, side).is_some_and(|p| {
        p.len() == claimed.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), claimed.as_bytes()).is_ok()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The parent's side: a certificate made now, TLS 1.3, the relay ALPN.
pub fn server_config(transport: Arc<quinn::TransportConfig>) -> anyhow_like::Result<quinn::ServerConfig> {
    let made =
        rcgen::generate_simple_self_signed(vec!["huiyi-relay".to_string()]).map_err(anyhow_like::err)?;
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(anyhow_like::err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(anyhow_like::err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(anyhow_like::err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// The child's side: any certificate, its signatures checked, the relay ALPN.
pub fn client_config(transport: Arc<quinn::TransportConfig>) -> anyhow_like::Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(SecretBound { algorithms: provider.signature_verification_algorithms });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(anyhow_like::err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(anyhow_like::err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Accepts the parent's certificate as it is (trust comes from the secret-bound proofs),
/// but still checks that the handshake was signed by its key.
#[derive(Debug)]
struct SecretBound {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SecretBound {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Errors of setting TLS up, as text (they only reach a log line or a start-up failure).
pub mod anyhow_like {
    pub type Result<T> = std::result::Result<T, String>;
    pub fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }
}
