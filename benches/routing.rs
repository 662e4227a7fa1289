//! Cost of finding a datagram's shard on the one media port with 1,000 sessions: by
//! known source address (every media packet), and by STUN ufrag (a new address).

use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use sfu::demux::RouteTable;
use sfu::demux::stun_binding_request;

fn route_1000_sessions(c: &mut Criterion) {
    let table = RouteTable::default();
    let addrs: Vec<SocketAddr> =
        (0..1000).map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))).collect();
    for (i, a) in addrs.iter().enumerate() {
        table.add_addr(*a, i % 2);
        table.add_ufrag(&format!("ufrag{i:04}"), i % 2);
    }
    let rtp = vec![0x80u8; 1200];
    let mut i = 0;
    c.bench_function("route_by_address_1000_sessions", |b| {
        b.iter(|| {
            i = (i + 1) % addrs.len();
            std::hint::black_box(table.route(addrs[i], &rtp))
        })
    });
    let stun = stun_binding_request("ufrag0500:remote");
    let stranger: SocketAddr = "127.0.0.2:40000".parse().expect("address");
    c.bench_function("route_by_stun_ufrag_1000_sessions", |b| {
        b.iter(|| std::hint::black_box(table.route(stranger, &stun)))
    });
}

criterion_group!(benches, route_1000_sessions);
criterion_main!(benches);
