//! The parts of the load generator that its benchmarks reach (benches/receiving.rs): its
//! own SRTP receive path, and a pair of str0m engines to feed it. The `loadtest` binary
//! (main.rs) is the generator itself.

pub mod srtp;
