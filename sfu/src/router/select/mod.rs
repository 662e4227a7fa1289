//! What each subscriber receives: which audio tracks are forwarded at all (top-N), and
//! which simulcast layer of each video track it is sent. Pure decisions, one strategy
//! per file; time comes in as arguments.

pub mod allocator;
pub mod audio;
pub mod layer;

pub use allocator::{AllocTrack, Priority, allocate};
pub use audio::{AudioSelectConfig, AudioSelector};
pub use layer::{MAX_LAYERS, Quality, choose_layer, rid_rank};
