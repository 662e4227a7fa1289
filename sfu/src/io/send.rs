//! One turn's outgoing datagrams, sent together at its end. Datagrams to one address keep
//! their order; a run of equal-sized ones to one address (the packets of a video frame to
//! one subscriber) goes out as one GSO send, which costs the kernel far less than a send
//! per datagram. Everything else is sent one by one: `sendmmsg` would save the system call
//! but not the kernel's per-datagram work, which is most of the cost (SCENARIOS.md).

use std::net::SocketAddr;

use tracing::debug;

use super::MediaSocket;

/// A GSO send carries at most this many bytes (the kernel's limit is 64 KiB).
const MAX_GSO_BYTES: usize = 60_000;

struct Queued {
    destination: SocketAddr,
    /// The destination as one integer, to order the queue by it cheaply.
    key: u64,
    start: u32,
    len: u32,
}

/// An address as one integer: equal addresses give equal keys (two addresses may share
/// one too; runs compare the addresses themselves).
fn address_key(a: &SocketAddr) -> u64 {
    let ip = match a {
        SocketAddr::V4(v4) => u32::from(*v4.ip()) as u64,
        SocketAddr::V6(v6) => {
            let bits = u128::from(*v6.ip());
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (ip << 16) ^ a.port() as u64
}

/// What a flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub datagrams: u64,
    pub bytes: u64,
    /// System calls made (a GSO send is one for many datagrams).
    pub sends: u64,
    pub failed: u64,
}

#[derive(Default)]
pub(crate) struct SendQueue {
    /// The queued datagrams back to back in `bytes[..used]`; `bytes` only grows (zeroed
    /// once), so a datagram written in place costs no clearing.
    bytes: Vec<u8>,
    used: usize,
    queued: Vec<Queued>,
    /// Indexes into `queued`, ordered by destination then by when they were queued.
    order: Vec<u32>,
    /// Runs of `order` as (first, count), and one GSO run's bytes copied together.
    runs: Vec<(usize, usize)>,
    run: Vec<u8>,
}

impl SendQueue {
    pub fn push(&mut self, destination: SocketAddr, datagram: &[u8]) {
        let _ = self.push_with(destination, datagram.len(), |buf| {
            buf.copy_from_slice(datagram);
            Ok::<_, ()>(datagram.len())
        });
    }

    /// Queue a datagram that `write` puts in place, given exactly `max` bytes of room; it
    /// returns the length it wrote (at most `max`), or an error, and then nothing is queued.
    pub fn push_with<E>(
        &mut self,
        destination: SocketAddr,
        max: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let start = self.used;
        if self.bytes.len() < start + max {
            let grown = (start + max).max(self.bytes.len() * 2).max(64 * 1024);
            self.bytes.resize(grown, 0);
        }
        let len = write(&mut self.bytes[start..start + max])?;
        debug_assert!(len <= max, "a datagram written in place is longer than its room");
        let len = len.min(max);
        self.used += len;
        self.queued.push(Queued {
            destination,
            key: address_key(&destination),
            start: start as u32,
            len: len as u32,
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    fn datagram(&self, q: &Queued) -> &[u8] {
        &self.bytes[q.start as usize..(q.start + q.len) as usize]
    }

    /// Sends everything queued, in runs (see the module comment).
    pub fn flush(&mut self, socket: &MediaSocket) -> Flushed {
        self.cut_runs(socket.max_segments());
        let runs = std::mem::take(&mut self.runs);
        let mut flushed = Flushed::default();
        for &(first, count) in &runs {
            let items = &self.order[first..first + count];
            let head = &self.queued[items[0] as usize];
            let result = if count == 1 {
                socket.send(head.destination, self.datagram(head), None)
            } else {
                let segments = items.iter().map(|i| self.datagram(&self.queued[*i as usize]));
                let mut sent = socket.send_gathered(head.destination, segments, head.len as usize);
                if let Err(e) = &sent {
                    // The kernel would not take this GSO send as it is: the same run copied
                    // together through quinn-udp, which learns where GSO does not work.
                    debug!(destination = %head.destination, datagrams = count, error = %e, "gathered GSO send failed; copying");
                    let mut run = std::mem::take(&mut self.run);
                    run.clear();
                    for i in items {
                        run.extend_from_slice(self.datagram(&self.queued[*i as usize]));
                    }
                    sent = socket.send(head.destination, &run, Some(head.len as usize));
                    self.run = run;
                }
                sent
            };
            flushed.sends += 1;
            let bytes: u64 = items.iter().map(|i| self.queued[*i as usize].len as u64).sum();
            match result {
                Ok(()) => {
                    flushed.datagrams += count as u64;
                    flushed.bytes += bytes;
                }
                Err(e) => {
                    flushed.failed += count as u64;
                    debug!(destination = %head.destination, datagrams = count, error = %e, "send failed");
                }
            }
        }
        self.runs = runs;
        self.used = 0;
        self.queued.clear();
        flushed
    }

    /// Orders the queue by destination (keeping each destination's order) and cuts it into
    /// runs `(first index in order, count)`: datagrams of one size to one address, the
    /// last of a run may be shorter, as GSO allows.
    fn cut_runs(&mut self, max_segments: usize) {
        self.order.clear();
        self.runs.clear();
        self.order.extend(0..self.queued.len() as u32);
        let queued = &self.queued;
        self.order.sort_unstable_by_key(|i| (queued[*i as usize].key, *i));
        let mut i = 0;
        while i < self.order.len() {
            let head = &queued[self.order[i] as usize];
            let mut count = 1;
            let mut bytes = head.len as usize;
            while i + count < self.order.len() && count < max_segments {
                let next = &queued[self.order[i + count] as usize];
                if next.destination != head.destination
                    || next.len > head.len
                    || bytes + next.len as usize > MAX_GSO_BYTES
                {
                    break;
                }
                count += 1;
                bytes += next.len as usize;
                if next.len < head.len {
                    break; // a shorter datagram ends a run
                }
            }
            self.runs.push((i, count));
            i += count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn runs_of(pushes: &[(u16, usize)], max_segments: usize) -> Vec<Vec<(u16, usize)>> {
        let mut q = SendQueue::default();
        for (port, len) in pushes {
            q.push(addr(*port), &vec![0; *len]);
        }
        q.cut_runs(max_segments);
        q.runs
            .iter()
            .map(|&(first, count)| {
                q.order[first..first + count]
                    .iter()
                    .map(|i| {
                        let item = &q.queued[*i as usize];
                        (item.destination.port(), item.len as usize)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn equal_sizes_to_one_address_form_one_run_ending_at_a_shorter_one() {
        let runs = runs_of(&[(1, 1200), (2, 100), (1, 1200), (1, 1200), (1, 300), (1, 1200)], 64);
        assert_eq!(
            runs,
            vec![vec![(1, 1200), (1, 1200), (1, 1200), (1, 300)], vec![(1, 1200)], vec![(2, 100)]]
        );
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run_and_order_per_address_is_kept() {
        let runs = runs_of(&[(1, 100), (1, 1200), (1, 1200)], 64);
        assert_eq!(runs, vec![vec![(1, 100)], vec![(1, 1200), (1, 1200)]]);
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let runs = runs_of(&[(1, 1000); 5], 2);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let runs = runs_of(&[(1, 1400); 50], 64);
        assert!(runs.iter().all(|r| r.len() * 1400 <= MAX_GSO_BYTES));
        assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 50);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_send() {
        let runs = runs_of(&[(1, 1200), (1, 1200), (1, 1200)], 1);
        assert_eq!(runs.len(), 3);
    }
}
