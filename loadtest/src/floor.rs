//! This machine's floor, measured at the start of every run (SCENARIOS.md, *Machines
//! differ*): what sending one 1,200-byte SRTP packet to a subscriber costs at least, AES-GCM
//! protection and the kernel's loopback path, so a server's cost per forwarded packet can
//! be given as a ratio to it rather than as a figure that only means something on one CPU.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::Serialize;

use crate::net::set_int_option;

/// A video packet's size on the wire.
const DATAGRAM: usize = 1200;
/// SRTP's AES-GCM tag.
const TAG: usize = 16;
/// Datagrams per GSO send (the server sends a subscriber's video frame as one).
const GSO_SEGMENTS: usize = 32;
/// Datagrams per measurement, after a warm-up of a tenth of that.
const COUNT: usize = 32 * 1024;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Floor {
    /// Sender CPU per datagram: AES-128-GCM seal and one `send` each (ns).
    pub send_ns: Option<f64>,
    /// The same with GSO, 32 datagrams per `send` (ns); None where the kernel has no GSO.
    pub gso_ns: Option<f64>,
}

/// Measure the floor (about half a second); None figures where a step failed.
pub fn measure() -> Floor {
    Floor { send_ns: run(1).ok(), gso_ns: run(GSO_SEGMENTS).ok() }
}

/// Sender CPU ns per datagram sealing and sending `COUNT` datagrams, `segments` per send,
/// to a receiver on another thread that reads them all.
fn run(segments: usize) -> std::io::Result<f64> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    // Room for bursts (a GSO send is 32 datagrams): a datagram dropped for want of space
    // costs the sender less than one delivered, which would lower the floor.
    // (Past the kernel's rmem_max only with the privilege to force it.)
    set_int_option(&receiver, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20)
        .or_else(|_| set_int_option(&receiver, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20))?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(receiver.local_addr()?)?;
    if segments > 1 {
        set_gso(&sender, DATAGRAM + TAG)?;
    }
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let reading = {
        let stop = stop.0.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = receiver.recv(&mut buffer);
            }
        })
    };
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).map_err(std::io::Error::other)?);
    let mut batch = vec![0u8; (DATAGRAM + TAG) * segments];
    let mut counter = 0u64;
    let mut send = |batch: &mut [u8]| -> std::io::Result<()> {
        for packet in batch.chunks_mut(DATAGRAM + TAG) {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let (body, tag) = packet.split_at_mut(DATAGRAM);
            let sealed = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), body)
                .map_err(std::io::Error::other)?;
            tag.copy_from_slice(sealed.as_ref());
        }
        match sender.send(batch) {
            Ok(_) => Ok(()),
            // The receiver fell behind: the datagram was still made and handed over.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
            Err(e) => Err(e),
        }
    };
    for _ in 0..COUNT / 10 / segments {
        send(&mut batch)?;
    }
    let start = thread_cpu_ns();
    for _ in 0..COUNT / segments {
        send(&mut batch)?;
    }
    let spent = thread_cpu_ns() - start;
    drop(stop);
    let _ = reading.join();
    Ok(spent as f64 / (COUNT / segments * segments) as f64)
}

/// Stops the receiving thread however the measurement ends.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Make every `send` on `socket` a run of `size`-byte datagrams (Linux UDP_SEGMENT).
fn set_gso(socket: &UdpSocket, size: usize) -> std::io::Result<()> {
    set_int_option(socket, libc::SOL_UDP, libc::UDP_SEGMENT, size as libc::c_int)
}

/// This thread's CPU time (user and system) in ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_both_floors() {
        let floor = measure();
        assert!(floor.send_ns.is_some_and(|ns| ns > 0.0), "loopback sends work: {floor:?}");
        // Every kernel this runs on (Linux 4.18 or later) has UDP GSO.
        assert!(floor.gso_ns.is_some_and(|ns| ns > 0.0), "GSO sends work: {floor:?}");
    }
}
