//! The Huiyi load generator: synthetic meetings that speak the real protocols (signaling
//! WebSocket, ICE, DTLS, SRTP) and send real media shapes, and measure what users feel.
//! See docs/loadtest.md for the report and SCENARIOS.md for the scenarios.

mod engine;
mod expect;
mod floor;
mod http;
mod idmap;
mod janus;
mod join;
mod media;
mod net;
mod report;
mod scenario;
mod shape;
mod signal;
mod stats;
mod view;
mod whip;

use std::io::Write as _;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
// Our own SRTP receive path lives in the library, where the benchmarks reach it too.
use huiyi_loadtest::srtp;

use engine::{ClientResult, RxPath, Shared, Worker, WorkerInput, WorkerResult};
use expect::{RUN_GAP, SentStream, StreamKind, Subscriber, judge};
use join::{Run, janus_view};
use media::{AUDIO_FRAME, LAYERS, OpusLibrary};
use report::{Delivery, FloorRatio, P99, Percentiles, Report, Second, ServerProcess};
use scenario::Scenario;
use signal::ServerUrl;
use stats::{LatencyHistogram, percentile};

/// Run a scenario against a Huiyi server and report delivery, latency, jitter, join time
/// and the server's CPU per forwarded packet.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenario file (benches/scenarios/*.toml).
    #[arg(long, required = true)]
    scenario: Option<PathBuf>,
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    url: String,
    /// Write the JSON report here (also when the run fails part-way).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write an SVG plot of latency and bitrate over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Server processes to measure (CPU seconds, cores, peak RSS from /proc): a pid, or
    /// name=pid (origin=1234), once per process.
    #[arg(long = "server-pid", value_parser = parse_server_pid)]
    server_pids: Vec<(String, u32)>,
    /// Mint tokens with this secret instead of asking the server's dev endpoint.
    #[arg(long, env = "HUIYI_API_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Media threads in the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Who opens received media: the generator's own SRTP path, or str0m's engine (which
    /// also asks for lost packets again; slower per packet).
    #[arg(long, value_enum, default_value_t = RxPath::Own)]
    rx_path: RxPath,
    /// A UDP socket per client even against a server on IPv4 loopback (by default a media
    /// thread's clients share one socket there, each sending from its own 127.1.x.y).
    #[arg(long)]
    socket_per_client: bool,
    /// Run the scenario against Janus 1.x at this WebSocket URL (`ws://host:8188`, its
    /// VideoRoom plugin) instead of a Huiyi server (docs/loadtest.md, *Against Janus*).
    #[arg(long, value_name = "WS_URL")]
    janus: Option<String>,
    /// Exit non-zero when any subscriber's delivery is below this (0..=1), a subscription
    /// froze or a join failed.
    #[arg(long)]
    min_delivery: Option<f64>,
}

/// Exit codes: 0 fine, 2 the run could not be done, 3 the generator was the bottleneck,
/// 4 a behaviour check (--min-delivery) failed.
const EXIT_ERROR: i32 = 2;
const EXIT_GENERATOR_BOUND: i32 = 3;
const EXIT_CHECK_FAILED: i32 = 4;

/// A media timer this late (five audio frames) means the generator could not send on
/// time: its figures describe the generator (or whoever took its CPU), not the server.
const MAX_TIMER_LATE_MS: f64 = 100.0;

#[derive(clap::Subcommand)]
enum Command {
    /// Measure only this machine's floor (what every run measures before its joins) and
    /// print it as JSON.
    Floor,
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Floor) = cli.command {
        let floor = floor::measure();
        println!("{}", serde_json::to_string_pretty(&floor).unwrap_or_default());
        return;
    }
    let Some(path) = &cli.scenario else { fail("--scenario is required") };
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => fail(&e.to_string()),
    };
    let url = ServerUrl::parse(&cli.url).unwrap_or_else(|e| fail(&e));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio: {e}")));
    let (report, code) = runtime.block_on(run(&cli, scenario, url));
    eprint!("\n{}", report.summary());
    if let Some(path) = &cli.report {
        match report.write_json(path) {
            Ok(()) => eprintln!("report          {}", path.display()),
            Err(e) => eprintln!("loadtest: cannot write {}: {e}", path.display()),
        }
    }
    if let Some(path) = &cli.plot {
        match std::fs::write(path, report.svg()) {
            Ok(()) => eprintln!("plot            {}", path.display()),
            Err(e) => eprintln!("loadtest: cannot write {}: {e}", path.display()),
        }
    }
    eprint!("{}", report.verdict());
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

