//! Helpers shared by the fuzz targets in fuzz_targets/.

pub mod contained;
pub mod srtcp;

/// With HUIYI_FUZZ_TRACE set, the session targets say how far each input got (to check
/// that the seeds reach the engine's deeper states: run a target with `-runs=0` on them).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HUIYI_FUZZ_TRACE").is_some())
}

#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::tracing() {
            eprintln!($($arg)*);
        }
    };
}
