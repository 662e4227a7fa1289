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
    /// The same with `sendmmsg`, 32 datagrams of their own per call (ns): what batching
    /// saves without GSO is the system call only.
    pub mmsg_ns: Option<f64>,
    /// AES-128-GCM sealing of one 1,200-byte payload alone (ns).
    pub seal_ns: Option<f64>,
}

/// Measure the floor (about a second); None figures where a step failed.
pub fn measure() -> Floor {
    Floor {
        send_ns: run(Batching::Single).ok(),
        gso_ns: run(Batching::Gso).ok(),
        mmsg_ns: run(Batching::Mmsg).ok(),
        seal_ns: seal_only().ok(),
    }
}

/// How the measured sends batch their datagrams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batching {
    /// One `send` per datagram.
    Single,
    /// GSO_SEGMENTS datagrams per `send`, cut by the kernel.
    Gso,
    /// GSO_SEGMENTS datagrams of their own per `sendmmsg`.
    Mmsg,
}

fn sealing_key() -> std::io::Result<LessSafeKey> {
    Ok(LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).map_err(std::io::Error::other)?))
}

/// Seal `packet` (payload then TAG bytes of room) under a nonce from `counter`.
fn seal(key: &LessSafeKey, counter: u64, packet: &mut [u8]) -> std::io::Result<()> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let (body, tag) = packet.split_at_mut(DATAGRAM);
    let sealed = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), body)
        .map_err(std::io::Error::other)?;
    tag.copy_from_slice(sealed.as_ref());
    Ok(())
}

/// Thread CPU ns per AES-128-GCM seal of one datagram's payload.
fn seal_only() -> std::io::Result<f64> {
    let key = sealing_key()?;
    let mut packet = vec![0u8; DATAGRAM + TAG];
    for counter in 0..(COUNT / 10) as u64 {
        seal(&key, counter, &mut packet)?;
    }
    let start = thread_cpu_ns();
    for counter in 0..COUNT as u64 {
        seal(&key, counter, &mut packet)?;
    }
    Ok((thread_cpu_ns() - start) as f64 / COUNT as f64)
}

/// Sender CPU ns per datagram sealing and sending `COUNT` datagrams, batched as
/// `batching` says, to a receiver on another thread that reads them all.
fn run(batching: Batching) -> std::io::Result<f64> {
    let segments = if batching == Batching::Single { 1 } else { GSO_SEGMENTS };
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    // Room for bursts (a GSO send is 32 datagrams): a datagram dropped for want of space
    // costs the sender less than one delivered, which would lower the floor.
    // (Past the kernel's rmem_max only with the privilege to force it.)
    set_int_option(&receiver, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20)
        .or_else(|_| set_int_option(&receiver, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20))?;
    // As the generator's clients do: a GSO send reaches the receiver whole, so the sender's
    // CPU does not cut it (a NIC with segmentation offload spares a server that too).
    // (Where the kernel has no UDP_GRO each datagram comes on its own, as to the clients.)
    let _ = set_int_option(&receiver, libc::SOL_UDP, libc::UDP_GRO, 1);
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(receiver.local_addr()?)?;
    if batching == Batching::Gso {
        set_gso(&sender, DATAGRAM + TAG)?;
    }
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let reading = {
        let stop = stop.0.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let _ = receiver.recv(&mut buffer);
            }
        })
    };
    let key = sealing_key()?;
    let mut batch = vec![0u8; (DATAGRAM + TAG) * segments];
    let mut counter = 0u64;
    let mut send = |batch: &mut [u8]| -> std::io::Result<()> {
        for packet in batch.chunks_mut(DATAGRAM + TAG) {
            counter += 1;
            seal(&key, counter, packet)?;
        }
        let sent = if batching == Batching::Mmsg {
            send_each(&sender, batch)
        } else {
            sender.send(batch).map(|_| ())
        };
        match sent {
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

/// Send each datagram of `batch` (DATAGRAM + TAG bytes apiece) as its own message of one
/// `sendmmsg` on the connected `socket`.
fn send_each(socket: &UdpSocket, batch: &mut [u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = batch
        .chunks_mut(DATAGRAM + TAG)
        .map(|d| libc::iovec { iov_base: d.as_mut_ptr().cast(), iov_len: d.len() })
        .collect();
    // SAFETY: all-zero headers are valid (no address: the socket is connected); each points
    // at one iovec of `iovecs`, which outlives the call.
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut at = 0;
    while at < headers.len() {
        // SAFETY: a valid socket and headers whose pointers are valid for the call.
        let sent = unsafe {
            libc::sendmmsg(socket.as_raw_fd(), headers[at..].as_mut_ptr(), (headers.len() - at) as _, 0)
        };
        if sent <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        at += sent as usize;
    }
    Ok(())
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
        assert!(floor.mmsg_ns.is_some_and(|ns| ns > 0.0), "sendmmsg works: {floor:?}");
        assert!(floor.seal_ns.is_some_and(|ns| ns > 0.0), "AES-GCM seals: {floor:?}");
    }
}
