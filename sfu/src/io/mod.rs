//! The media port's socket I/O: batched receive (recvmmsg) into reused buffers, and
//! batched send (GSO for runs of equal-sized datagrams to one address, through quinn-udp).
//! This module decides what goes in each system call.

mod recv;
mod send;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use quinn_udp::{Transmit, UdpSocketState};

pub(crate) use recv::{DatagramPool, Datagrams, Delivery, receive_loop};
pub(crate) use send::SendQueue;

/// Largest datagram we accept; anything longer is not WebRTC media.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// At most this many datagrams go in one gathered GSO send (the kernel takes 64).
const MAX_GATHERED: usize = 64;
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
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `destination`: one datagram, or with `segment` the kernel cuts
    /// it into datagrams of that size (the last may be shorter).
    fn send(&self, destination: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: segment, src_ip: None };
        self.state.try_send((&self.socket).into(), &transmit)
    }

    /// Sends `segments` (all of `segment` bytes but the last, which may be shorter) to
    /// `destination` as one GSO send, straight from where they lie: the kernel gathers
    /// them, so they are not first copied together.
    fn send_gathered<'a>(
        &self,
        destination: SocketAddr,
        segments: impl Iterator<Item = &'a [u8]>,
        segment: usize,
    ) -> io::Result<()> {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_GATHERED];
        let mut count = 0;
        for s in segments {
            if count == MAX_GATHERED {
                return Err(io::Error::other("too many segments for one gathered send"));
            }
            iov[count] = libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() };
            count += 1;
        }
        let (mut address, address_len) = socket_address(destination, self.v6);
        // SAFETY: CMSG_SPACE only computes a size.
        const SPACE: usize = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        let mut control = [0u64; SPACE.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_name = (&mut address as *mut libc::sockaddr_storage).cast();
        message.msg_namelen = address_len;
        message.msg_iov = iov.as_mut_ptr();
        message.msg_iovlen = count as _;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = SPACE as _;
        // SAFETY: the control buffer holds one cmsg of a u16 (CMSG_SPACE above), aligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&message);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
        // SAFETY: a valid socket and a message whose pointers are valid for the call.
        let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &message, 0) };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
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

    /// A gathered GSO send arrives as its segments, in order, from an IPv4 socket and as
    /// a mapped address from a dual-stack IPv6 one.
    #[test]
    fn a_gathered_send_arrives_as_its_segments() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = receiver.local_addr().unwrap();
        let segments: Vec<Vec<u8>> = vec![vec![1; 300], vec![2; 300], vec![3; 120]];
        let mut senders = vec![MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap()];
        if let Ok(dual) = MediaSocket::bind("[::]:0".parse().unwrap()) {
            senders.push(dual);
        }
        for sender in &senders {
            sender.send_gathered(to, segments.iter().map(|s| s.as_slice()), 300).expect("sent");
            let mut buf = [0u8; 2048];
            for segment in &segments {
                let (n, _) = receiver.recv_from(&mut buf).expect("a segment arrives");
                assert_eq!(&buf[..n], segment.as_slice());
            }
        }
        let too_many = std::iter::repeat_n(&[0u8; 10][..], MAX_GATHERED + 1);
        assert!(senders[0].send_gathered(to, too_many, 10).is_err(), "more than one send may carry");
    }
}
