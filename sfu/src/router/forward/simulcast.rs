//! Simulcast forwarding (video): one layer of the source at a time. A sink starts, and
//! switches to another layer, only at a keyframe of that layer; the packets it sends are
//! renumbered (sequence, timestamp, VP8 picture ids) into one continuous stream.

use super::{Arrived, Decision};
use crate::router::sink::Sink;

pub fn forward(sink: &mut Sink, arrived: &Arrived) -> Decision {
    let layer = arrived.layer;
    let p = arrived.packet;
    let mut switched = false;
    if sink.current != Some(layer) {
        if sink.target != Some(layer) {
            // Another layer of the source; with nothing to aim at, choose again.
            let idle = sink.current.is_none() && sink.target.is_none() && sink.cap != Some(None);
            return if idle { Decision::Retarget } else { Decision::Skip };
        }
        if !arrived.keyframe {
            return Decision::WaitsForKeyframe;
        }
        switched = sink.current.is_some();
        sink.current = Some(layer);
        sink.rewriter.allow(p.ssrc);
    }
    let (pt, codec) = arrived.format;
    let Some(out_pt) = sink.payload_type(pt, &codec).map(|f| f.pt) else {
        return Decision::NoCodec;
    };
    let Some(out) = sink.rewriter.rewrite(p.ssrc, p.seq, p.timestamp, arrived.arrival_ms) else {
        return Decision::Skip;
    };
    let renumber = if arrived.vp8 { sink.vp8.rewrite(p.ssrc, &p.payload) } else { None };
    Decision::Send { packet: arrived.forwarded(out_pt, out.seq, out.timestamp, renumber), switched }
}
