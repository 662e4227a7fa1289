//! The load generator's cost per received media packet, on both of its receive paths fed
//! the same SRTP datagrams (issue 11): str0m's engine (`handle_input`, then polled up to
//! the packet, its whole output every 32 datagrams, as the generator drove it), and the
//! generator's own path (header parse and AES-GCM open in place). No socket: the kernel's
//! part is the same for both and is left out.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use huiyi_loadtest::srtp::pair::{Pair, drain};
use huiyi_loadtest::srtp::{SrtpIn, take_keys};
use str0m::{Event, Output};

/// A payload as the generator's video packets carry.
const PAYLOAD: usize = 1200;

/// `count` datagrams of one connected pair, and the receiver's own-path state; each
/// measurement takes fresh ones (the engine refuses a replayed SRTP index).
fn datagrams(count: u64, ids: (u32, u32)) -> (Pair, SrtpIn, Vec<Vec<u8>>) {
    let mut pair = Pair::connected(ids.0, ids.1);
    let keys = take_keys(ids.1).expect("the receiver exported its keys");
    let mut own = SrtpIn::new(&keys).expect("a GCM profile");
    let mut sent = Vec::with_capacity(count as usize);
    let mut seq = 1;
    while (sent.len() as u64) < count + 1 {
        let chunk = (count + 1 - sent.len() as u64).min(500);
        sent.extend(pair.send_sized(seq..seq + chunk, PAYLOAD));
        seq += chunk;
    }
    // The first goes through the engine, which tells the stream's starting index.
    let first = sent.remove(0);
    pair.deliver(&first);
    let mut got = Vec::new();
    drain(&mut pair.receiver, &mut Vec::new(), &mut got);
    let ssrc = u32::from_be_bytes(first[8..12].try_into().expect("an RTP header"));
    own.learn(ssrc, got.first().expect("the engine opened it").0);
    sent.truncate(count as usize);
    (pair, own, sent)
}

fn receive_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("generator_receive");
    group.measurement_time(Duration::from_secs(3)).sample_size(20).throughput(Throughput::Elements(1));
    let mut ids = 10_000u32;
    let mut next_ids = move || {
        ids += 2;
        (ids, ids + 1)
    };
    group.bench_function("str0m_engine", |b| {
        b.iter_custom(|iters| {
            let (mut pair, _, sent) = datagrams(iters, next_ids());
            let mut opened = 0;
            let start = Instant::now();
            for (i, d) in sent.iter().enumerate() {
                pair.deliver(d);
                // Polled up to the packet, as the generator did; the rest every 32.
                loop {
                    match pair.receiver.poll_output().expect("output") {
                        Output::Event(Event::RtpPacket(p)) => {
                            std::hint::black_box(&p);
                            opened += 1;
                            break;
                        }
                        Output::Timeout(_) => break,
                        _ => {}
                    }
                }
                if i % 32 == 31 {
                    let mut got = Vec::new();
                    drain(&mut pair.receiver, &mut Vec::new(), &mut got);
                    opened += got.len();
                }
            }
            let took = start.elapsed();
            assert_eq!(opened, sent.len(), "the engine opened every datagram");
            took
        })
    });
    group.bench_function("own_path", |b| {
        b.iter_custom(|iters| {
            let (_, mut own, mut sent) = datagrams(iters, next_ids());
            let start = Instant::now();
            for d in sent.iter_mut() {
                let opened = own.open(d).expect("opened");
                std::hint::black_box(opened.payload);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, receive_paths);
criterion_main!(benches);