fn parse_server_pid(arg: &str) -> Result<(String, u32), String> {
    let (name, pid) = arg.split_once('=').unwrap_or((arg, arg));
    let pid = pid.parse().map_err(|_| format!("not a pid: {pid}"))?;
    Ok((name.to_string(), pid))
}

fn fail(message: &str) -> ! {
    eprintln!("loadtest: {message}");
    std::process::exit(EXIT_ERROR);
}

async fn run(cli: &Cli, scenario: Scenario, url: ServerUrl) -> (Report, i32) {
    let mut report = Report {
        scenario: scenario.name.clone(),
        url: cli.url.clone(),
        server_kind: "huiyi".into(),
        node_config: scenario.node_config.clone(),
        date: iso_date(),
        participants: scenario.participants,
        duration_s: scenario.duration_s,
        ..Default::default()
    };
    // The server's address: its media is there too (the generator's sockets bind to it).
    let host_port = match &cli.janus {
        Some(ws) => {
            report.url = ws.clone();
            report.server_kind = "janus".into();
            let rest = ws.strip_prefix("ws://").unwrap_or(ws);
            rest.split('/').next().unwrap_or(rest).to_string()
        }
        None => url.host_port.clone(),
    };
    let server_ip = match host_port.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a.ip(),
        None => {
            report.error = Some(format!("cannot resolve {host_port}"));
            return (report, EXIT_ERROR);
        }
    };
    if cli.janus.is_some() && scenario.churn.is_some() {
        report.error = Some("churn scenarios run against Huiyi only".into());
        return (report, EXIT_ERROR);
    }
    // Fail fast and clearly when the server is not there.
    if cli.janus.is_none()
        && let Err(e) = signal::http_get(&url.host_port, "/healthz").await
    {
        report.error = Some(e.to_string());
        return (report, EXIT_ERROR);
    }
    let mut janus = cli.janus.as_ref().map(|ws| janus::JanusRoom {
        ws_url: ws.clone(),
        room: u64::from(fastrand::u32(1..)),
        view: janus_view(&scenario),
        mountpoint: None,
    });
    if let Some(target) = &mut janus
        && let Err(e) = janus::create_room(target, scenario.participants, scenario.broadcast.is_some()).await
    {
        report.error = Some(format!("Janus at {}: {e}", target.ws_url));
        return (report, EXIT_ERROR);
    }
    // The machine's floor, while nothing else of the run is going on.
    report.floor = floor::measure();
    let opus = match OpusLibrary::encode() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            report.error = Some(format!("opus encoder: {e}"));
            return (report, EXIT_ERROR);
        }
    };
    let churn_joins = scenario.churn.as_ref().map_or(0.0, |c| c.joins_per_s * scenario.duration_s);
    // A participant against Janus takes two serials (its publishing and subscribing connections).
    let serials_per_participant = if cli.janus.is_some() { 2 } else { 1 };
    let max_clients = (scenario.participants + churn_joins.ceil() as usize + 64) * serials_per_participant;
    let share_socket =
        !cli.socket_per_client && matches!(server_ip, std::net::IpAddr::V4(ip) if ip.is_loopback());
    if (scenario.shape.is_some() || scenario.loss.is_some()) && (!share_socket || cli.janus.is_some()) {
        report.error =
            Some("a shaped or lossy link needs Huiyi on a loopback address (each client its own)".into());
        return (report, EXIT_ERROR);
    }
    report.shaped = scenario.shape.as_ref().map(|s| report::Shaped::new(s, engine::address_of(s.client)));
    report.lossy = scenario.loss.as_ref().map(|l| report::LossyLink::new(l, engine::address_of(l.client)));
    let shared = Arc::new(Shared::new(max_clients, scenario.shape.as_ref().map(|s| s.client)));
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    // Every 127/8 address is this machine's: on loopback a thread's clients can share a
    // socket, each its own address, so one system call reads many clients' datagrams.
    for i in 0..cli.threads.max(1) {
        match Worker::spawn(
            i,
            shared.clone(),
            scenario.clone(),
            opus.clone(),
            server_ip,
            cli.rx_path,
            share_socket,
        ) {
            Ok((h, t)) => {
                workers.push(h);
                threads.push(t);
            }
            Err(e) => {
                report.error = Some(format!("cannot start a media thread: {e}"));
                return (report, EXIT_ERROR);
            }
        }
    }
    let run = Arc::new(Run {
        room: format!("{}-{}", scenario.room, fastrand::u32(..)),
        scenario: scenario.clone(),
        url,
        secret: cli.secret.clone(),
        shared: shared.clone(),
        workers,
        janus,
        connections: AtomicU64::new(0),
        next_serial: AtomicU64::new(0),
        failed_joins: AtomicUsize::new(0),
        refused_joins: AtomicUsize::new(0),
        closed_sockets: Arc::new(AtomicUsize::new(0)),
        removed: Default::default(),
        first_error: std::sync::Mutex::new(None),
    });
    report.room = run.room.clone();
    // A person can watch the run: the meeting page, or a class's viewer page.
    let page = if run.scenario.broadcast.is_some() { "live" } else { "room" };
    if run.janus.is_none() {
        eprintln!(
            "loadtest: room {}; watch it at {}/{page}/{}",
            run.room,
            cli.url.trim_end_matches('/'),
            run.room
        );
    }

    // Joining, at the scenario's rate, with a progress bar.
    let run_start = (Instant::now(), ProcessSample::take(&[]));
    let mut joins = tokio::task::JoinSet::new();
    let mut slots: Vec<Option<u32>> = vec![None; scenario.participants];
    let mut tick = tokio::time::interval(scenario.join_interval());
    for slot in 0..scenario.participants {
        tick.tick().await;
        let r = run.clone();
        joins.spawn(async move { (slot, r.join(slot).await) });
        progress(slot + 1, scenario.participants, shared.connected.load(Ordering::Relaxed));
        // The first join tells whether the server is usable at all.
        if slot == 0
            && let Some(Ok((s, result))) = joins.join_next().await
        {
            match result {
                Ok(serial) => slots[s] = Some(serial),
                Err(e) => {
                    run.note_error(&e);
                    return finish(report, run, threads, Some(e.to_string()), cli).await;
                }
            }
            // A class's players come once its teacher is live (a player that finds nothing
            // live is refused with 409).
            if scenario.broadcast.is_some() && !publisher_connected(&shared).await {
                let e = "the broadcast's publisher did not connect within 10 s".to_string();
                return finish(report, run, threads, Some(e), cli).await;
            }
            // The players then join at the scenario's rate, not in a burst of missed ticks.
            tick.reset();
        }
    }
    while let Some(joined) = joins.join_next().await {
        if let Ok((s, result)) = joined {
            match result {
                Ok(serial) => slots[s] = Some(serial),
                Err(e) => run.note_error(&e),
            }
        }
    }
    // Wait for media to connect: everyone who joined, within a bound.
    let joined = run.connections.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    while shared.connected.load(Ordering::Relaxed) < joined && Instant::now() < deadline {
        progress(scenario.participants, scenario.participants, shared.connected.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!();

    // The measured window, with a live line each second and churn if the scenario has it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window_start = Instant::now();
    let window_end = window_start + scenario.duration();
    shared.open_window(window_start, window_end);
    let pids: Vec<u32> = cli.server_pids.iter().map(|(_, pid)| *pid).collect();
    let cpu_start = ProcessSample::take(&pids);
    let sent0 = shared.packets_sent.load(Ordering::Relaxed);
    let received0 = shared.packets_received.load(Ordering::Relaxed);
    let opened_own0 = shared.opened_own.load(Ordering::Relaxed);
    let mut error = None;
    let mut last_line = Instant::now();
    let mut last_counts = (sent0, received0);
    let mut churn_next = window_start;
    let mut shaper: Option<shape::Shaper> = None;
    let mut shaped_dropped = 0;
    let mut lossy = None;
    if let Some(link) = &report.lossy {
        match shape::Lossy::on(link.address, link.percent) {
            Ok(l) => {
                eprintln!("t=   0s  link of {} losing {}% each way", link.address, link.percent);
                lossy = Some(l);
            }
            Err(e) => error = Some(format!("cannot make the link lossy: {e}")),
        }
    }
    while Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let (Some(plan), Some(shaped)) = (&scenario.shape, report.shaped.as_ref()) {
            let t = window_start.elapsed().as_secs_f64();
            if shaper.is_none() && t >= plan.from_s && t < plan.until_s {
                match shape::Shaper::limit(shaped.address, plan.rate_kbit) {
                    Ok(s) => shaper = Some(s),
                    Err(e) => {
                        error = Some(format!("cannot shape the link: {e}"));
                        break;
                    }
                }
                eprintln!("t={t:>4.0}s  link to {} limited to {} kbit/s", shaped.address, plan.rate_kbit);
            } else if t >= plan.until_s
                && let Some(s) = shaper.take()
            {
                shaped_dropped = s.dropped();
                drop(s);
                eprintln!("t={t:>4.0}s  link to {} no longer limited", shaped.address);
            }
        }
        if let Some(churn) = &scenario.churn
            && churn.leaves_per_s > 0.0
            && Instant::now() >= churn_next
        {
            churn_next += Duration::from_secs_f64(1.0 / churn.leaves_per_s);
            let slot = fastrand::usize(..slots.len());
            if let Some(serial) = slots[slot].take() {
                run.removed.lock().expect("lock").insert(serial);
                run.workers[serial as usize % run.workers.len()].send(WorkerInput::Remove(serial));
            }
            let r = run.clone();
            match r.join(slot).await {
                Ok(serial) => slots[slot] = Some(serial),
                Err(e) => run.note_error(&e),
            }
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let counts = (
                shared.packets_sent.load(Ordering::Relaxed),
                shared.packets_received.load(Ordering::Relaxed),
            );
            let secs = last_line.elapsed().as_secs_f64();
            let (out, inn) =
                ((counts.0 - last_counts.0) as f64 / secs, (counts.1 - last_counts.1) as f64 / secs);
            let connected = shared.connected.load(Ordering::Relaxed);
            let fanout = if out > 0.0 { inn / out } else { 0.0 };
            let p99 = shared.live_p99_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
            eprintln!(
                "t={:>4.0}s  connected {connected}  out {out:.0} pps  in {inn:.0} pps  \
                 fan-out {fanout:.1}x  p99 {p99:.1} ms",
                window_start.elapsed().as_secs_f64(),
            );
            last_counts = counts;
            last_line = Instant::now();
        }
        let alive = slots.iter().flatten().count();
        if run.closed_sockets.load(Ordering::Relaxed) >= alive.max(1) && alive > 0 {
            error = Some("every signaling connection closed: the server went away mid-run".to_string());
            break;
        }
    }
    if let Some(s) = shaper.take() {
        shaped_dropped = s.dropped();
    }
    if let (Some(l), Some(link)) = (lossy.take(), report.lossy.as_mut()) {
        link.dropped = l.dropped();
    }
    if let Some(shaped) = report.shaped.as_mut() {
        shaped.dropped = shaped_dropped;
    }
    let window = window_start.elapsed().as_secs_f64();
    report.duration_s = window;
    let cpu_end = ProcessSample::take(&pids);
    let generator_cpu = (cpu_start.generator_threads.clone(), cpu_end.generator_threads.clone());
    report.pps_out = (shared.packets_sent.load(Ordering::Relaxed) - sent0) as f64 / window;
    let received = shared.packets_received.load(Ordering::Relaxed) - received0;
    report.pps_in = received as f64 / window;
    report.server = cli
        .server_pids
        .iter()
        .map(|(name, pid)| {
            let cpu = cpu_end.server.get(pid).unwrap_or(&0.0) - cpu_start.server.get(pid).unwrap_or(&0.0);
            ServerProcess {
                name: name.clone(),
                pid: *pid,
                cpu_seconds: cpu,
                cpu_cores: cpu / window,
                peak_rss_mb: report::peak_rss_mb(*pid).unwrap_or(0.0),
            }
        })
        .collect();
    let server_cpu: f64 = report.server.iter().map(|s| s.cpu_seconds).sum();
    report.forwarded_packets_per_cpu_second = (server_cpu > 0.0).then(|| received as f64 / server_cpu);
    report.server_ns_per_forwarded_packet =
        (received > 0 && server_cpu > 0.0).then(|| server_cpu * 1e9 / received as f64);
    let ratio =
        |floor: Option<f64>| Some(report.server_ns_per_forwarded_packet? / floor.filter(|f| *f > 0.0)?);
    report.floor_ratio = FloorRatio { send: ratio(report.floor.send_ns), gso: ratio(report.floor.gso_ns) };
    report.generator.cpu_cores = (cpu_end.generator - cpu_start.generator) / window;
    report.generator.rx_path = cli.rx_path;
    let opened_own = shared.opened_own.load(Ordering::Relaxed) - opened_own0;
    report.generator.own_path_share = (received > 0).then(|| opened_own as f64 / received as f64);
    report.generator.ns_per_received_packet =
        (received > 0).then(|| (cpu_end.generator - cpu_start.generator) * 1e9 / received as f64);
    report.generator.busiest_thread = generator_cpu
        .1
        .iter()
        .map(|(tid, end)| (end - generator_cpu.0.get(tid).unwrap_or(end)) / window)
        .fold(0.0, f64::max);
    // Joining is measured too (join times, first keyframes): was the generator saturated then?
    let joining = window_start.duration_since(run_start.0).as_secs_f64().max(0.001);
    report.generator.busiest_thread_joining = cpu_start
        .generator_threads
        .iter()
        .map(|(tid, at_window)| {
            (at_window - run_start.1.generator_threads.get(tid).unwrap_or(at_window)) / joining
        })
        .fold(0.0, f64::max);
    // Packets sent at the end of the window are still in flight: give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish(report, run, threads, error, cli).await
}

