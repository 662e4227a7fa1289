//! Cost per forwarded packet through the forwarding core, for one publisher to N
//! subscribers: sequence/timestamp rewrite, the subscriber stream's `write_rtp`, and the
//! session's output (SRTP protect, RTX cache) up to the datagram ready to send. No
//! socket: the datagram is counted, not sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sfu::MediaConfig;
use sfu::router::rtp::RtpRewriter;
use sfu::testing::Link;
use str0m::rtp::RtpWrite;

fn forward_one_to_n(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_1_to_n");
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 50] {
        let config = MediaConfig::default();
        let mut subscribers: Vec<_> = (0..n)
            .map(|_| {
                let mut link = Link::new(&config);
                let (ssrc, pt) = link.connect();
                link.deliver_to_client = false;
                (link, ssrc, pt, RtpRewriter::new(90_000))
            })
            .collect();
        let payload: Arc<[u8]> = vec![0x5a; 1200].into();
        let mut seq: u16 = 0;
        let start = Instant::now();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n}_subscribers"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let arrival_ms = start.elapsed().as_millis() as u64;
                for (link, ssrc, pt, rewriter) in subscribers.iter_mut() {
                    let Some(out) = rewriter.rewrite(1, seq, seq as u32 * 3000, arrival_ms) else { continue };
                    let now = link.now;
                    let mut api = link.server.rtc.direct_api();
                    let stream = api.stream_tx(ssrc).expect("negotiated stream");
                    stream.write_rtp(
                        RtpWrite::new(*pt, out.seq.into(), out.timestamp, now, payload.clone())
                            .nackable(true),
                    );
                    link.drain(true);
                }
            })
        });
        let sent: u64 = subscribers.iter().map(|(l, ..)| l.sent_datagrams).sum();
        assert!(sent > 0, "the benchmark produced datagrams");
    }
    group.finish();
}

fn rewrite_only(c: &mut Criterion) {
    let mut rewriter = RtpRewriter::new(90_000);
    let mut seq: u16 = 0;
    c.bench_function("rtp_rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            std::hint::black_box(rewriter.rewrite(7, seq, seq as u32 * 3000, seq as u64))
        })
    });
}

/// The fast path's cost per forwarded packet (ADR 0009): header, VP8-free payload copy
/// and AES-GCM protection with keys learnt from a real DTLS handshake, up to the datagram
/// ready to send. Compare with `forward_1_to_n` (str0m's send path, same payload size).
fn fast_path_seal(c: &mut Criterion) {
    sfu::egress::keys::take_captured(); // earlier benchmarks' handshakes
    let mut link = Link::new(&MediaConfig::default());
    let (ssrc, pt) = link.connect();
    let captured = sfu::egress::keys::take_captured();
    let keys = captured.last().expect("the handshake exported keying material");
    let crypto = sfu::egress::keys::crypto_provider();
    let (tx, rx) =
        sfu::egress::srtp::session_keys(&crypto, keys.profile, &keys.material, keys.local_is_client)
            .expect("a GCM profile");
    let mut egress = sfu::egress::Egress::new(tx, rx);
    // As a browser negotiates: mid and transport-wide numbers (ADR 0025).
    let ext = sfu::egress::ExtIds { mid: Some(1), transport_cc: Some(3), ..Default::default() };
    let mut slot = sfu::egress::SlotOut::new(*ssrc, None, Vec::new(), "0".into(), ext);
    let payload: Arc<[u8]> = vec![0x5a; 1200].into();
    let mut seq: u64 = 0;
    let mut out = vec![0u8; sfu::egress::MAX_DATAGRAM];
    c.bench_function("fast_path_seal_1200_bytes", |b| {
        b.iter(|| {
            seq += 1;
            let p = sfu::egress::Outgoing {
                pt: *pt,
                seq,
                timestamp: seq as u32 * 3000,
                marker: false,
                payload: &payload,
                vp8: None,
                audio_level: None,
                orientation: None,
                content_type: None,
            };
            slot.remember(&p);
            std::hint::black_box(egress.seal_to(&slot, &p, &mut out, seq))
        })
    });
}

criterion_group!(benches, forward_one_to_n, rewrite_only, fast_path_seal);
criterion_main!(benches);
