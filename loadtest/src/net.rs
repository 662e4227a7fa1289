//! UDP as the generator uses it on Linux: many datagrams per `recvmmsg`, each with the
//! kernel's arrival stamp, a server's GSO sends taken whole (UDP_GRO), and the socket
//! options that need raw calls.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;

/// Buffers for receiving many datagrams with one `recvmmsg` call, made once per media
/// thread (the headers point into the buffers, so it stays on its thread).
pub struct RecvBatch {
    /// SIZE buffers of BUFFER bytes each, one per message.
    buffers: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Ancillary data, the kernel's receive timestamp (SO_TIMESTAMPNS) of each datagram and,
    /// on a shared socket, the address it was sent to (IP_PKTINFO); written by the kernel
    /// through the headers' pointers.
    _controls: Vec<[u64; CONTROL_WORDS]>,
    // Read by the kernel through the headers' pointers.
    _iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub const SIZE: usize = 32;
    /// Bytes per message: a whole GSO send (at most 64 KiB) on a socket that takes them
    /// whole (`take_whole_sends`).
    const BUFFER: usize = 65_536;

    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut buffers = vec![0u8; Self::SIZE * Self::BUFFER];
        let mut addrs = vec![empty; Self::SIZE];
        let mut iovecs: Vec<libc::iovec> = buffers
            .chunks_exact_mut(Self::BUFFER)
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; the pointers set below point into heap storage
        // owned by this struct, which never reallocates.
        let mut headers: Vec<libc::mmsghdr> =
            (0..Self::SIZE).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut controls = vec![[0u64; CONTROL_WORDS]; Self::SIZE];
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

    /// Have the kernel say which of this machine's addresses each datagram `socket`
    /// receives was sent to (a socket bound to every address, shared by many clients).
    pub fn tell_destinations(socket: &UdpSocket) -> std::io::Result<()> {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }

    /// Have the kernel hand over a GSO send whose datagrams are all for `socket` as one
    /// message (UDP_GRO; on loopback the send reaches the socket whole) rather than cut it
    /// into one buffer per datagram: one message, one copy and one buffer freed for what
    /// the sender sent with one call. `datagram_mut` says where each datagram ends.
    /// False where the kernel has no such option (each datagram then comes on its own).
    pub fn take_whole_sends(socket: &UdpSocket) -> bool {
        set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
    }

    /// The IPv4 address the i-th datagram of the last batch was sent to, where the socket
    /// was asked to tell (`tell_destinations`).
    pub fn destination_v4(&self, i: usize) -> Option<std::net::Ipv4Addr> {
        let info: libc::in_pktinfo = self.control(i, libc::IPPROTO_IP, libc::IP_PKTINFO)?;
        Some(std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
    }

    /// When the kernel received the i-th datagram of the last batch (CLOCK_REALTIME, ns).
    pub fn arrival_ns(&self, i: usize) -> Option<u64> {
        let t: libc::timespec = self.control(i, libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)?;
        Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
    }

    /// The i-th datagram's ancillary data of this level and type, read as a `T` (plain old
    /// data of the kernel's: a timestamp, a packet info).
    fn control<T: Copy>(&self, i: usize, level: libc::c_int, kind: libc::c_int) -> Option<T> {
        let header = &self.headers[i].msg_hdr;
        // SAFETY: the kernel wrote msg_controllen bytes of well-formed cmsgs into our
        // buffer; the CMSG macros walk them within that length, and a cmsg of this level
        // and type carries a T.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == level && (*cmsg).cmsg_type == kind {
                    return Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<T>()));
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
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>() as _;
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

    /// The i-th message of the last batch, where it came from, and the size of each of its
    /// datagrams: a message holds one datagram, or a whole GSO send (`take_whole_sends`)
    /// of datagrams of that size, the last of which may be shorter.
    pub fn datagram_mut(&mut self, i: usize) -> (SocketAddr, &mut [u8], usize) {
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
        let segment = match self.control::<libc::c_int>(i, libc::SOL_UDP, libc::UDP_GRO) {
            Some(size) if size > 0 => size as usize,
            _ => len.max(1),
        };
        let start = i * Self::BUFFER;
        (source, &mut self.buffers[start..start + len], segment)
    }
}

/// 64-bit words of ancillary data per received message: a timestamp, a packet info and a
/// GSO segment size, each a header and its data, with room to spare.
const CONTROL_WORDS: usize = 16;

/// Send `data` to `destination` from `source`, one of this machine's addresses, on a
/// socket bound to every address (IP_PKTINFO names the source for this datagram).
#[cfg(test)]
pub fn send_from(
    socket: &UdpSocket,
    source: std::net::Ipv4Addr,
    destination: SocketAddr,
    data: &[u8],
) -> std::io::Result<()> {
    let mut batch = SendBatch::default();
    batch.push(source, destination, data)?;
    match batch.flush(socket) {
        0 => Ok(()),
        _ => Err(std::io::Error::other("not sent")),
    }
}

/// Datagrams a socket bound to every address sends with one `sendmmsg`, each from one of
/// this machine's addresses (IP_PKTINFO) to its own destination: what a client's engine
/// gives out in one turn leaves with one system call, and wakes the receiver once.
#[derive(Default)]
pub struct SendBatch {
    /// The datagrams back to back.
    bytes: Vec<u8>,
    /// Each datagram's end in `bytes`, and its source and destination.
    datagrams: Vec<(usize, libc::in_pktinfo, libc::sockaddr_in)>,
    // Made at each flush, kept for their allocations.
    iovecs: Vec<libc::iovec>,
    controls: Vec<[u64; PKTINFO_WORDS]>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into the batch's own heap
// vectors (which a move does not move), are written afresh by every flush before the call
// that reads them, and are never read otherwise.
unsafe impl Send for SendBatch {}

// SAFETY: CMSG_SPACE only computes a size.
const PKTINFO_SPACE: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) } as usize;
const PKTINFO_WORDS: usize = PKTINFO_SPACE.div_ceil(8);

