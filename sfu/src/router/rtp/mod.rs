//! What the router reads and rewrites in an RTP packet: keyframes (and throttled
//! requests for them), sequence numbers and timestamps continued across changes of
//! source, VP8 picture ids, and the primary block of redundant audio. Pure helpers, time
//! as an argument.

pub mod keyframe;
pub mod red;
pub mod rewrite;
pub mod vp8;

pub use keyframe::{KeyframeThrottle, VideoCodec, starts_keyframe};
pub use rewrite::{RtpRewriter, SeqExtender};
pub use vp8::{Vp8Renumber, Vp8Rewriter};
