//! Cost of finding a datagram's shard on the one media port with 1,000 sessions: by
//! known source address (every media packet), and by STUN ufrag (a new address).

use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use sfu::demux::RouteTable;

fn stun_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = vec![0x00, 0x06];
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[9; 12]);
    msg.extend_from_slice(&attrs);
    msg
}

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
