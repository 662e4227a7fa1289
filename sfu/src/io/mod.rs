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
        // The receive thread blocks in recvmmsg until the first datagram (recv.rs), waking
        // now and then to notice shutdown; it reads datagrams whole, so no GRO.
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(recv::WAKE_EVERY))?;
        set_gro(&socket, false);
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
    /// it into datagrams of that size (the last may be shorter).
    fn send(&self, destination: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: segment, src_ip: None };
        self.state.try_send((&self.socket).into(), &transmit)
    }
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
