//! The Huiyi load generator. Synthetic clients that speak the real signaling and media
//! protocols arrive with issue 3; until then this binary says so instead of pretending.

fn main() {
    eprintln!(
        "loadtest: not built yet. The synthetic meeting and class generator (scenarios in \
         benches/scenarios/, reports per docs/loadtest.md) is the next piece of work; \
         until it lands, tests/interop.rs and tests/browser.rs exercise real clients."
    );
    std::process::exit(2);
}
