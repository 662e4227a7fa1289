//! A media thread's turn: read what arrived (paced while media flows), take signaling
//! and new clients from the inbox, run the due timers; each part bounded so the timers
//! run on time.

use std::cmp::Reverse;
use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Events;

use super::{WAKER, Worker, WorkerInput, WorkerResult};
use crate::net::RecvBatch;

/// Inputs (signaling messages, clients to add) handled between two runs of the timers, at
/// most, and for at most `INBOX_BUDGET` (at least one is): in a meeting-300 a renegotiation
/// offer (54 m-lines, 214 KB while the server offered every codec its engine knew; about
/// 46 KB since ADR 0018) cost a client's engine 30-54 ms, and with up to 64 in one turn
/// the media timers ran 100-180 ms late.
const INBOX_TURN: usize = 64;
const INBOX_BUDGET: Duration = Duration::from_millis(5);
/// While media flows, a media thread reads its sockets at most this often: each read then
/// takes a full batch per system call instead of the one or two datagrams that arrived since
/// the last wake-up, and the senders' loopback sends wake nobody. The waiting is not in any
/// figure: arrivals are stamped by the kernel (it shows as `latency_parts_ms.receive_queue`).
const READ_INTERVAL: Duration = Duration::from_micros(500);

impl Worker {
    pub(super) fn run(&mut self) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        let mut batch = RecvBatch::new();
        // The inbox had more than one turn's worth: do not wait for a wake-up to go on.
        let mut inbox_waiting = false;
        // When the sockets were last read, if anything was in them.
        let mut last_read: Option<Instant> = None;
        // Sockets left with datagrams in them at the end of a turn, and this turn's to read.
        let (mut unread, mut tokens) = (Vec::new(), Vec::new());
        loop {
            let now = Instant::now();
            let next = self.next_due().unwrap_or(now + Duration::from_millis(100));
            // While media flows, read at most every READ_INTERVAL (ADR 0015): the datagrams
            // gather in the socket meanwhile, with their kernel arrival stamps, which is
            // what latency and first frames are measured to. Never past a due timer.
            if let Some(read) = last_read.filter(|_| !inbox_waiting && unread.is_empty()) {
                let until = (read + READ_INTERVAL).min(next);
                if until > now {
                    std::thread::sleep(until - now);
                }
            }
            let now = Instant::now();
            let wait = next.saturating_duration_since(now).min(Duration::from_millis(100));
            let wait = if inbox_waiting || !unread.is_empty() { Duration::ZERO } else { wait };
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                eprintln!("loadtest: poll failed: {e}");
                break;
            }
            let mut stop = false;
            let mut read = 0;
            // A poll names each token once: only those carried over can repeat.
            let carried = unread.len();
            tokens.append(&mut unread);
            for event in events.iter() {
                if !tokens[..carried].contains(&event.token()) {
                    tokens.push(event.token());
                }
            }
            for token in tokens.drain(..) {
                if token == WAKER {
                    inbox_waiting = true;
                } else {
                    let (count, more) = self.receive(token, &mut batch);
                    read += count;
                    if more {
                        unread.push(token);
                    }
                }
            }
            last_read = (read > 0).then(Instant::now);
            if inbox_waiting {
                (stop, inbox_waiting) = self.handle_inbox();
            }
            if stop {
                break;
            }
            let now = Instant::now();
            self.run_timers(now);
            self.counts.publish(&self.shared);
            self.publish_live(now);
        }
        let ids: Vec<u32> = self.clients.keys().copied().collect();
        for id in ids {
            self.finish(id, false);
        }
        self.counts.publish(&self.shared);
        let seconds = std::mem::take(&mut self.seconds)
            .into_iter()
            .enumerate()
            .filter_map(|(s, entry)| Some((s as u64, entry?)))
            .collect();
        WorkerResult {
            clients: std::mem::take(&mut self.finished),
            latency: std::mem::take(&mut self.latency),
            send_delay: std::mem::take(&mut self.send_delay),
            receive_queue: std::mem::take(&mut self.receive_queue),
            seconds,
            ports: std::mem::take(&mut self.ports),
        }
    }

    /// Once a second, share the last complete second's p99 latency with the live line.
    fn publish_live(&mut self, now: Instant) {
        let second = self.shared.us(now) / 1_000_000;
        if second <= self.published_second {
            return;
        }
        self.published_second = second;
        let last = self.seconds.get((second - 1) as usize).and_then(Option::as_ref);
        if let Some(p99) = last.and_then(|(_, _, h)| h.percentile_ms(99.0)) {
            self.shared.live_p99_us.fetch_max((p99 * 1000.0) as u64, Ordering::Relaxed);
        }
    }

    fn next_due(&mut self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Handle up to `INBOX_TURN` inputs within `INBOX_BUDGET`, so media timers run between
    /// turns; returns (stop, more inputs may wait).
    fn handle_inbox(&mut self) -> (bool, bool) {
        let started = Instant::now();
        for _ in 0..INBOX_TURN {
            if started.elapsed() >= INBOX_BUDGET {
                return (false, true);
            }
            let Ok(input) = self.inbox.try_recv() else { return (false, false) };
            match input {
                WorkerInput::Add(setup) => {
                    let serial = setup.serial;
                    if let Err(e) = self.add(*setup) {
                        eprintln!("loadtest: client {serial} could not start: {e}");
                    }
                }
                WorkerInput::Signal(id, message) => self.signal(id, message),
                WorkerInput::Remove(id) => self.finish(id, true),
                WorkerInput::Forget(id) => {
                    if let Some(mut client) = self.clients.remove(&id)
                        && let Some(socket) = client.socket.as_mut()
                    {
                        let _ = self.poll.registry().deregister(socket);
                    }
                }
                WorkerInput::Stop => return (true, false),
            }
        }
        (false, true)
    }
}
