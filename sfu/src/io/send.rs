//! One turn's outgoing datagrams, sent together at its end. Datagrams to one address keep
//! their order; a run of equal-sized ones to one address (the packets of a video frame to
//! one subscriber) goes out as one GSO message, which costs the kernel far less than a
//! datagram each. The runs and single datagrams go out many per `sendmmsg`: that saves
//! only the system call, not the kernel's per-datagram work, but on a 2 vCPU AMD EPYC with
//! its mitigations that call was a quarter of a single datagram's send (about 1.2 of 4.8 us).

use std::net::SocketAddr;

use tracing::debug;

use super::{MediaSocket, Messages};

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

    /// Hand each queued datagram that `take` takes (it returns true) to it, in queue
    /// order, and keep the rest to be sent.
    pub fn divert(&mut self, mut take: impl FnMut(SocketAddr, &[u8]) -> bool) {
        let bytes = &self.bytes;
        self.queued.retain(|q| !take(q.destination, &bytes[q.start as usize..(q.start + q.len) as usize]));
        if self.queued.is_empty() {
            self.used = 0;
        }
    }

    /// Sends everything queued, in runs (see the module comment), as few `sendmmsg` calls
    /// as they fit in.
    pub fn flush(&mut self, socket: &MediaSocket) -> Flushed {
        self.cut_runs(socket.max_segments());
        let Self { bytes, queued, order, runs, run: copy, .. } = self;
        let queue = Queue { bytes, queued, order };
        let mut flushed = Flushed::default();
        let mut from = 0;
        while from < runs.len() {
            // As many runs as one call carries.
            let mut messages = Messages::new();
            let mut to = from;
            while to < runs.len()
                && messages.add(
                    queue.head(runs[to]).destination,
                    queue.datagrams(runs[to]),
                    Some(queue.head(runs[to]).len as usize),
                )
            {
                to += 1;
            }
            if to == from {
                // Not expected (runs are cut within a call's limits): sent alone, copied.
                queue.send_copied(socket, runs[from], copy, &mut flushed);
                from += 1;
                continue;
            }
            let mut at = 0;
            while at < messages.len() {
                flushed.sends += 1;
                match socket.send_many(&messages, at) {
                    Ok(taken) if taken > 0 => {
                        for run in &runs[from + at..from + at + taken] {
                            queue.count_sent(*run, &mut flushed);
                        }
                        at += taken;
                    }
                    result => {
                        let run = runs[from + at];
                        if run.1 > 1 {
                            // The kernel would not take this GSO run as it is: copied
                            // together through quinn-udp, which learns where GSO does not work.
                            debug!(datagrams = run.1, error = ?result.err(), "gathered GSO send failed; copying");
                            queue.send_copied(socket, run, copy, &mut flushed);
                        } else {
                            flushed.failed += 1;
                            debug!(destination = %queue.head(run).destination, error = ?result.err(), "send failed");
                        }
                        at += 1;
                    }
                }
            }
            from = to;
        }
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

/// The queue's datagrams, borrowed while a flush sends them.
struct Queue<'a> {
    bytes: &'a [u8],
    queued: &'a [Queued],
    order: &'a [u32],
}

impl<'a> Queue<'a> {
    fn head(&self, (first, _): (usize, usize)) -> &'a Queued {
        &self.queued[self.order[first] as usize]
    }

    fn datagrams(&self, (first, count): (usize, usize)) -> impl ExactSizeIterator<Item = &'a [u8]> + use<'a> {
        let (bytes, queued) = (self.bytes, self.queued);
        self.order[first..first + count].iter().map(move |i| {
            let q = &queued[*i as usize];
            &bytes[q.start as usize..(q.start + q.len) as usize]
        })
    }

    fn count_sent(&self, run: (usize, usize), flushed: &mut Flushed) {
        flushed.datagrams += run.1 as u64;
        flushed.bytes += self.datagrams(run).map(|d| d.len() as u64).sum::<u64>();
    }

    /// One run copied together and sent through quinn-udp.
    fn send_copied(
        &self,
        socket: &MediaSocket,
        run: (usize, usize),
        copy: &mut Vec<u8>,
        flushed: &mut Flushed,
    ) {
        copy.clear();
        for d in self.datagrams(run) {
            copy.extend_from_slice(d);
        }
        let head = self.head(run);
        flushed.sends += 1;
        match socket.send(head.destination, copy, (run.1 > 1).then_some(head.len as usize)) {
            Ok(()) => self.count_sent(run, flushed),
            Err(e) => {
                flushed.failed += run.1 as u64;
                debug!(destination = %head.destination, datagrams = run.1, error = %e, "send failed");
            }
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
