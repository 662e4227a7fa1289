//! What a person sees: headless Chromium opens three meeting pages in one room; every
//! page must play the other two participants' video and receive their audio. Then the
//! first page shares its screen (a renegotiation on every page): the others must play
//! it, and drop its tile when sharing stops; and its muted microphone shows as muted.
//! Needs Debian's chromium and `npm install` in tests/browser (scripts/test does both).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_see_and_hear_each_other() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/lib/chromium/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: run scripts/test (it installs Debian's chromium) or set CHROMIUM"
    );
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        script_dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm install` in tests/browser (scripts/test does)"
    );
    // The page gets its token from the dev endpoint, so this server runs in dev mode.
    let server = common::start_server_with(|c| c.auth.api_secret = String::new()).await;
    let started = Instant::now();
    let output = tokio::process::Command::new("node")
        .arg("meeting.mjs")
        .arg(format!("http://{}", server.http_addr))
        .arg("browser-test")
        .arg("3")
        .arg("60")
        .arg("0")
        .arg("share")
        .current_dir(&script_dir)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!("no RESULT line from the browser script; stderr: {}", String::from_utf8_lossy(&output.stderr))
    });
    let result: serde_json::Value = serde_json::from_str(result).expect("RESULT is JSON");
    println!("browser test took {:.1} s: {result}", started.elapsed().as_secs_f64());
    assert_eq!(result["ok"], true, "browser pages did not all see and hear each other: {result:#}");
    assert!(result["screen_seen_s"].is_number(), "shared screen never played on the other pages: {result:#}");
    assert!(result["screen_gone_s"].is_number(), "screen tile stayed after sharing stopped: {result:#}");
    assert!(result["mute_seen_s"].is_number(), "muting the mic did not show on the other pages: {result:#}");
    for page in result["verdicts"].as_array().expect("verdicts") {
        assert!(page["playing"].as_u64() >= Some(2), "a page plays fewer than 2 remote videos: {result:#}");
        assert_eq!(page["lobbyShown"], false, "the lobby still shows over the meeting: {result:#}");
        assert!(
            page["hearing"].as_u64() >= Some(2),
            "a page hears fewer than 2 remote audio streams: {result:#}"
        );
    }
}
