//! Huiyi's configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags (see `huiyi --help`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The secret used when none is configured: public, so only for a laptop.
pub const DEV_SECRET: &str = "huiyi-dev-secret-do-not-use-in-production";

/// The shortest API secret accepted (HS256 wants a key of its output size, 32 bytes).
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket listen address.
    pub http: SocketAddr,
    /// A separate listener for `/metrics` and the admin API; unset, they share `http`.
    pub admin_http: Option<SocketAddr>,
    pub media: MediaSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub relay: RelaySection,
    pub log: LogSection,
    pub tls: TlsSection,
    pub turn: TurnSection,
    /// Allow the public development secret (and its token endpoint) on an address other
    /// than loopback (`--dev`). Never in production.
    #[serde(skip)]
    pub dev: bool,
    /// On SIGTERM or Ctrl-C: refuse new joins and wait this long for participants to
    /// leave before exiting (a second signal exits at once).
    pub drain_secs: u64,
    /// Testing only: a join to this room panics its media thread.
    #[doc(hidden)]
    #[serde(skip)]
    pub test_panic_room: Option<String>,
}

/// What one node lets strangers hold (docs/operations.md, "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Open HTTP and WebSocket connections; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (loopback exempt); 0 = no cap.
    pub max_connections_per_ip: usize,
    /// A request's headers (and an idle connection's next request) must arrive within this.
    pub header_read_timeout_secs: u64,
    /// A participant whose signaling connection drops stays in its room this long, its
    /// media going on, for the client to resume it (`join` with `resume`); 0: it leaves.
    pub resume_grace_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = signaling::http::HttpLimits::default();
        Self {
            max_connections: d.max_connections,
            max_connections_per_ip: d.max_connections_per_ip,
            header_read_timeout_secs: d.header_read_timeout.as_secs(),
            resume_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    pub bind: SocketAddr,
    /// ICE-TCP for browsers whose UDP is blocked (RFC 6544), on `tcp_bind` (unset: the UDP
    /// address and port, TCP).
    pub ice_tcp: bool,
    pub tcp_bind: Option<SocketAddr>,
    pub public_ips: Vec<IpAddr>,
    pub shards: usize,
    pub ice_timeout_secs: u64,
    pub max_participants_per_room: usize,
    /// Participants who may only watch, per room.
    pub max_viewers_per_room: usize,
    pub max_publications_per_participant: usize,
    /// Participants on this node in all rooms.
    pub max_participants_per_node: usize,
    /// A media thread's admission budget: the share of the time it may work (ADR 0020).
    pub max_shard_busy: f64,
    /// ... and how long received media may wait in its queue.
    pub max_shard_lag_ms: u64,
    /// ICE candidates one session may add.
    pub max_candidates_per_session: usize,
    /// m-lines in one offer or answer from a client.
    pub max_mlines_per_offer: usize,
    /// Bytes of one offer or answer from a client.
    pub max_sdp_bytes: usize,
    /// Loudest speakers forwarded in large rooms.
    pub audio_top_n: usize,
    /// Rooms of at most this many participants forward every audio track.
    pub audio_top_n_above: usize,
    /// Estimate each subscriber's bandwidth and fit its video layers into it.
    pub bwe: bool,
    /// Send forwarded media through Huiyi's own SRTP path rather than str0m's.
    pub fast_egress: bool,
    /// Offer RED beside Opus (redundant audio; passed through or unwrapped per subscriber).
    pub opus_red: bool,
    /// Video codecs offered and accepted, most preferred first.
    pub video_codecs: Vec<VideoCodecName>,
}

/// A video codec as the config file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodecName {
    Vp8,
    H264,
}

impl From<VideoCodecName> for sfu::VideoCodec {
    fn from(name: VideoCodecName) -> Self {
        match name {
            VideoCodecName::Vp8 => sfu::VideoCodec::Vp8,
            VideoCodecName::H264 => sfu::VideoCodec::H264,
        }
    }
}

/// Which part of the broadcast tier a process plays (ADR 0012).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Meetings and broadcasts in one process, no relay links (the laptop default).
    #[default]
    All,
    /// Holds the publishers of live classes and feeds edges over relay links.
    Origin,
    /// Plays live classes pulled from an origin (or another edge) to viewers.
    Edge,
}

