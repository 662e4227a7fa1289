//! For targets that drive a session the way the node and shard do: a panic caught inside
//! (the shard's `contained`, the node's guard around SDP parsing) is survivable (it ends
//! one session, or refuses one offer), so it is reported once per source location and
//! the fuzzer goes on; a panic that escapes aborts, as any crash.
//!
//! libfuzzer-sys installs a panic hook that aborts at once; `report_engine_panics`
//! replaces it with one that only remembers the panic.

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

struct Panicked {
    location: String,
    message: String,
    /// Captured the first time a location panics only (it is slow).
    backtrace: Option<String>,
}

thread_local! {
    static LAST: RefCell<Option<Panicked>> = const { RefCell::new(None) };
}

static TARGET: OnceLock<&'static str> = OnceLock::new();

/// Locations that panicked before: reported once each.
fn seen() -> &'static Mutex<HashSet<String>> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

pub fn report_engine_panics(target: &'static str) {
    let _ = TARGET.set(target);
    panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let new = !seen().lock().map(|s| s.contains(&location)).unwrap_or(true);
        let backtrace = new.then(|| Backtrace::force_capture().to_string());
        LAST.with(|l| *l.borrow_mut() = Some(Panicked { location, message, backtrace }));
    }));
}

/// Runs one input. A panic caught inside `body` (by the shard's `contained`, or the
/// node's guard around SDP parsing) is reported; one that escapes it aborts.
pub fn run(data: &[u8], body: impl FnOnce()) {
    LAST.with(|l| l.borrow_mut().take());
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => report(data),
        Err(_) => {
            let last = LAST.with(|l| l.borrow_mut().take());
            if let Some(p) = last {
                eprintln!("\n==== panic escaped the containment at {}: {}", p.location, p.message);
                if let Some(bt) = p.backtrace {
                    eprintln!("{bt}");
                }
            }
            std::process::abort();
        }
    }
}

fn report(data: &[u8]) {
    let Some(p) = LAST.with(|l| l.borrow_mut().take()) else { return };
    if !seen().lock().map(|mut s| s.insert(p.location.clone())).unwrap_or(false) {
        return;
    }
    let target = TARGET.get().copied().unwrap_or("fuzz");
    eprintln!("\n==== contained panic (the server survives it) at {}: {}", p.location, p.message);
    if let Some(bt) = &p.backtrace {
        eprintln!("{bt}");
    }
    // scripts/fuzz collects these: one input per panicking location.
    if let Some(dir) = std::env::var_os("HUIYI_FUZZ_FINDINGS") {
        let name: String =
            p.location.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let dir = std::path::Path::new(&dir);
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{target}-contained-panic-{name}")), data);
        if let Ok(mut f) = std::fs::File::create(dir.join(format!("{target}-contained-panic-{name}.txt"))) {
            let _ = writeln!(f, "{}: {}\n{}", p.location, p.message, p.backtrace.as_deref().unwrap_or(""));
        }
    }
}
