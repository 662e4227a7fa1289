//! Plain forwarding (audio): every packet of the source, renumbered into one continuous
//! stream per sink across changes of source.

use super::{Arrived, Decision};
use crate::router::sink::Sink;

pub fn forward(sink: &mut Sink, arrived: &Arrived) -> Decision {
    let (pt, codec) = arrived.format;
    let Some(out_pt) = sink.payload_type(pt, &codec) else {
        return Decision::NoCodec;
    };
    let p = arrived.packet;
    match sink.rewriter.rewrite(p.ssrc, p.seq, p.timestamp, arrived.arrival_ms) {
        Some(out) => Decision::Send {
            packet: arrived.forwarded(out_pt, out.seq, out.timestamp, None),
            switched: false,
        },
        None => Decision::Skip,
    }
}
