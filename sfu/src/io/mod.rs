//! The media port's socket I/O: batched receive (recvmmsg) into reused buffers, and
//! batched send (GSO for runs of equal-sized datagrams to one address, through quinn-udp).
//! This module decides what goes in each system call.

mod recv;
mod send;
pub(crate) mod tcp;

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use quinn_udp::{Transmit, UdpSocketState};

pub(crate) use recv::{DatagramPool, Datagrams, Delivery, Lane, receive_loop};
pub(crate) use send::SendQueue;
pub(crate) use tcp::TcpPeers;

/// Largest datagram we accept; anything longer is not WebRTC media.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// At most this many datagrams go in one gathered GSO send (the kernel takes 64).
const MAX_GATHERED: usize = 64;
/// Messages (a datagram, or a GSO run to one address) per `sendmmsg`.
const MESSAGES_PER_CALL: usize = 64;
/// Datagrams per `sendmmsg`, all its messages together.
const DATAGRAMS_PER_CALL: usize = 256;
/// Kernel socket buffers: a burst of keyframes to 300 subscribers is a few megabytes.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// The one UDP socket of the media port, non-blocking, shared by the receive thread and
/// every shard's sends.
pub(crate) struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Bound to an IPv6 address: IPv4 destinations are written as mapped addresses.
    v6: bool,
}

impl MediaSocket {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        // The receive thread blocks in recvmmsg until the first datagram (recv.rs), waking
        // now and then to notice shutdown; it reads datagrams whole, so no GRO.
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(recv::WAKE_EVERY))?;
        set_gro(&socket, false);
        let v6 = socket.local_addr()?.is_ipv6();
        Ok(Self { socket, state, v6 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams one GSO send may carry (1 where the kernel has no GSO).
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_GATHERED)
    }

    /// Sends `contents` to `destination`: one datagram, or with `segment` the kernel cuts
    /// it into datagrams of that size (the last may be shorter).
    fn send(&self, destination: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: segment, src_ip: None };
        self.state.try_send((&self.socket).into(), &transmit)
    }

    /// Sends `messages[from..]` with one `sendmmsg`, each straight from where its datagrams
    /// lie (the kernel gathers them). Returns how many messages the kernel took; an error
    /// is the first message's own (the kernel stops at a message it refuses, and says why
    /// only when it is the first of the call).
    fn send_many(&self, messages: &Messages<'_>, from: usize) -> io::Result<usize> {
        let batch = &messages.meta()[from..];
        // Written only as far as this call uses them: a flush of one datagram pays for one.
        let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MESSAGES_PER_CALL];
        let mut addresses = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; MESSAGES_PER_CALL];
        let mut controls = [const { MaybeUninit::<[u64; CONTROL_WORDS]>::uninit() }; MESSAGES_PER_CALL];
        let (heads, names, cmsgs) = (
            headers.as_mut_ptr().cast::<libc::mmsghdr>(),
            addresses.as_mut_ptr().cast::<libc::sockaddr_storage>(),
            controls.as_mut_ptr().cast::<[u64; CONTROL_WORDS]>(),
        );
        let iovecs = messages.iovecs.as_ptr() as *mut libc::iovec;
        for (k, meta) in batch.iter().enumerate() {
            let (address, length) = socket_address(meta.destination, self.v6);
            // SAFETY: k < MESSAGES_PER_CALL and first + count <= DATAGRAMS_PER_CALL (Messages
            // keeps both), and iovecs[first..first + count] were written by Messages::add;
            // each entry is written before it is pointed at, an all-zero mmsghdr is valid,
            // the control buffer holds one cmsg of a u16 (CONTROL_SPACE), aligned, and the
            // kernel only reads the iovecs of a send.
            unsafe {
                names.add(k).write(address);
                heads.add(k).write(std::mem::zeroed());
                let h = &mut (*heads.add(k)).msg_hdr;
                h.msg_name = names.add(k).cast();
                h.msg_namelen = length;
                h.msg_iov = iovecs.add(meta.first as usize);
                h.msg_iovlen = meta.count as _;
                if meta.segment > 0 {
                    cmsgs.add(k).write([0; CONTROL_WORDS]);
                    h.msg_control = cmsgs.add(k).cast();
                    h.msg_controllen = CONTROL_SPACE as _;
                    let cmsg = libc::CMSG_FIRSTHDR(h);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), meta.segment);
                }
            }
        }
        // SAFETY: a valid socket and batch.len() headers, written above, whose pointers are
        // valid for the call.
        let sent = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), heads, batch.len() as _, 0) };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
    }
}

/// Space for one cmsg carrying a u16 (the GSO segment size), and in 64-bit words.
// SAFETY: CMSG_SPACE only computes a size.
const CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
const CONTROL_WORDS: usize = CONTROL_SPACE.div_ceil(8);

/// One message of a `sendmmsg`: `count` datagrams from `first` in the iovecs to one
/// destination, a GSO run when `segment` is not 0.
#[derive(Clone, Copy)]
struct Meta {
    destination: SocketAddr,
    first: u16,
    count: u16,
    segment: u16,
}

