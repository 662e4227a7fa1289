//! The `huiyi` binary as a separate process on loopback, for tests that measure what a
//! process does under attack (its memory, its file descriptors) or how it starts.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `huiyi serve`, killed when dropped.
pub struct Huiyi {
    child: Child,
    pub http: SocketAddr,
    /// Where it accepts relay links from edges, if it does.
    pub relay: Option<SocketAddr>,
}

/// How to start the process.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra lines for the TOML config file.
    pub config: &'a str,
    /// Extra command-line arguments.
    pub args: &'a [&'a str],
    /// The API secret (`HUIYI_API_SECRET`); `None` runs without one.
    pub secret: Option<&'a str>,
    /// Soft and hard open-file limit for the process.
    pub open_files: Option<u64>,
}

/// The command line `huiyi` with a config file in a fresh temporary directory.
pub fn command(options: &Options) -> Command {
    let dir = std::env::temp_dir().join(format!("huiyi-test-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("huiyi.toml");
    std::fs::write(&config, options.config).expect("write config");
    // HUIYI_BIN runs the same tests against another build (an older commit, say).
    let binary = std::env::var_os("HUIYI_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_huiyi").into());
    let mut command = Command::new(binary);
    command.arg("--config").arg(&config);
    if !options.args.contains(&"--http") {
        command.args(["--http", "127.0.0.1:0"]);
    }
    command
        .args(["--media", "127.0.0.1:0", "--shards", "1", "--log", "warn"])
        .args(options.args)
        .env_remove("HUIYI_API_SECRET")
        .env_remove("HUIYI_DEV")
        .env_remove("RUST_LOG");
    if let Some(secret) = options.secret {
        command.env("HUIYI_API_SECRET", secret);
    }
    if let Some(n) = options.open_files {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command
}

impl Huiyi {
    /// Start it and wait for the line that gives its HTTP address.
    pub fn start(options: &Options) -> Huiyi {
        let mut child = command(options).stdout(Stdio::piped()).spawn().expect("spawn huiyi");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The banner: its addresses, up to the blank line that ends it.
            let (mut http, mut relay) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Open http://").nth(1) {
                    http = rest.split('/').next().and_then(|a| a.parse::<SocketAddr>().ok());
                } else if let Some(rest) = line.split("Relay links from edges on udp/").nth(1) {
                    relay = rest.trim_end_matches('.').parse::<SocketAddr>().ok();
                } else if line.is_empty()
                    && let Some(http) = http.take()
                {
                    let _ = tx.send((http, relay));
                }
            }
        });
        let (http, relay) = rx.recv_timeout(Duration::from_secs(20)).expect("huiyi prints its address");
        Huiyi { child, http, relay }
    }

    /// The process's HTTP address as a base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Ask it to stop, as an orchestrator does (SIGTERM: it drains first).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Stop it the hard way (a machine that dies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its `/metrics` page.
    pub async fn metrics(&self) -> String {
        let (status, body) = super::http_request(self.http, "GET", "/metrics", &[]).await;
        assert_eq!(status, 200);
        body
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/rtc", self.http)
    }
}

impl Drop for Huiyi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `huiyi` expecting it to refuse to start: its exit status and what it printed.
pub fn refused_start(options: &Options) -> (bool, String) {
    let mut child = command(options).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&output.stderr).to_string()
                + &String::from_utf8_lossy(&output.stdout);
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            return (true, String::from_utf8_lossy(&output.stdout).to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
