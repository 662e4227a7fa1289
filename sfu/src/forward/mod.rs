//! The forwarding core: pure logic that decides what each subscriber receives and how
//! its outgoing RTP is numbered. No sockets, no clocks: time comes in as arguments.

pub mod keyframe;
pub mod rewrite;
pub mod vp8;

pub use keyframe::{KeyframeThrottle, VideoCodec, starts_keyframe};
pub use rewrite::{Rewritten, RtpRewriter, SeqExtender};
pub use vp8::Vp8Rewriter;
