//! Huiyi's configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags (see `huiyi --help`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The secret used when none is configured: public, so only for a laptop.
pub const DEV_SECRET: &str = "huiyi-dev-secret-do-not-use-in-production";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket listen address.
    pub http: SocketAddr,
    pub media: MediaSection,
    pub auth: AuthSection,
    pub log: LogSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    pub bind: SocketAddr,
    pub public_ips: Vec<IpAddr>,
    pub shards: usize,
    pub ice_timeout_secs: u64,
    pub max_participants_per_room: usize,
    pub max_publications_per_participant: usize,
    /// Loudest speakers forwarded in large rooms.
    pub audio_top_n: usize,
    /// Rooms of at most this many participants forward every audio track.
    pub audio_top_n_above: usize,
    /// Estimate each subscriber's bandwidth and fit its video layers into it.
    pub bwe: bool,
    /// Send forwarded media through Huiyi's own SRTP path rather than str0m's.
    pub fast_egress: bool,
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

impl Default for Config {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 7700)),
            media: MediaSection::default(),
            auth: AuthSection::default(),
            log: LogSection::default(),
        }
    }
}

impl Default for MediaSection {
    fn default() -> Self {
        let d = sfu::MediaConfig::default();
        Self {
            bind: d.bind,
            public_ips: Vec::new(),
            shards: 0,
            ice_timeout_secs: d.ice_timeout.as_secs(),
            max_participants_per_room: d.max_participants_per_room,
            max_publications_per_participant: d.max_publications_per_participant,
            audio_top_n: d.audio_top_n,
            audio_top_n_above: d.audio_top_n_above,
            bwe: d.bwe,
            fast_egress: d.fast_egress,
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

    pub fn media_config(&self) -> sfu::MediaConfig {
        sfu::MediaConfig {
            bind: self.media.bind,
            public_ips: self.media.public_ips.clone(),
            shards: self.media.shards,
            ice_timeout: Duration::from_secs(self.media.ice_timeout_secs.max(1)),
            max_participants_per_room: self.media.max_participants_per_room.max(1),
            max_publications_per_participant: self.media.max_publications_per_participant,
            audio_top_n: self.media.audio_top_n.max(1),
            audio_top_n_above: self.media.audio_top_n_above,
            bwe: self.media.bwe,
            fast_egress: self.media.fast_egress,
            ..sfu::MediaConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(include_str!("../huiyi.example.toml")).expect("example parses");
        let defaults = Config::default();
        assert_eq!(parsed.http, defaults.http);
        assert_eq!(parsed.media.bind, defaults.media.bind);
        assert_eq!(parsed.media.ice_timeout_secs, defaults.media.ice_timeout_secs);
        assert_eq!(parsed.media.max_participants_per_room, defaults.media.max_participants_per_room);
        assert_eq!(
            parsed.media.max_publications_per_participant,
            defaults.media.max_publications_per_participant
        );
        assert_eq!(parsed.auth.api_secret, "");
        assert!(!parsed.log.json);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("htp = \"127.0.0.1:1\"").is_err());
    }
}
