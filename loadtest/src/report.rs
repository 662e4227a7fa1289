//! The run's report: JSON with stable keys (docs/loadtest.md), a summary table, an SVG
//! plot of latency and bitrate over time, and the /proc readings behind the CPU figures.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::engine::{FollowedSecond, RxPath};
use crate::expect::Judgement;
use crate::floor::Floor;
use crate::scenario::Targets;
use crate::stats::percentile;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Self {
        Self {
            p50: percentile(values, 50.0),
            p99: percentile(values, 99.0),
            max: values.iter().copied().reduce(f64::max),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct JoinPhases {
    pub signaling: Percentiles,
    pub connecting: Percentiles,
    pub first_media: Percentiles,
    /// Connecting's two parts: ICE (to a working candidate pair), then the DTLS handshake.
    pub ice: Percentiles,
    pub dtls: Percentiles,
}

/// The generator's own parts around latency, so a missed target points at the server or
/// the instrument: `send`, from a frame's stamp to its packets handed to the kernel, is
/// inside latency; `receive_queue`, from a packet's arrival in the kernel to the generator
/// reading it, is not (latency ends at the kernel's arrival stamp). The rest of latency is
/// the server and the kernel's path through it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LatencyParts {
    pub send: Percentiles,
    pub receive_queue: Percentiles,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Delivery {
    pub min: Option<f64>,
    pub p1: Option<f64>,
    pub median: Option<f64>,
    /// Subscribers below 99.5% delivery.
    pub below_target: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct P99 {
    pub p99: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerProcess {
    /// What the process is (`--server-pid name=pid`: origin, edge-1), or its pid.
    pub name: String,
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cpu_cores: f64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Generator {
    pub cpu_cores: f64,
    /// Who opened received media (`--rx-path`).
    pub rx_path: RxPath,
    /// The generator's CPU (all its threads: sending, signaling and receiving) per packet
    /// it received in the window (ns).
    pub ns_per_received_packet: Option<f64>,
    /// Of the media packets received in the window, the share our own SRTP path opened.
    pub own_path_share: Option<f64>,
    /// The busiest media thread's share of one core during the window.
    pub busiest_thread: f64,
    /// The same while participants were joining (before the window).
    pub busiest_thread_joining: f64,
    pub rx_drops: u64,
    /// The latest any media timer ran in the window (ms after it was due).
    pub max_timer_late_ms: f64,
    /// Clients whose own WebRTC engine failed (counted against the generator).
    pub client_failures: usize,
    pub bottleneck: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FloorRatio {
    pub send: Option<f64>,
    pub gso: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub packets: u64,
    pub kbps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The server under test: "huiyi", or "janus" (`--janus`).
    pub server_kind: String,
    /// The config file the scenario asks the node to run with (`node_config`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_config: Option<String>,
    pub url: String,
    /// The room the run used (the scenario's name with a random suffix).
    pub room: String,
    pub date: String,
    pub participants: usize,
    pub connected: usize,
    pub failed_joins: usize,
    /// The least share of the audio it should have received that a subscriber did.
    pub audio_delivery_min: Option<f64>,
    /// The same of video (what NACK and RTX repair: audio has no retransmission).
    pub video_delivery_min: Option<f64>,
    /// Joins the server refused as `node_full` (not counted in `failed_joins`).
    pub refused_joins: usize,
    pub duration_s: f64,
    pub complete: bool,
    pub error: Option<String>,
    /// Distinct errors and unexpected socket closes the clients saw (at most 10).
    pub client_problems: Vec<String>,
    pub join_ms: Percentiles,
    /// The join in its parts, so a slow one points at a part: signaling (socket open or
    /// `POST` to the offer/answer exchange done), connecting (ICE and DTLS) and first
    /// media (DTLS up to the first media packet).
    pub join_phases_ms: JoinPhases,
    pub delivery: Delivery,
    pub loss_pct: Option<f64>,
    /// Packets received more than once (counted once for delivery).
    pub duplicate_packets: u64,
    /// Packets received that nobody was expected to get (silence, the start of a talk turn).
    pub unexpected_packets: u64,
    /// Tiles a view showed for more than 3 s that received nothing in the last 2 s (and
    /// that the server had not said it paused).
    pub frozen_subscriptions: usize,
    /// Tiles shown at the end that the server said it paused (`trackPaused`: bandwidth
    /// or load), and the pauses it told over the run.
    pub paused_tiles: usize,
    pub tile_pauses: u64,
    /// The client whose link the scenario shaped (`[shape]`), second by second.
    pub shaped: Option<Shaped>,
    /// The client whose link lost datagrams (`[loss]`), and what repair brought back.
    pub lossy: Option<LossyLink>,
    pub latency_ms: Percentiles,
    pub latency_parts_ms: LatencyParts,
    pub jitter_ms: P99,
    pub first_keyframe_ms: P99,
    /// Per received camera: from the offer (made just before its `POST` or message) to the
    /// end of the first keyframe received whole, the first frame a decoder can show.
    pub first_frame_ms: Percentiles,
    /// Cameras a client received packets of but never a whole keyframe (not in
    /// `first_frame_ms`).
    pub cameras_without_frame: usize,
    /// A broadcast's players that received a camera layer other than the one their size
    /// asks for.
    pub players_off_layer: usize,
    /// A class's players that never received the layer their size asks for.
    pub players_without_layer: usize,
    /// From a `subscribe` that resized a tile to the first keyframe of its new layer.
    pub switch_keyframe_ms: Percentiles,
    /// Layer switches measured, and those asked for more than 3 s before the end that
    /// never came.
    pub layer_switches: usize,
    pub unfinished_layer_switches: usize,
    /// Camera layers the server's `layers` messages paused.
    pub layer_pauses: u64,
    /// `activeSpeaker` changes the median participant was told about.
    pub active_speaker_events: Option<f64>,
    pub pps_in: f64,
    pub pps_out: f64,
    pub server: Vec<ServerProcess>,
    pub forwarded_packets_per_cpu_second: Option<f64>,
    /// Server CPU (every measured process) per packet the subscribers received, in ns.
    pub server_ns_per_forwarded_packet: Option<f64>,
    /// This machine's floor, measured before the joins (floor.rs).
    pub floor: Floor,
    /// `server_ns_per_forwarded_packet` over the floor: with one send per datagram, and
    /// with GSO.
    pub floor_ratio: FloorRatio,
    pub generator: Generator,
    pub timeline: Vec<Second>,
    /// The measured window on the timeline (seconds from its first), once it closed.
    pub window_s: Option<[f64; 2]>,
    /// The scenario's targets, each against this run's figure.
    pub targets: Vec<TargetCheck>,
    /// Every target met (None when the scenario names none).
    pub passed: Option<bool>,
}

/// One target of the scenario and how the run did against it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: &'static str,
    /// The run's figure (None when it was not measured: not met).
    pub measured: Option<f64>,
    pub target: f64,
    /// Whether the figure must be at least the target (else at most).
    pub at_least: bool,
    pub met: bool,
}

impl TargetCheck {
    fn new(name: &'static str, measured: Option<f64>, target: f64, at_least: bool) -> Self {
        let met = measured.is_some_and(|m| if at_least { m >= target } else { m <= target });
        Self { name, measured, target, at_least, met }
    }
}

/// The run against the scenario's targets (SCENARIOS.md): one check per target given.
pub fn check_targets(report: &Report, targets: &Targets) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let mut at_most = |name, measured: Option<f64>, target: Option<f64>| {
        if let Some(t) = target {
            checks.push(TargetCheck::new(name, measured, t, false));
        }
    };
    at_most("latency p99 (ms)", report.latency_ms.p99, targets.latency_p99_ms);
    at_most("join p99 (ms)", report.join_ms.p99, targets.join_p99_ms);
    at_most("first frame p99 (ms)", report.first_frame_ms.p99, targets.first_frame_p99_ms);
    let measured_servers = (!report.server.is_empty()).then_some(());
    let cores = measured_servers.map(|_| report.server.iter().map(|s| s.cpu_cores).sum());
    at_most("server CPU (cores)", cores, targets.server_cores);
    at_most("server ns per packet / one-send floor", report.floor_ratio.send, targets.floor_ratio);
    let rss = measured_servers.map(|_| report.server.iter().map(|s| s.peak_rss_mb).sum());
    at_most("server peak RSS (MiB)", rss, targets.peak_rss_mb);
    if let Some(t) = targets.forwarded_per_cpu_second {
        checks.push(TargetCheck::new(
            "forwarded packets per server CPU-second",
            report.forwarded_packets_per_cpu_second,
            t,
            true,
        ));
    }
    if let Some(t) = targets.delivery_min {
        checks.push(TargetCheck::new("delivery min", report.delivery.min, t, true));
        let troubles = report.frozen_subscriptions
            + report.failed_joins
            + report.refused_joins
            + report.players_off_layer;
        checks.push(TargetCheck::new(
            "frozen tiles, failed or refused joins and players off their layer",
            Some(troubles as f64),
            0.0,
            false,
        ));
    }
    checks
}

impl Report {
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    pub fn summary(&self) -> String {
        let f = |v: Option<f64>, unit: &str| v.map(|x| format!("{x:.2}{unit}")).unwrap_or_else(|| "-".into());
        let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", x * 100.0)).unwrap_or_else(|| "-".into());
        // A figure's spread: "p50 .. p99 .. max ..".
        let spread = |p: &Percentiles| {
            format!("p50 {}  p99 {}  max {}", f(p.p50, " ms"), f(p.p99, " ms"), f(p.max, " ms"))
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario        {} ({} at {}){}",
            self.scenario,
            self.server_kind,
            self.url,
            if self.complete { "" } else { "  INCOMPLETE" }
        );
        let _ = writeln!(out, "room            {}", self.room);
        if let Some(config) = &self.node_config {
            let _ = writeln!(out, "node config     {config} (the scenario's node_config)");
        }
        let _ = writeln!(
            out,
            "participants    {} connected of {}, {} failed joins, {} refused (node full)",
            self.connected, self.participants, self.failed_joins, self.refused_joins
        );
        let _ = writeln!(out, "join            {}", spread(&self.join_ms));
        let phases = &self.join_phases_ms;
        let _ = writeln!(
            out,
            "  in parts p99  signaling {}  connecting {} (ICE {}, DTLS {})  first media {}",
            f(phases.signaling.p99, " ms"),
            f(phases.connecting.p99, " ms"),
            f(phases.ice.p99, " ms"),
            f(phases.dtls.p99, " ms"),
            f(phases.first_media.p99, " ms")
        );
        let _ = writeln!(
            out,
            "delivery        min {}  p1 {}  median {}  ({} subscribers below 99.5%); audio min {}, video min {}",
            pct(self.delivery.min),
            pct(self.delivery.p1),
            pct(self.delivery.median),
            self.delivery.below_target,
            pct(self.audio_delivery_min),
            pct(self.video_delivery_min)
        );
        let _ = writeln!(
            out,
            "loss            {}",
            self.loss_pct.map(|l| format!("{l:.3}%")).unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(out, "latency         {}", spread(&self.latency_ms));
        let _ = writeln!(
            out,
            "  generator p99  send {} (in latency), receive queue {} (not in it: latency ends at the kernel's arrival)",
            f(self.latency_parts_ms.send.p99, " ms"),
            f(self.latency_parts_ms.receive_queue.p99, " ms")
        );
        let _ = writeln!(out, "jitter p99      {}", f(self.jitter_ms.p99, " ms"));
        let _ = writeln!(
            out,
            "frozen tiles    {}  ({} paused by the server at the end, {} pauses told; {} unexpected packets received)",
            self.frozen_subscriptions, self.paused_tiles, self.tile_pauses, self.unexpected_packets
        );
        if let Some(l) = &self.lossy {
            let pct = |d: Option<f64>| d.map_or("-".into(), |d| format!("{:.2}%", d * 100.0));
            let _ = writeln!(
                out,
                "lossy link      {} losing {}% each way: {} datagrams dropped; its video {} after repair, audio {}",
                l.address,
                l.percent,
                l.dropped,
                pct(l.video_delivery),
                pct(l.audio_delivery)
            );
        }
        if let Some(s) = &self.shaped {
            let kbps = |from: f64, until: f64| f(s.video_kbps(from, until), " kbit/s");
            let paused = s.seconds.iter().map(|x| x.paused).max().unwrap_or(0);
            let end = s.seconds.len() as f64;
            let _ = writeln!(
                out,
                "shaped link     {} limited to {} kbit/s from {:.0} s to {:.0} s: video {} before, {} from 5 s in, {} in its last 5 s, {} in the last 5 s of the window; at most {} tiles paused; audio {}, {} dropped by the link",
                s.address,
                s.rate_kbit,
                s.from_s,
                s.until_s,
                kbps(0.0, s.from_s),
                kbps(s.from_s + 5.0, s.until_s),
                kbps(s.until_s - 5.0, s.until_s),
                kbps(end - 5.0, end),
                paused,
                s.audio_delivery.map_or("-".into(), |a| format!("{:.2}%", a * 100.0)),
                s.dropped
            );
        }
        let _ = writeln!(out, "first keyframe  p99 {}", f(self.first_keyframe_ms.p99, " ms"));
        let _ = writeln!(
            out,
            "first frame     {}  ({} cameras never whole, {} players off their layer, {} never on it)",
            spread(&self.first_frame_ms),
            self.cameras_without_frame,
            self.players_off_layer,
            self.players_without_layer
        );
        let _ = writeln!(
            out,
            "layer switch    {} done, {} unfinished; keyframe {}; {} layer pauses",
            self.layer_switches,
            self.unfinished_layer_switches,
            spread(&self.switch_keyframe_ms),
            self.layer_pauses
        );
        let _ = writeln!(out, "speaker changes {} (median participant)", f(self.active_speaker_events, ""));
        let _ = writeln!(out, "packets/s       in {:.0}  out {:.0}", self.pps_in, self.pps_out);
        for s in &self.server {
            let _ = writeln!(
                out,
                "server {:<10} {:.2} CPU s, {:.2} cores, peak RSS {:.1} MiB (pid {})",
                s.name, s.cpu_seconds, s.cpu_cores, s.peak_rss_mb, s.pid
            );
        }
        let _ = writeln!(out, "forwarded/CPU-s {}", f(self.forwarded_packets_per_cpu_second, ""));
        let _ = writeln!(
            out,
            "server ns/pkt   {}  = {} the floor of one send per datagram ({}), {} the GSO floor ({}); sendmmsg floor {}, AES-GCM seal alone {}",
            f(self.server_ns_per_forwarded_packet, ""),
            f(self.floor_ratio.send, "x"),
            f(self.floor.send_ns, " ns"),
            f(self.floor_ratio.gso, "x"),
            f(self.floor.gso_ns, " ns"),
            f(self.floor.mmsg_ns, " ns"),
            f(self.floor.seal_ns, " ns"),
        );
        let _ = writeln!(
            out,
            "generator       {:.2} cores, {} ns per packet received ({} receive path, {}% opened by it), busiest thread {:.0}% ({:.0}% while joining), timers up to {:.1} ms late, {} receive drops, {} failed clients{}",
            self.generator.cpu_cores,
            self.generator.ns_per_received_packet.map_or("-".into(), |ns| format!("{ns:.0}")),
            match self.generator.rx_path {
                RxPath::Own => "own",
                RxPath::Engine => "engine",
            },
            self.generator.own_path_share.map_or("-".into(), |s| format!("{:.0}", s * 100.0)),
            self.generator.busiest_thread * 100.0,
            self.generator.busiest_thread_joining * 100.0,
            self.generator.max_timer_late_ms,
            self.generator.rx_drops,
            self.generator.client_failures,
            if self.generator.bottleneck { "  <- the generator was the bottleneck" } else { "" }
        );
        for p in &self.client_problems {
            let _ = writeln!(out, "client problem  {p}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "error           {e}");
        }
        out
    }

    /// The run against its scenario's targets, ending with a PASS or FAIL line.
    pub fn verdict(&self) -> String {
        let mut out = String::new();
        for c in &self.targets {
            let measured = c.measured.map_or("-".into(), |m| format!("{m:.2}"));
            let (op, word) = (if c.at_least { ">=" } else { "<=" }, if c.met { "met   " } else { "MISSED" });
            let _ = writeln!(out, "target          {word} {}: {measured} (target {op} {})", c.name, c.target);
        }
        let missed = self.targets.iter().filter(|c| !c.met).count();
        let line = match self.passed {
            None => format!("NO TARGETS: scenario {} names none", self.scenario),
            Some(_) if !self.complete => format!("FAIL: the run did not complete ({})", self.scenario),
            Some(_) if self.generator.bottleneck => {
                format!("NOT JUDGED: the generator was the bottleneck ({})", self.scenario)
            }
            Some(true) => format!("PASS: all {} targets of {} met", self.targets.len(), self.scenario),
            Some(false) => {
                format!("FAIL: {missed} of {} targets of {} missed", self.targets.len(), self.scenario)
            }
        };
        let _ = writeln!(out, "{line}");
        out
    }

    /// Latency percentiles and received bitrate per second, as an SVG line chart.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (800.0, 360.0, 50.0);
        let n = self.timeline.len().max(2) as f64;
        let max_lat = self.timeline.iter().filter_map(|s| s.latency_p99_ms).fold(1.0, f64::max);
        let max_kbps = self.timeline.iter().map(|s| s.kbps).fold(1.0, f64::max);
        let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
        let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
        let line = |values: Vec<(usize, f64)>, max: f64| {
            values
                .iter()
                .map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v, max)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let p50 = line(
            self.timeline.iter().enumerate().filter_map(|(i, s)| s.latency_p50_ms.map(|v| (i, v))).collect(),
            max_lat,
        );
        let p99 = line(
            self.timeline.iter().enumerate().filter_map(|(i, s)| s.latency_p99_ms.map(|v| (i, v))).collect(),
            max_lat,
        );
        let kbps = line(self.timeline.iter().enumerate().map(|(i, s)| (i, s.kbps)).collect(), max_kbps);
        // The measured window, shaded: figures in the report come from inside it.
        let window = self.window_s.map_or(String::new(), |[start, end]| {
            let to_x = |t: f64| pad + (w - 2.0 * pad) * (t / (n - 1.0)).clamp(0.0, 1.0);
            format!(
                r##"<rect x="{:.1}" y="{pad}" width="{:.1}" height="{}" fill="#f1f3f4"/><text x="{:.1}" y="{}" fill="#5f6368">measured window</text>"##,
                to_x(start),
                (to_x(end) - to_x(start)).max(0.0),
                h - 2.0 * pad,
                to_x(start) + 4.0,
                pad + 14.0
            )
        });
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
{window}
<text x="{pad}" y="20">{title}: latency (ms, left) and received bitrate (kbit/s, right) per second</text>
<text x="12" y="{mid}" transform="rotate(-90 12 {mid})" text-anchor="middle">latency (ms)</text>
<text x="{right_axis}" y="{mid}" transform="rotate(90 {right_axis} {mid})" text-anchor="middle">received (kbit/s)</text>
<text x="{center}" y="{time_axis}" text-anchor="middle">seconds from the first packet received</text>
<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="black"/>
<text x="5" y="{pad}">{max_lat:.1}</text><text x="5" y="{bottom}">0</text>
<text x="{right_label}" y="{pad}">{max_kbps:.0}</text>
<text x="{pad}" y="{time_label}">0 s</text><text x="{right}" y="{time_label}" text-anchor="end">{secs} s</text>
<polyline fill="none" stroke="#1a73e8" stroke-width="1.5" points="{p50}"/>
<polyline fill="none" stroke="#d93025" stroke-width="1.5" points="{p99}"/>
<polyline fill="none" stroke="#188038" stroke-width="1" stroke-dasharray="4 2" points="{kbps}"/>
<text x="{pad}" y="38" fill="#1a73e8">latency p50</text>
<text x="{legend_b}" y="38" fill="#d93025">latency p99</text>
<text x="{legend_c}" y="38" fill="#188038">- - kbit/s</text>
</svg>
"##,
            title = self.scenario,
            bottom = h - pad,
            right = w - pad,
            right_label = w - pad + 5.0,
            time_label = h - pad + 18.0,
            secs = self.timeline.len(),
            legend_b = pad + 100.0,
            legend_c = pad + 200.0,
            mid = h / 2.0,
            right_axis = w - 8.0,
            center = w / 2.0,
            time_axis = h - 8.0,
        )
    }
}

/// CPU seconds (user + system) of a process or thread from its /proc stat file.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name in parentheses; utime and stime are 14th and 15th.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is always a valid name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Peak resident set size of a process, in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Receive drops the kernel counted on UDP sockets bound to `ports` (IPv4 and IPv6).
pub fn udp_drops(ports: &[u16]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if ports.contains(&port) {
                total += fields.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        assert!(cpu_seconds("/proc/self/stat").is_some());
        assert!(peak_rss_mb(std::process::id()).unwrap() > 0.0);
    }

    #[test]
    fn a_run_passes_only_when_every_target_is_met() {
        let targets = Targets {
            delivery_min: Some(0.995),
            latency_p99_ms: Some(20.0),
            server_cores: Some(1.0),
            ..Default::default()
        };
        let mut r = Report {
            scenario: "class".into(),
            complete: true,
            latency_ms: Percentiles { p50: Some(5.0), p99: Some(25.9), max: Some(60.0) },
            delivery: Delivery { min: Some(1.0), ..Default::default() },
            server: vec![
                ServerProcess { name: "edge-1".into(), cpu_cores: 0.45, ..Default::default() },
                ServerProcess { name: "edge-2".into(), cpu_cores: 0.46, ..Default::default() },
            ],
            ..Default::default()
        };
        let checks = check_targets(&r, &targets);
        let met: Vec<(&str, bool)> = checks.iter().map(|c| (c.name, c.met)).collect();
        assert_eq!(
            met,
            vec![
                ("latency p99 (ms)", false),
                ("server CPU (cores)", true),
                ("delivery min", true),
                ("frozen tiles, failed or refused joins and players off their layer", true),
            ]
        );
        r.passed = Some(checks.iter().all(|c| c.met));
        r.targets = checks;
        let verdict = r.verdict();
        assert!(verdict.contains("MISSED latency p99 (ms): 25.90 (target <= 20)"), "{verdict}");
        assert!(verdict.trim_end().ends_with("FAIL: 1 of 4 targets of class missed"), "{verdict}");

        r.latency_ms.p99 = Some(12.0);
        r.targets = check_targets(&r, &targets);
        r.passed = Some(r.targets.iter().all(|c| c.met));
        assert!(r.verdict().trim_end().ends_with("PASS: all 4 targets of class met"));
        // Joins the server refused as node full fail a scenario that expects everyone in.
        r.refused_joins = 3;
        assert!(!check_targets(&r, &targets)[3].met);
        r.refused_joins = 0;
        // A figure that was not measured is not met; a generator-bound run is not judged.
        r.delivery.min = None;
        assert!(!check_targets(&r, &targets)[2].met);
        r.generator.bottleneck = true;
        assert!(r.verdict().contains("NOT JUDGED"));
    }

    #[test]
    fn svg_is_well_formed_with_and_without_data() {
        let mut r = Report { scenario: "x".into(), ..Default::default() };
        assert!(r.svg().starts_with("<svg"));
        r.timeline = (0..5)
            .map(|t| Second {
                t,
                packets: 10,
                kbps: 100.0,
                latency_p50_ms: Some(1.0),
                latency_p99_ms: Some(2.0),
            })
            .collect();
        let svg = r.svg();
        assert!(svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
    }
}

/// The client whose link the scenario shaped (`[shape]`): its limit, what it lost to it,
/// and each second of the window.
#[derive(Debug, Clone, Serialize)]
pub struct Shaped {
    pub client: u32,
    pub address: std::net::Ipv4Addr,
    pub rate_kbit: u32,
    pub from_s: f64,
    pub until_s: f64,
    /// Datagrams to it the token bucket dropped (its queue was full).
    pub dropped: u64,
    pub audio_delivery: Option<f64>,
    pub video_delivery: Option<f64>,
    /// Tiles it showed at the end that had stopped arriving, untold.
    pub frozen_tiles: usize,
    pub seconds: Vec<ShapedSecond>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapedSecond {
    /// Second of the window.
    pub t: usize,
    pub video_kbps: f64,
    /// Of it, per layer (q, h, f).
    pub layers_kbps: [f64; 3],
    pub audio_packets: u64,
    /// Cameras it got video of in that second.
    pub cameras: u32,
    /// Tracks the server had told it were paused.
    pub paused: u64,
}

impl Shaped {
    pub fn new(plan: &crate::scenario::ShapePlan, address: std::net::Ipv4Addr) -> Self {
        Self {
            client: plan.client,
            address,
            rate_kbit: plan.rate_kbit,
            from_s: plan.from_s,
            until_s: plan.until_s,
            dropped: 0,
            audio_delivery: None,
            video_delivery: None,
            frozen_tiles: 0,
            seconds: Vec::new(),
        }
    }

    pub fn fill(&mut self, seconds: &[FollowedSecond], judged: &Judgement, frozen: usize) {
        let kbps = |bytes: u64| bytes as f64 * 8.0 / 1000.0;
        self.seconds = seconds
            .iter()
            .enumerate()
            .map(|(t, s)| ShapedSecond {
                t,
                video_kbps: kbps(s[0] + s[1] + s[2]),
                layers_kbps: [kbps(s[0]), kbps(s[1]), kbps(s[2])],
                audio_packets: s[3],
                cameras: s[4].count_ones(),
                paused: s[5],
            })
            .collect();
        (self.audio_delivery, self.video_delivery) = judged.deliveries();
        self.frozen_tiles = frozen;
    }

    /// Mean video kbit/s over seconds `from..until` of the window.
    pub fn video_kbps(&self, from: f64, until: f64) -> Option<f64> {
        let picked: Vec<f64> = self
            .seconds
            .iter()
            .filter(|s| s.t as f64 >= from && (s.t as f64) < until)
            .map(|s| s.video_kbps)
            .collect();
        (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
    }
}

/// The client whose link the scenario made lossy (`[loss]`).
#[derive(Debug, Clone, Serialize)]
pub struct LossyLink {
    pub client: u32,
    pub address: std::net::Ipv4Addr,
    pub percent: u32,
    /// Datagrams nftables dropped, both ways.
    pub dropped: u64,
    pub audio_delivery: Option<f64>,
    pub video_delivery: Option<f64>,
}

impl LossyLink {
    pub fn new(plan: &crate::scenario::LossPlan, address: std::net::Ipv4Addr) -> Self {
        Self {
            client: plan.client,
            address,
            percent: plan.percent,
            dropped: 0,
            audio_delivery: None,
            video_delivery: None,
        }
    }

    pub fn fill(&mut self, judged: &Judgement) {
        (self.audio_delivery, self.video_delivery) = judged.deliveries();
    }
}