/// The broadcast tier: relay links between an origin and its edges.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySection {
    pub role: Role,
    /// UDP address relay links from edges arrive on (an origin's, or an edge's that feeds
    /// further edges).
    pub listen: Option<SocketAddr>,
    /// The origin's (or parent edge's) relay address: required for an edge.
    pub origin: Option<SocketAddr>,
    /// This node's HTTP base URL as viewers reach it (`http://edge1.example.com:7700`);
    /// an origin sends viewers there. Default: `http://` and the HTTP address.
    pub public_url: Option<String>,
    /// This node's name on relay links and in logs (default: the host name).
    pub node: Option<String>,
    /// A room pulled from the origin that nobody on this edge watches is let go after this.
    pub linger_secs: u64,
}

/// Where an origin accepts relay links when nothing else is said.
pub const DEFAULT_RELAY_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 7703);

impl Default for RelaySection {
    fn default() -> Self {
        Self { role: Role::All, listen: None, origin: None, public_url: None, node: None, linger_secs: 30 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// HS256 secret for tokens. Empty: the dev secret and the dev token endpoint.
    pub api_secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub json: bool,
    pub level: String,
}

/// HTTPS and WSS on the signaling port (`src/tls.rs`); none of it set, plain HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// A PEM certificate chain, the server's first.
    pub cert: Option<std::path::PathBuf>,
    /// Its PEM private key.
    pub key: Option<std::path::PathBuf>,
    /// Make a self-signed certificate for a LAN: kept in `cert` and `key` when given (made
    /// on the first start, loaded on the next), in memory only otherwise.
    pub self_signed: bool,
}

/// TURN servers handed to clients (docs/operations.md, *TURN*), with credentials by the
/// TURN REST convention that coturn's `use-auth-secret` checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnSection {
    /// `turn:`/`turns:` URLs, e.g. `turn:turn.example.com:3478?transport=udp`; none: no TURN.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`; empty: the API secret itself (then coturn must be
    /// given that).
    pub secret: String,
    /// How long a participant's TURN credentials stay valid.
    pub ttl_secs: u64,
}

impl Default for TurnSection {
    fn default() -> Self {
        Self { urls: Vec::new(), secret: String::new(), ttl_secs: 12 * 3600 }
    }
}

impl Config {
    /// The TURN servers clients are given, if any.
    pub fn turn(&self) -> Option<signaling::Turn> {
        if self.turn.urls.is_empty() {
            return None;
        }
        let secret = if self.turn.secret.is_empty() {
            self.secret().to_vec()
        } else {
            self.turn.secret.as_bytes().to_vec()
        };
        Some(signaling::Turn {
            urls: self.turn.urls.clone(),
            secret,
            ttl: Duration::from_secs(self.turn.ttl_secs.max(60)),
        })
    }

    /// TURN URLs must be `turn:` or `turns:` ones (RFC 7065).
    pub fn check_turn(&self) -> anyhow::Result<()> {
        for url in &self.turn.urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:")) || url.contains(char::is_whitespace) {
                anyhow::bail!(
                    "[turn] urls: {url:?} is not a turn: or turns: URL (e.g. turn:turn.example.com:3478)"
                );
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 7700)),
            admin_http: None,
            media: MediaSection::default(),
            auth: AuthSection::default(),
            limits: LimitsSection::default(),
            relay: RelaySection::default(),
            log: LogSection::default(),
            tls: TlsSection::default(),
            turn: TurnSection::default(),
            dev: false,
            drain_secs: 10,
            test_panic_room: None,
        }
    }
}