/// Messages for one `sendmmsg` call, the datagrams borrowed from where they lie. Only the
/// entries added are ever written or read.
pub(crate) struct Messages<'a> {
    iovecs: [MaybeUninit<libc::iovec>; DATAGRAMS_PER_CALL],
    datagrams: usize,
    meta: [MaybeUninit<Meta>; MESSAGES_PER_CALL],
    len: usize,
    _lent: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Messages<'a> {
    pub fn new() -> Self {
        Self {
            iovecs: [const { MaybeUninit::uninit() }; DATAGRAMS_PER_CALL],
            datagrams: 0,
            meta: [const { MaybeUninit::uninit() }; MESSAGES_PER_CALL],
            len: 0,
            _lent: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The messages added so far.
    fn meta(&self) -> &[Meta] {
        // SAFETY: meta[..len] were written by add.
        unsafe { std::slice::from_raw_parts(self.meta.as_ptr().cast::<Meta>(), self.len) }
    }

    /// Adds a message: one datagram, or (`segment` given) a GSO run whose datagrams are
    /// all of that size but the last, which may be shorter. False if it does not fit.
    pub fn add(
        &mut self,
        destination: SocketAddr,
        datagrams: impl ExactSizeIterator<Item = &'a [u8]>,
        segment: Option<usize>,
    ) -> bool {
        let count = datagrams.len();
        let first = self.datagrams;
        if count == 0
            || count > MAX_GATHERED
            || self.len == MESSAGES_PER_CALL
            || first + count > DATAGRAMS_PER_CALL
        {
            return false;
        }
        // Counted as written, whatever the iterator said its length was.
        let mut written = 0;
        for (slot, d) in self.iovecs[first..first + count].iter_mut().zip(datagrams) {
            slot.write(libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() });
            written += 1;
        }
        if written == 0 {
            return false;
        }
        self.datagrams += written;
        let segment = segment.filter(|_| written > 1).unwrap_or(0) as u16;
        self.meta[self.len].write(Meta { destination, first: first as u16, count: written as u16, segment });
        self.len += 1;
        true
    }
}

/// `destination` as a C socket address for a socket of the given family.
fn socket_address(destination: SocketAddr, v6_socket: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let v6 = match destination {
        SocketAddr::V4(v4) if !v6_socket => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            return (storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t);
        }
        SocketAddr::V4(v4) => std::net::SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: v6.flowinfo(),
        sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
        sin6_scope_id: v6.scope_id(),
    };
    // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
    (storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

/// Turns UDP generic receive offload on or off (quinn-udp turns it on where it can).
fn set_gro(socket: &UdpSocket, on: bool) {
    let value: libc::c_int = on.into();
    // SAFETY: a valid socket and an int option of the right size.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One `sendmmsg` of a gathered GSO run and single datagrams to two receivers: each
    /// arrives as its datagrams, in order, from an IPv4 socket and as a mapped address from
    /// a dual-stack IPv6 one.
    #[test]
    fn one_call_carries_runs_and_single_datagrams() {
        let receivers: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for r in &receivers {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let (a, b) = (receivers[0].local_addr().unwrap(), receivers[1].local_addr().unwrap());
        let run: Vec<Vec<u8>> = vec![vec![1; 300], vec![2; 300], vec![3; 120]];
        let (single_a, single_b) = (vec![4u8; 80], vec![5u8; 1200]);
        let mut senders = vec![MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap()];
        if let Ok(dual) = MediaSocket::bind("[::]:0".parse().unwrap()) {
            senders.push(dual);
        }
        for sender in &senders {
            let mut messages = Messages::new();
            assert!(messages.add(a, run.iter().map(|s| s.as_slice()), Some(300)));
            assert!(messages.add(b, std::iter::once(single_b.as_slice()), None));
            assert!(messages.add(a, std::iter::once(single_a.as_slice()), Some(80)));
            assert_eq!(sender.send_many(&messages, 0).expect("sent"), 3);
            let mut buf = [0u8; 2048];
            for expected in run.iter().chain([&single_a]) {
                let (n, _) = receivers[0].recv_from(&mut buf).expect("a datagram arrives");
                assert_eq!(&buf[..n], expected.as_slice());
            }
            let (n, _) = receivers[1].recv_from(&mut buf).expect("the other's datagram arrives");
            assert_eq!(&buf[..n], single_b.as_slice());
        }
        let mut messages = Messages::new();
        let too_many = std::iter::repeat_n(&[0u8; 10][..], MAX_GATHERED + 1).collect::<Vec<_>>();
        assert!(!messages.add(a, too_many.into_iter(), Some(10)), "more than one GSO message may carry");
        for _ in 0..MESSAGES_PER_CALL {
            assert!(messages.add(a, std::iter::once(&[0u8; 10][..]), None));
        }
        assert!(
            !messages.add(a, std::iter::once(&[0u8; 10][..]), None),
            "more messages than one call carries"
        );
    }
}
