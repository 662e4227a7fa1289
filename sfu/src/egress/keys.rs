//! Learning a session's SRTP keying material from its DTLS handshake.
//!
//! str0m keeps its SRTP contexts private. Every session's engine is built with
//! [`crypto_provider`], whose DTLS instances are str0m's own wrapped: when the handshake
//! exports its keying material, the wrapper copies it, tagged with the session the DTLS
//! instance was made for (the shard names the session on its thread before building its
//! engine, and in `contained`, the one place every engine call goes through). The shard
//! then takes it with [`take_captured`] at that session's own `Connected`.
//!
//! str0m exports the material only inside `Rtc::poll_output`, which the shard calls only
//! through `contained(id, ..)` on session `id`'s own engine, and returns
//! `Event::Connected` from that same call; session ids are never reused. An export while
//! another session is named is refused (never used for the fast path).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::DtlsVersion;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion, SrtpProfile,
};
use zeroize::Zeroize;

/// Exports kept on a thread until taken. Each session's handshake exports once, and the
/// shard takes them at that session's `Connected`, in the same turn; what no `Connected`
/// takes is a bug's leftover, and the oldest of those is dropped past this many.
const MAX_CAPTURED: usize = 64;

/// Keying material exported by one session's DTLS handshake; zeroed when dropped.
pub struct Captured {
    pub session: u64,
    pub profile: SrtpProfile,
    pub material: Vec<u8>,
    /// Whether this end was the DTLS client (its keys are the first half).
    pub local_is_client: bool,
}

impl Drop for Captured {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("session", &self.session)
            .field("profile", &self.profile)
            .field("material", &"[redacted]")
            .field("local_is_client", &self.local_is_client)
            .finish()
    }
}

thread_local! {
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    static CAPTURED: RefCell<Vec<Captured>> = const { RefCell::new(Vec::new()) };
}

/// Names the session whose engine the calling thread is about to drive.
pub fn set_current_session(id: u64) {
    CURRENT.with(|c| c.set(id));
}

/// Keying material exported on this thread since the last call.
pub fn take_captured() -> Vec<Captured> {
    CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

fn keep(captured: Captured) {
    CAPTURED.with(|c| {
        let mut kept = c.borrow_mut();
        if kept.len() >= MAX_CAPTURED {
            kept.remove(0);
        }
        kept.push(captured);
    });
}

/// str0m's default crypto with the capturing DTLS provider in place of its own.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let dtls: &'static CapturingDtls = Box::leak(Box::new(CapturingDtls(base.dtls_provider)));
            Arc::new(CryptoProvider { dtls_provider: dtls, ..base })
        })
        .clone()
}

#[derive(Debug)]
struct CapturingDtls(&'static dyn DtlsProvider);

impl DtlsProvider for CapturingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.0.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // Bound to the session whose engine is being built (the shard names it before
        // building): its exports are that session's, whatever runs later on this thread.
        let session = CURRENT.with(|c| c.get());
        Ok(Box::new(CapturingInstance { inner: self.0.new_dtls(cert, now, dtls_version, mtu)?, session }))
    }

    fn is_test(&self) -> bool {
        self.0.is_test()
    }
}

#[derive(Debug)]
struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
    /// The session this instance was made for.
    session: u64,
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output {
            // Exported while another session's engine call was named: a bug in how the
            // shard drives engines. The keys are kept from the fast path (that session
            // stays on str0m's own path) rather than risk handing them to another.
            let running = CURRENT.with(|c| c.get());
            if running != self.session {
                tracing::error!(
                    made_for = self.session,
                    running,
                    "DTLS keys exported outside their own session's engine call; not used"
                );
                return output;
            }
            keep(Captured {
                session: self.session,
                profile: *profile,
                material: material.as_ref().to_vec(),
                local_is_client: self.inner.is_active(),
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(session: u64) -> Captured {
        Captured {
            session,
            profile: SrtpProfile::AEAD_AES_128_GCM,
            material: vec![0xab; 56],
            local_is_client: true,
        }
    }

    #[test]
    fn material_is_not_printed() {
        let printed = format!("{:?}", captured(3));
        assert!(printed.contains("[redacted]") && printed.contains("session: 3"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }

    #[test]
    fn captures_are_bounded_and_taken_once() {
        take_captured();
        for session in 0..MAX_CAPTURED as u64 + 5 {
            keep(captured(session));
        }
        let taken = take_captured();
        assert_eq!(taken.len(), MAX_CAPTURED);
        assert_eq!(taken[0].session, 5, "the oldest went first");
        assert!(take_captured().is_empty());
    }
}