impl Default for MediaSection {
    fn default() -> Self {
        let d = sfu::MediaConfig::default();
        Self {
            bind: d.bind,
            ice_tcp: d.ice_tcp,
            tcp_bind: d.tcp_bind,
            public_ips: Vec::new(),
            shards: 0,
            ice_timeout_secs: d.ice_timeout.as_secs(),
            max_participants_per_room: d.max_participants_per_room,
            max_viewers_per_room: d.max_viewers_per_room,
            max_publications_per_participant: d.max_publications_per_participant,
            max_participants_per_node: d.max_participants_per_node,
            max_shard_busy: d.max_shard_busy,
            max_shard_lag_ms: d.max_shard_lag.as_millis() as u64,
            max_candidates_per_session: d.max_candidates_per_session,
            max_mlines_per_offer: d.max_mlines_per_offer,
            max_sdp_bytes: d.max_sdp_bytes,
            audio_top_n: d.audio_top_n,
            audio_top_n_above: d.audio_top_n_above,
            bwe: d.bwe,
            fast_egress: d.fast_egress,
            opus_red: d.opus_red,
            video_codecs: d
                .video_codecs
                .iter()
                .map(|c| match c {
                    sfu::VideoCodec::Vp8 => VideoCodecName::Vp8,
                    sfu::VideoCodec::H264 => VideoCodecName::H264,
                })
                .collect(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self { json: false, level: "info".into() }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => Config::default(),
        };
        if let Ok(secret) = std::env::var("HUIYI_API_SECRET") {
            config.auth.api_secret = secret;
        }
        Ok(config)
    }

    pub fn secret(&self) -> &[u8] {
        if self.auth.api_secret.is_empty() { DEV_SECRET.as_bytes() } else { self.auth.api_secret.as_bytes() }
    }

    pub fn dev_mode(&self) -> bool {
        self.auth.api_secret.is_empty()
    }

    /// Refuse settings that would expose a server to strangers: the public development
    /// secret on an address other than loopback (unless `--dev`), or a secret too short
    /// to resist guessing.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        let secret_len = self.auth.api_secret.len();
        if secret_len > 0 && secret_len < MIN_SECRET_LEN && !self.dev {
            anyhow::bail!(
                "api_secret is {secret_len} bytes; use at least {MIN_SECRET_LEN} random bytes \
                 (e.g. `openssl rand -base64 32`), or pass --dev for a throwaway server"
            );
        }
        if self.dev_mode() && !self.http.ip().is_loopback() && !self.dev {
            anyhow::bail!(
                "no api_secret configured and HTTP bound to {}, which strangers can reach: anyone could mint \
                 tokens with the public development secret. Set HUIYI_API_SECRET (at least {MIN_SECRET_LEN} \
                 bytes), bind to 127.0.0.1, or pass --dev for a throwaway server",
                self.http
            );
        }
        let relay = self.relay_settings().listen;
        if self.dev_mode() && relay.is_some_and(|a| !a.ip().is_loopback()) && !self.dev {
            anyhow::bail!(
                "no api_secret configured and relay links accepted on {}: any machine could link as an edge \
                 with the public development secret and watch every class. Set HUIYI_API_SECRET (at least \
                 {MIN_SECRET_LEN} bytes) on the origin and its edges, or pass --dev for a throwaway server",
                relay.map(|a| a.to_string()).unwrap_or_default()
            );
        }
        Ok(())
    }

    pub fn http_limits(&self) -> signaling::http::HttpLimits {
        signaling::http::HttpLimits {
            max_connections: self.limits.max_connections.max(1),
            max_connections_per_ip: self.limits.max_connections_per_ip,
            header_read_timeout: Duration::from_secs(self.limits.header_read_timeout_secs.max(1)),
        }
    }

    pub fn media_config(&self) -> sfu::MediaConfig {
        sfu::MediaConfig {
            bind: self.media.bind,
            ice_tcp: self.media.ice_tcp,
            tcp_bind: self.media.tcp_bind,
            public_ips: self.media.public_ips.clone(),
            shards: self.media.shards,
            ice_timeout: Duration::from_secs(self.media.ice_timeout_secs.max(1)),
            max_participants_per_room: self.media.max_participants_per_room.max(1),
            max_viewers_per_room: self.media.max_viewers_per_room.max(1),
            max_publications_per_participant: self.media.max_publications_per_participant,
            max_participants_per_node: self.media.max_participants_per_node.max(1),
            // Above 1 the budget never refuses (a thread is never busier than all the time).
            max_shard_busy: self.media.max_shard_busy.max(0.05),
            // 0 turns the lag budget off.
            max_shard_lag: Duration::from_millis(self.media.max_shard_lag_ms),
            max_candidates_per_session: self.media.max_candidates_per_session,
            max_mlines_per_offer: self.media.max_mlines_per_offer.max(1),
            max_sdp_bytes: self.media.max_sdp_bytes.max(1024),
            audio_top_n: self.media.audio_top_n.max(1),
            audio_top_n_above: self.media.audio_top_n_above,
            bwe: self.media.bwe,
            fast_egress: self.media.fast_egress,
            opus_red: self.media.opus_red,
            video_codecs: self.video_codecs(),
            panic_on_join_to: self.test_panic_room.clone(),
            relay: self.relay_settings(),
            relay_linger: Duration::from_secs(self.relay.linger_secs.max(1)),
            ..sfu::MediaConfig::default()
        }
    }