async fn finish(
    mut report: Report,
    run: Arc<Run>,
    threads: Vec<std::thread::JoinHandle<WorkerResult>>,
    error: Option<String>,
    cli: &Cli,
) -> (Report, i32) {
    for w in &run.workers {
        w.send(WorkerInput::Stop);
    }
    let results: Vec<WorkerResult> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    let shared = &run.shared;
    let clients: Vec<&ClientResult> = results.iter().flat_map(|r| r.clients.iter()).collect();
    report.connected = clients.iter().filter(|c| c.connected && !c.publishing_half).count();
    report.refused_joins = run.refused_joins.load(Ordering::Relaxed);
    report.failed_joins = run.failed_joins.load(Ordering::Relaxed)
        + clients.iter().filter(|c| !c.connected && !c.publishing_half).count();
    report.error = error.or_else(|| run.first_error.lock().expect("lock").clone());
    report.complete = report.error.is_none();
    let mut problems: Vec<String> = clients
        .iter()
        .flat_map(|c| {
            c.errors.iter().cloned().chain(c.close_reason.iter().filter(|_| !c.left_early).cloned())
        })
        .collect();
    problems.sort();
    problems.dedup();
    problems.truncate(10);
    report.client_problems = problems;

    let speaker_events: Vec<f64> =
        clients.iter().filter(|c| c.connected).map(|c| c.speaker_events as f64).collect();
    report.active_speaker_events = percentile(&speaker_events, 50.0);
    let joins: Vec<f64> = clients.iter().filter_map(|c| c.join_ms).collect();
    report.join_ms = Percentiles::of(&joins);
    let phase =
        |i: usize| -> Vec<f64> { clients.iter().filter_map(|c| c.join_phases.map(|p| p[i])).collect() };
    report.join_phases_ms = report::JoinPhases {
        signaling: Percentiles::of(&phase(0)),
        connecting: Percentiles::of(&phase(1)),
        first_media: Percentiles::of(&phase(2)),
        ice: Percentiles::of(&phase(3)),
        dtls: Percentiles::of(&phase(4)),
    };
    let keyframes: Vec<f64> = clients.iter().flat_map(|c| c.first_keyframe_ms.iter().copied()).collect();
    report.first_keyframe_ms = P99 { p99: percentile(&keyframes, 99.0) };
    let frames: Vec<f64> = clients.iter().flat_map(|c| c.first_frame_ms.iter().copied()).collect();
    report.first_frame_ms = Percentiles::of(&frames);
    report.cameras_without_frame = clients.iter().map(|c| c.cameras_without_frame).sum();
    if let Some(layer) = run.scenario.player_layer() {
        report.players_off_layer = clients
            .iter()
            .filter(|c| c.connected)
            .filter(|c| c.video_ranks.iter().any(|r| *r != layer))
            .count();
        // Against Janus a player starts on the lowest layer and moves up at its own
        // layer's next keyframe: off its layer for a while, but not for good.
        report.players_without_layer =
            clients.iter().filter(|c| c.connected && c.slot > 0 && !c.video_ranks.contains(&layer)).count();
    }
    let jitter: Vec<f64> = clients.iter().flat_map(|c| c.jitter_ms.iter().copied()).collect();
    report.jitter_ms = P99 { p99: percentile(&jitter, 99.0) };
    let mut latency = LatencyHistogram::default();
    for r in &results {
        latency.merge(&r.latency);
    }
    let spread = |h: &LatencyHistogram| Percentiles {
        p50: h.percentile_ms(50.0),
        p99: h.percentile_ms(99.0),
        max: (h.count() > 0).then(|| h.max_ms()),
    };
    report.latency_ms = spread(&latency);
    let (mut send, mut receive_queue) = (LatencyHistogram::default(), LatencyHistogram::default());
    for r in &results {
        send.merge(&r.send_delay);
        receive_queue.merge(&r.receive_queue);
    }
    report.latency_parts_ms =
        report::LatencyParts { send: spread(&send), receive_queue: spread(&receive_queue) };

    // Delivery per subscriber over the streams it should have received in the window
    // (the model: expect.rs and docs/loadtest.md).
    let window_start = shared.window_start_us();
    let keyframe_interval = Duration::from_secs_f64(run.scenario.video.keyframe_interval_s);
    let sent: Vec<SentStream> = shared
        .streams
        .iter()
        .enumerate()
        .filter_map(|(id, s)| {
            let (first, last) = (s.first.load(Ordering::Relaxed), s.last.load(Ordering::Relaxed));
            if first == u32::MAX {
                return None;
            }
            let (owner, kind) = StreamKind::of(id as u32);
            let per_second = match kind {
                StreamKind::Video(rank) => {
                    LAYERS[rank.min(LAYERS.len() - 1)].packets_per_second(keyframe_interval)
                }
                _ => 1.0 / AUDIO_FRAME.as_secs_f64(),
            };
            Some(SentStream {
                id: id as u32,
                owner,
                kind,
                packets: last.wrapping_sub(first) as u64 + 1,
                before_window: s.started_us.load(Ordering::Relaxed) < window_start,
                run_gap: (per_second * RUN_GAP.as_secs_f64()).round() as u64,
            })
        })
        .collect();
    let (mut total_expected, mut total_received) = (0u64, 0u64);
    let mut per_subscriber = Vec::new();
    let mut audio_per_subscriber = Vec::new();
    let mut video_per_subscriber = Vec::new();
    // A participant's publishing connection against Janus receives nothing: its other one is judged.
    for c in clients.iter().filter(|c| c.connected && !c.publishing_half) {
        let judged = judge(
            &Subscriber {
                serial: c.serial,
                whole_window: c.whole_window,
                has_view: c.has_view,
                twin: c.twin,
                received: &c.received,
            },
            &sent,
        );
        report.unexpected_packets += judged.unexpected;
        let (audio, video) = judged.deliveries();
        audio_per_subscriber.extend(audio);
        video_per_subscriber.extend(video);
        if let (Some(shaped), Some(seconds)) = (report.shaped.as_mut(), c.followed.as_ref()) {
            shaped.fill(seconds, &judged, c.frozen);
        }
        if let Some(link) = report.lossy.as_mut().filter(|l| l.client == c.serial) {
            link.fill(&judged);
        }
        if judged.expected > 0 {
            per_subscriber.push(judged.received as f64 / judged.expected as f64);
            total_expected += judged.expected;
            total_received += judged.received;
        }
    }
    report.delivery = Delivery {
        min: per_subscriber.iter().copied().reduce(f64::min),
        p1: percentile(&per_subscriber, 1.0),
        median: percentile(&per_subscriber, 50.0),
        below_target: per_subscriber.iter().filter(|d| **d < 0.995).count(),
    };
    report.audio_delivery_min = audio_per_subscriber.iter().copied().reduce(f64::min);
    report.video_delivery_min = video_per_subscriber.iter().copied().reduce(f64::min);
    report.duplicate_packets =
        clients.iter().flat_map(|c| c.received.iter().map(|(_, d)| d.duplicates())).sum();
    report.loss_pct =
        (total_expected > 0).then(|| 100.0 * (1.0 - total_received as f64 / total_expected as f64));
    report.frozen_subscriptions = clients.iter().map(|c| c.frozen).sum();
    report.paused_tiles = clients.iter().map(|c| c.paused_tiles).sum();
    report.tile_pauses = clients.iter().map(|c| c.tile_pauses as u64).sum();
    report.layer_pauses = clients.iter().map(|c| c.layer_pauses as u64).sum();
    let switches: Vec<f64> = clients.iter().flat_map(|c| c.switch_keyframe_ms.iter().copied()).collect();
    report.layer_switches = switches.len();
    report.switch_keyframe_ms = Percentiles::of(&switches);
    report.unfinished_layer_switches = clients.iter().map(|c| c.unfinished_switches).sum();

    let ports: Vec<u16> = results.iter().flat_map(|r| r.ports.iter().copied()).collect();
    report.generator.rx_drops = report::udp_drops(&ports);
    report.generator.client_failures = clients.iter().filter(|c| c.engine_failed).count();
    report.generator.max_timer_late_ms = shared.max_timer_late_us.load(Ordering::Relaxed) as f64 / 1000.0;
    report.generator.bottleneck = report.generator.busiest_thread > 0.9
        || report.generator.busiest_thread_joining > 0.9
        || report.generator.max_timer_late_ms > MAX_TIMER_LATE_MS
        || report.generator.rx_drops > 0
        || report.generator.client_failures > 0;

    let mut seconds: std::collections::BTreeMap<u64, (u64, u64, LatencyHistogram)> = Default::default();
    for r in results {
        for (s, (p, b, h)) in r.seconds {
            let e = seconds.entry(s).or_insert_with(|| (0, 0, LatencyHistogram::default()));
            e.0 += p;
            e.1 += b;
            e.2.merge(&h);
        }
    }
    let first_second = seconds.keys().next().copied().unwrap_or(0);
    report.window_s = shared.window_end_us().map(|end| {
        let on_timeline = |us: u64| us as f64 / 1e6 - first_second as f64;
        [on_timeline(shared.window_start_us()).max(0.0), on_timeline(end).max(0.0)]
    });
    report.timeline = seconds
        .into_iter()
        .map(|(s, (p, b, h))| Second {
            t: s - first_second,
            packets: p,
            kbps: b as f64 * 8.0 / 1000.0,
            latency_p50_ms: h.percentile_ms(50.0),
            latency_p99_ms: h.percentile_ms(99.0),
        })
        .collect();

    report.targets = report::check_targets(&report, &run.scenario.targets);
    report.passed = (!report.targets.is_empty())
        .then(|| report.complete && !report.generator.bottleneck && report.targets.iter().all(|c| c.met));

    let code = if !report.complete {
        EXIT_ERROR
    } else if report.generator.bottleneck {
        eprintln!(
            "loadtest: the generator itself was the bottleneck: these figures describe it, not the server"
        );
        EXIT_GENERATOR_BOUND
    } else if let Some(min) = cli.min_delivery
        && (report.failed_joins > 0
            || report.refused_joins > 0
            || report.frozen_subscriptions > 0
            || report.players_off_layer > 0
            || report.delivery.min.is_none_or(|d| d < min))
    {
        eprintln!(
            "loadtest: delivery below {min}, frozen subscriptions, players off their layer, failed or refused joins"
        );
        EXIT_CHECK_FAILED
    } else {
        0
    };
    (report, code)
}

