//! Relay forwarding: every layer of the source as it came (its SSRC, sequence numbers,
//! timestamps and payload type), for a link to another node whose own sinks choose and
//! renumber. Sequence numbers are extended per layer so the link can name any packet.

use super::{Arrived, Decision};
use crate::router::sink::Sink;

pub fn forward(sink: &mut Sink, arrived: &Arrived) -> Decision {
    let p = arrived.packet;
    let Some(extender) = sink.relay_seq.get_mut(arrived.layer as usize) else { return Decision::Skip };
    let seq = extender.extend(p.seq);
    Decision::Send { packet: arrived.forwarded(p.pt, seq, p.timestamp, None), switched: false }
}
