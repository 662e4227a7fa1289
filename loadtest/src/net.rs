//! UDP as the generator uses it on Linux: many datagrams per `recvmmsg`, each with the
//! kernel's arrival stamp, and the socket options that need raw calls.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;

/// Buffers for receiving many datagrams with one `recvmmsg` call, made once per media
/// thread (the headers point into the buffers, so it stays on its thread).
pub struct RecvBatch {
    buffers: Vec<[u8; 2048]>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Ancillary data, the kernel's receive timestamp (SO_TIMESTAMPNS) of each datagram;
    /// written by the kernel through the headers' pointers.
    _controls: Vec<[u64; 8]>,
    // Read by the kernel through the headers' pointers.
    _iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub const SIZE: usize = 32;

    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut buffers = vec![[0u8; 2048]; Self::SIZE];
        let mut addrs = vec![empty; Self::SIZE];
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; the pointers set below point into heap storage
        // owned by this struct, which never reallocates.
        let mut headers: Vec<libc::mmsghdr> =
            (0..Self::SIZE).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut controls = vec![[0u64; 8]; Self::SIZE];
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
        }
        Self { buffers, addrs, _controls: controls, _iovecs: iovecs, headers }
    }

    /// Have the kernel stamp each datagram `socket` receives with when it arrived.
    pub fn stamp_arrivals(socket: &UdpSocket) -> std::io::Result<()> {
        set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
    }

    /// When the kernel received the i-th datagram of the last batch (CLOCK_REALTIME, ns).
    pub fn arrival_ns(&self, i: usize) -> Option<u64> {
        let header = &self.headers[i].msg_hdr;
        // SAFETY: the kernel wrote msg_controllen bytes of well-formed cmsgs into our
        // buffer; the CMSG macros walk them within that length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    return Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
                }
                cmsg = libc::CMSG_NXTHDR(header, cmsg);
            }
        }
        None
    }

    /// Receive up to SIZE datagrams without blocking; Err(WouldBlock) when there are none.
    pub fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        for h in &mut self.headers {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            h.msg_len = 0;
        }
        // SAFETY: headers hold SIZE valid entries whose buffers outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                Self::SIZE as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The i-th datagram of the last batch and where it came from.
    pub fn datagram_mut(&mut self, i: usize) -> (SocketAddr, &mut [u8]) {
        let addr = &self.addrs[i];
        let source = match addr.ss_family as libc::c_int {
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
            }
            _ => {
                // SAFETY: otherwise it is the sockaddr_in of our IPv4 socket.
                let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                SocketAddr::from((a.sin_addr.s_addr.to_ne_bytes(), u16::from_be(a.sin_port)))
            }
        };
        let len = self.headers[i].msg_len as usize;
        (source, &mut self.buffers[i][..len])
    }
}

/// Set an integer socket option on anything with a file descriptor.
pub fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: a setsockopt on a socket the caller owns, with a pointer to an int that
    // outlives the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