/// Wait (at most 10 s) for the first client's media to connect, and a moment more for the
/// node to have its first keyframe.
async fn publisher_connected(shared: &Shared) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.connected.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    true
}

fn progress(joined: usize, total: usize, connected: u64) {
    let width = 30;
    let filled = joined * width / total.max(1);
    eprint!(
        "\rjoining [{}{}] {joined}/{total}, media connected {connected}   ",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = std::io::stderr().flush();
}

/// CPU readings at one moment: server processes, the generator and its threads.
struct ProcessSample {
    server: std::collections::HashMap<u32, f64>,
    generator: f64,
    generator_threads: std::collections::HashMap<String, f64>,
}

impl ProcessSample {
    fn take(pids: &[u32]) -> Self {
        let server = pids
            .iter()
            .filter_map(|pid| report::cpu_seconds(&format!("/proc/{pid}/stat")).map(|c| (*pid, c)))
            .collect();
        let mut generator_threads = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                let tid = entry.file_name().to_string_lossy().to_string();
                if let Some(c) = report::cpu_seconds(&format!("/proc/self/task/{tid}/stat")) {
                    generator_threads.insert(tid, c);
                }
            }
        }
        Self { server, generator: report::cpu_seconds("/proc/self/stat").unwrap_or(0.0), generator_threads }
    }
}

fn iso_date() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