    /// The configured video codecs in order, each once.
    fn video_codecs(&self) -> Vec<sfu::VideoCodec> {
        let mut codecs: Vec<sfu::VideoCodec> = Vec::new();
        for codec in self.media.video_codecs.iter().map(|c| sfu::VideoCodec::from(*c)) {
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
        codecs
    }

    /// Settings of the media plane that cannot work.
    pub fn check_media(&self) -> anyhow::Result<()> {
        if self.media.video_codecs.is_empty() {
            anyhow::bail!("media.video_codecs is empty: name at least one of \"vp8\" and \"h264\"");
        }
        Ok(())
    }

    /// The relay links this process's role calls for.
    pub fn relay_settings(&self) -> sfu::RelaySettings {
        let r = &self.relay;
        let listen = match r.role {
            Role::All => r.listen,
            Role::Origin => Some(r.listen.unwrap_or(SocketAddr::from(DEFAULT_RELAY_LISTEN))),
            Role::Edge => r.listen,
        };
        sfu::RelaySettings {
            listen,
            parent: if r.role == Role::Edge { r.origin } else { None },
            node: r.node.clone().unwrap_or_else(host_name),
            http_url: Some(r.public_url.clone().unwrap_or_else(|| format!("http://{}", self.http))),
            secret: self.secret().to_vec(),
        }
    }

    /// Settings that cannot work together.
    pub fn check_roles(&self) -> anyhow::Result<()> {
        if self.relay.role == Role::Edge && self.relay.origin.is_none() {
            anyhow::bail!(
                "an edge needs its origin's relay address: --origin <host:port> (the origin's --relay-listen)"
            );
        }
        if self.relay.role != Role::Edge && self.relay.origin.is_some() {
            anyhow::bail!("--origin is for edges: add --role edge");
        }
        Ok(())
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "huiyi".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls_are_checked_and_the_secret_defaults_to_the_api_secret() {
        let mut config = Config::default();
        assert!(config.turn().is_none(), "no URLs, no TURN");
        config.turn.urls = vec!["turn:turn.example.com:3478?transport=udp".into()];
        config.auth.api_secret = "an-api-secret-of-at-least-thirty-two-bytes".into();
        config.check_turn().expect("a turn: URL");
        let turn = config.turn().expect("TURN");
        assert_eq!(turn.secret, config.auth.api_secret.as_bytes());
        config.turn.secret = "coturn's own".into();
        assert_eq!(config.turn().expect("TURN").secret, b"coturn's own");
        config.turn.urls.push("https://turn.example.com".into());
        let err = config.check_turn().expect_err("not a TURN URL");
        assert!(err.to_string().contains("https://turn.example.com"), "{err}");
    }

    #[test]
    fn the_benchmarks_node_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nodes");
        let all_admitted = Config::load(Some(&dir.join("all-admitted.toml"))).expect("loads");
        assert_eq!(all_admitted.media.max_shard_busy, 1.0, "the busy budget is off");
        assert_eq!(all_admitted.media.max_shard_lag_ms, 0, "the lag budget is off");
        for entry in std::fs::read_dir(&dir).expect("benches/nodes") {
            let path = entry.expect("entry").path();
            Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(include_str!("../huiyi.example.toml")).expect("example parses");
        let defaults = Config::default();
        assert_eq!(parsed.http, defaults.http);
        assert_eq!(parsed.media.bind, defaults.media.bind);
        assert_eq!(parsed.media.ice_timeout_secs, defaults.media.ice_timeout_secs);
        assert_eq!(parsed.media.max_participants_per_room, defaults.media.max_participants_per_room);
        assert_eq!(parsed.media.max_viewers_per_room, defaults.media.max_viewers_per_room);
        assert_eq!(
            parsed.media.max_publications_per_participant,
            defaults.media.max_publications_per_participant
        );
        assert_eq!(parsed.media.max_participants_per_node, defaults.media.max_participants_per_node);
        assert_eq!(parsed.media.max_shard_busy, defaults.media.max_shard_busy);
        assert_eq!(parsed.media.max_shard_lag_ms, defaults.media.max_shard_lag_ms);
        assert_eq!(parsed.media.max_candidates_per_session, defaults.media.max_candidates_per_session);
        assert_eq!(parsed.media.max_mlines_per_offer, defaults.media.max_mlines_per_offer);
        assert_eq!(parsed.media.max_sdp_bytes, defaults.media.max_sdp_bytes);
        assert_eq!(parsed.media.video_codecs, defaults.media.video_codecs);
        assert_eq!(parsed.limits.max_connections, defaults.limits.max_connections);
        assert_eq!(parsed.limits.max_connections_per_ip, defaults.limits.max_connections_per_ip);
        assert_eq!(parsed.limits.header_read_timeout_secs, defaults.limits.header_read_timeout_secs);
        assert_eq!(parsed.auth.api_secret, "");
        assert!(!parsed.log.json);
    }

    #[test]
    fn video_codecs_keep_their_order_and_unknown_ones_are_a_clear_error() {
        let c: Config = toml::from_str("[media]\nvideo_codecs = [\"h264\", \"vp8\", \"h264\"]").unwrap();
        assert_eq!(c.media_config().video_codecs, vec![sfu::VideoCodec::H264, sfu::VideoCodec::Vp8]);
        assert!(c.check_media().is_ok());
        let none: Config = toml::from_str("[media]\nvideo_codecs = []").unwrap();
        assert!(none.check_media().is_err(), "no video codec at all");
        let error = toml::from_str::<Config>("[media]\nvideo_codecs = [\"vp9\"]").unwrap_err().to_string();
        assert!(error.contains("unknown variant `vp9`"), "{error}");
    }

    #[test]
    fn the_dev_secret_is_refused_off_loopback_unless_asked_for() {
        let mut c = Config::default();
        assert!(c.check_exposure().is_ok(), "loopback without a secret is the laptop default");
        c.http = "0.0.0.0:7700".parse().unwrap();
        assert!(c.check_exposure().is_err());
        c.dev = true;
        assert!(c.check_exposure().is_ok());
        c.dev = false;
        c.auth.api_secret = "short".into();
        assert!(c.check_exposure().is_err(), "a short secret is refused");
        c.auth.api_secret = "x".repeat(MIN_SECRET_LEN);
        assert!(c.check_exposure().is_ok());
    }

    #[test]
    fn roles_open_the_relay_links_they_need() {
        let mut c = Config::default();
        assert!(c.check_roles().is_ok());
        let all = c.relay_settings();
        assert_eq!((all.listen, all.parent), (None, None), "the laptop default opens no relay port");
        c.relay.role = Role::Edge;
        assert!(c.check_roles().is_err(), "an edge needs its origin");
        c.relay.origin = Some("10.0.0.1:7703".parse().unwrap());
        assert!(c.check_roles().is_ok());
        assert_eq!(c.relay_settings().parent, c.relay.origin);
        c.relay.role = Role::Origin;
        assert!(c.check_roles().is_err(), "--origin without --role edge");
        c.relay.origin = None;
        assert_eq!(c.relay_settings().listen, Some(SocketAddr::from(DEFAULT_RELAY_LISTEN)));
        let parsed: Config = toml::from_str("[relay]\nrole = \"edge\"\norigin = \"127.0.0.1:9\"\n").unwrap();
        assert_eq!(parsed.relay.role, Role::Edge);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("htp = \"127.0.0.1:1\"").is_err());
    }
}
