//! What a relay link's peer can send (sfu::relay::wire): a media datagram (flow id, then
//! RTP) or a control message's body, as an edge or an origin would receive them.
//!
//! Input: a first byte choosing which (even: a datagram, odd: a control message), then the
//! bytes. Properties: no panic; a datagram that decodes encodes back to one that decodes to
//! the same packet, and its flow id splits into parts that make the same id; a control
//! message that parses frames into its own length prefix and parses back equal.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sfu::relay::wire::{Control, RelayPacket, flow_id, split_flow};

fuzz_target!(|data: &[u8]| {
    let Some((choice, rest)) = data.split_first() else { return };
    if choice & 1 == 0 {
        datagram(rest);
    } else {
        control(rest);
    }
});

fn datagram(data: &[u8]) {
    let Ok(packet) = RelayPacket::decode(Bytes::copy_from_slice(data)) else { return };
    let again = RelayPacket::decode(packet.encode()).expect("an encoded packet decodes");
    assert_eq!(again, packet, "a packet survives encoding");
    let (slot, track, layer) = split_flow(packet.flow);
    if packet.flow < 1 << 44 {
        assert_eq!(flow_id(slot, track, layer), packet.flow, "a flow id is its parts");
    }
}

fn control(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Control>(data) else { return };
    let frame = message.frame();
    let len = u32::from_be_bytes(frame[..4].try_into().expect("a length prefix")) as usize;
    assert_eq!(len, frame.len() - 4);
    let back: Control = serde_json::from_slice(&frame[4..]).expect("a framed message parses");
    assert_eq!(back, message, "a control message survives framing");
}
