//! Plain forwarding (audio): every packet of the source, renumbered into one continuous
//! stream per sink across changes of source; RED unwrapped for a sink without it.

use super::{Arrived, Decision, Forwarded};
use crate::router::sink::Sink;

pub fn forward(sink: &mut Sink, arrived: &Arrived) -> Decision {
    let (pt, codec) = arrived.format;
    let Some(format) = sink.payload_type(pt, &codec) else {
        return Decision::NoCodec;
    };
    let Some(payload) = arrived.payload(format.unwrap_red) else {
        return Decision::Skip;
    };
    let p = arrived.packet;
    match sink.rewriter.rewrite(p.ssrc, p.seq, p.timestamp, arrived.arrival_ms) {
        Some(out) => Decision::Send {
            packet: Forwarded { payload, ..arrived.forwarded(format.pt, out.seq, out.timestamp, None) },
            switched: false,
        },
        None => Decision::Skip,
    }
}
