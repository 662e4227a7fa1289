//! The media port's socket I/O: batched receive (recvmmsg, GRO) into reused buffers, and
//! batched send (GSO for runs of equal-sized datagrams to one address). quinn-udp makes
//! the system calls; this module decides what goes in each.

mod recv;
mod send;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use quinn_udp::{Transmit, UdpSocketState};

pub(crate) use recv::{DatagramPool, Datagrams, Delivery, receive_loop};
pub(crate) use send::SendQueue;

/// Largest datagram we accept; anything longer is not WebRTC media.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// Kernel socket buffers: a burst of keyframes to 300 subscribers is a few megabytes.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// The one UDP socket of the media port, non-blocking, shared by the receive thread and
/// every shard's sends.
pub(crate) struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl MediaSocket {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        Ok(Self { socket, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams one GSO send may carry (1 where the kernel has no GSO).
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `destination`: one datagram, or with `segment` the kernel cuts
    /// it into datagrams of that size (the last may be shorter). A full send buffer gets
    /// a short wait, not an unbounded one: a shard never blocks behind one slow socket.
    fn send(&self, destination: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: segment, src_ip: None };
        match self.state.try_send((&self.socket).into(), &transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.wait(libc::POLLOUT, Duration::from_millis(2));
                self.state.try_send((&self.socket).into(), &transmit)
            }
            other => other,
        }
    }

    /// Waits until the socket is readable (or writable, with POLLOUT), or `timeout` passed.
    fn wait(&self, events: libc::c_short, timeout: Duration) -> bool {
        let mut fd = libc::pollfd { fd: self.socket.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
        ready > 0
    }
}