impl SendBatch {
    /// Add a datagram to send from `source` to `destination` (IPv4 only).
    pub fn push(
        &mut self,
        source: std::net::Ipv4Addr,
        destination: SocketAddr,
        data: &[u8],
    ) -> std::io::Result<()> {
        let SocketAddr::V4(to) = destination else {
            return Err(std::io::Error::other("a shared socket sends to IPv4 only"));
        };
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(source).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        self.bytes.extend_from_slice(data);
        self.datagrams.push((self.bytes.len(), info, address));
        Ok(())
    }

    /// Send every datagram waiting, as few `sendmmsg` calls as the kernel allows; returns
    /// how many could not be sent (a full buffer, an unreachable port: each skipped).
    pub fn flush(&mut self, socket: &UdpSocket) -> usize {
        if self.datagrams.is_empty() {
            return 0;
        }
        self.iovecs.clear();
        let mut start = 0;
        for (end, _, _) in &self.datagrams {
            let data = &mut self.bytes[start..*end];
            self.iovecs.push(libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() });
            start = *end;
        }
        self.controls.clear();
        self.controls.resize(self.datagrams.len(), [0; PKTINFO_WORDS]);
        self.headers.clear();
        for (i, (_, info, address)) in self.datagrams.iter_mut().enumerate() {
            // SAFETY: an all-zero mmsghdr is valid; every pointer set here points into
            // this batch's vectors, which are not touched again until the sends are done.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let message = &mut header.msg_hdr;
            message.msg_name = (address as *mut libc::sockaddr_in).cast();
            message.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            message.msg_iov = &mut self.iovecs[i];
            message.msg_iovlen = 1;
            message.msg_control = self.controls[i].as_mut_ptr().cast();
            message.msg_controllen = PKTINFO_SPACE as _;
            // SAFETY: the control buffer holds one cmsg of an in_pktinfo, aligned.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(message);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), *info);
            }
            self.headers.push(header);
        }
        let mut failed = 0;
        let mut at = 0;
        while at < self.headers.len() {
            let left = &mut self.headers[at..];
            // SAFETY: a valid socket and headers whose pointers are valid for the call.
            let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), left.as_mut_ptr(), left.len() as _, 0) };
            if sent > 0 {
                at += sent as usize;
            } else {
                // The datagram at `at` was refused: skip it, send the rest.
                failed += 1;
                at += 1;
            }
        }
        self.bytes.clear();
        self.datagrams.clear();
        failed
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    /// A socket bound to every address sends from the loopback address it names, and is
    /// told which of its addresses each datagram it reads was sent to.
    #[test]
    fn a_shared_socket_sends_from_and_tells_its_addresses() {
        let shared = UdpSocket::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        RecvBatch::tell_destinations(&shared).unwrap();
        let port = shared.local_addr().unwrap().port();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let from = Ipv4Addr::new(127, 1, 0, 5);
        send_from(&shared, from, peer.local_addr().unwrap(), b"hello").unwrap();
        let mut buf = [0u8; 64];
        let (n, source) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], source), (&b"hello"[..], SocketAddr::from((from, port))));
        peer.send_to(b"back", (Ipv4Addr::new(127, 1, 0, 7), port)).unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(receive_some(&mut batch, &shared), 1);
        assert_eq!(batch.destination_v4(0), Some(Ipv4Addr::new(127, 1, 0, 7)));
        assert_eq!(batch.datagram_mut(0).1, b"back");
    }

    /// Waits up to two seconds for a batch on `socket`.
    fn receive_some(batch: &mut RecvBatch, socket: &UdpSocket) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match batch.receive(socket) {
                Ok(n) if n > 0 => return n,
                _ if std::time::Instant::now() > deadline => panic!("nothing arrived"),
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// A GSO send of three datagrams (the last shorter) reaches a socket that takes whole
    /// sends as one message that says where each datagram ends; a plain datagram after it
    /// is a message of its own, of its own size.
    #[test]
    fn a_whole_gso_send_is_one_message_cut_where_its_datagrams_end() {
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(RecvBatch::take_whole_sends(&socket));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(socket.local_addr().unwrap()).unwrap();
        set_int_option(&sender, libc::SOL_UDP, libc::UDP_SEGMENT, 100).unwrap();
        let run: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8).collect();
        sender.send(&run).unwrap();
        set_int_option(&sender, libc::SOL_UDP, libc::UDP_SEGMENT, 0).unwrap();
        sender.send(b"alone").unwrap();
        let mut batch = RecvBatch::new();
        let mut messages = Vec::new();
        while messages.len() < 2 {
            let count = receive_some(&mut batch, &socket);
            for i in 0..count {
                let (_, data, segment) = batch.datagram_mut(i);
                messages.push(data.chunks(segment).map(<[u8]>::to_vec).collect::<Vec<_>>());
            }
        }
        let sizes: Vec<Vec<usize>> = messages.iter().map(|m| m.iter().map(Vec::len).collect()).collect();
        assert_eq!(sizes, vec![vec![100, 100, 50], vec![5]]);
        assert!(messages[0].iter().enumerate().all(|(k, d)| d.iter().all(|&b| b == k as u8)));
        assert_eq!(messages[1][0], b"alone");
    }
}
