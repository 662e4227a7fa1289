//! Scenario files (`benches/scenarios/*.toml`): who joins, how fast, for how long, and
//! who publishes what. SCENARIOS.md defines the scenarios themselves.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::media::{LayerShape, layer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Room name; a random suffix is added so runs do not meet each other.
    pub room: String,
    /// Participants in the room at steady state.
    pub participants: usize,
    /// Joins per second while filling the room.
    pub join_rate: f64,
    /// Measured seconds after everyone joined.
    pub duration_s: f64,
    #[serde(default)]
    pub audio: AudioPlan,
    #[serde(default)]
    pub video: VideoPlan,
    #[serde(default)]
    pub churn: Option<ChurnPlan>,
    /// What every participant shows; without it no client sends `subscribe` and the
    /// server sends every video track at its top layer.
    #[serde(default)]
    pub view: Option<ViewPlan>,
    /// A live class instead of a meeting: the publisher (the first participant) sends over
    /// WHIP and everyone else plays over WHEP.
    #[serde(default)]
    pub broadcast: Option<BroadcastPlan>,
    /// What a run must show to pass (SCENARIOS.md, *Targets*); the report ends with a
    /// PASS or FAIL line against these.
    #[serde(default)]
    pub targets: Targets,
    /// A config file (from the workspace root) the benchmark scripts start the node with,
    /// for a scenario about a node set up otherwise than the default; the generator only
    /// names it in the report.
    #[serde(default)]
    pub node_config: Option<String>,
    /// One client's downlink limited for part of the window (`tc`, root only): the report
    /// follows that client second by second (issue 12's shaped link).
    #[serde(default)]
    pub shape: Option<ShapePlan>,
    /// Random loss on one client's link, both ways, for the whole measured window
    /// (nftables, root only): the report follows that client's delivery.
    #[serde(default)]
    pub loss: Option<LossPlan>,
}

/// Random loss on one client's link, both ways.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LossPlan {
    /// The client (its serial: the order of joining, from 0).
    pub client: u32,
    /// Datagrams dropped each way, in percent.
    pub percent: u32,
}

/// A rate limit on what one client receives, for part of the measured window.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShapePlan {
    /// The client (its serial: the order of joining, from 0) whose link is shaped.
    pub client: u32,
    pub rate_kbit: u32,
    /// Seconds into the window the limit starts and ends.
    pub from_s: f64,
    pub until_s: f64,
}

/// A scenario's targets: each one given is checked against the run's figure.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Every subscriber's delivery at least this (0..=1); with it, no frozen tile, no
    /// failed join and no player off its layer either.
    pub delivery_min: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub join_p99_ms: Option<f64>,
    pub first_frame_p99_ms: Option<f64>,
    /// The measured server processes' CPU, summed (cores).
    pub server_cores: Option<f64>,
    /// Server ns per forwarded packet over this machine's one-send floor.
    pub floor_ratio: Option<f64>,
    pub forwarded_per_cpu_second: Option<f64>,
    /// The measured server processes' peak RSS, summed (MiB).
    pub peak_rss_mb: Option<f64>,
}

/// A live class: the first participant is the teacher and publishes its microphone and
/// camera with WHIP at `--url` (an origin, or an all-in-one node); the others are players
/// that `POST` to WHEP there, follow its `307` to an edge, and say their size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastPlan {
    /// Every player's size in device pixels, which picks the layer it should get.
    pub player: [u32; 2],
    /// Edge processes behind the origin, for whoever starts the tier (benches/run.sh);
    /// the generator itself only needs the origin's URL.
    #[serde(default)]
    #[allow(dead_code)] // Read by benches/run.sh (and the scenario tests).
    pub edges: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPlan {
    /// How many participants publish a microphone (the first N to join).
    pub publishers: usize,
    /// How many of them talk at once; the others are silent (DTX).
    pub speakers: usize,
    /// Seconds before the talking role moves on to the next publishers.
    pub rotate_s: f64,
}

impl Default for AudioPlan {
    fn default() -> Self {
        Self { publishers: 0, speakers: 0, rotate_s: 5.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoPlan {
    /// How many participants publish a camera (the first N to join).
    pub publishers: usize,
    /// Layers each camera sends: one of "q", "h", "f", or several for simulcast.
    pub layers: Vec<String>,
    pub keyframe_interval_s: f64,
}

impl Default for VideoPlan {
    fn default() -> Self {
        Self { publishers: 0, layers: vec!["h".into()], keyframe_interval_s: 3.0 }
    }
}

/// A gallery view: up to `grid` cameras of other participants, the dominant speaker's
/// first and in a large tile, the rest in small tiles (sizes in device pixels).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewPlan {
    pub grid: usize,
    #[serde(default = "ViewPlan::default_speaker_tile")]
    pub speaker_tile: [u32; 2],
    #[serde(default = "ViewPlan::default_tile")]
    pub tile: [u32; 2],
}

impl ViewPlan {
    fn default_speaker_tile() -> [u32; 2] {
        [640, 360]
    }

    fn default_tile() -> [u32; 2] {
        [320, 180]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnPlan {
    pub joins_per_s: f64,
    pub leaves_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {0}: {1}")]
    Read(String, std::io::Error),
    #[error("scenario {0} is not valid: {1}")]
    Parse(String, toml::de::Error),
    #[error("scenario {0}: {1}")]
    Invalid(String, String),
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(shown.clone(), e))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::Parse(shown.clone(), e))?;
        scenario.validate().map_err(|e| ScenarioError::Invalid(shown, e))?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.participants == 0 {
            return Err("participants must be at least 1".into());
        }
        if self.join_rate <= 0.0 || self.duration_s <= 0.0 {
            return Err("join_rate and duration_s must be positive".into());
        }
        if self.audio.publishers > self.participants || self.video.publishers > self.participants {
            return Err("more publishers than participants".into());
        }
        if self.audio.speakers > self.audio.publishers {
            return Err("more speakers than audio publishers".into());
        }
        if self.video.publishers > 0 && self.video.layers.is_empty() {
            return Err("video publishers need at least one layer".into());
        }
        if let Some(bad) = self.video.layers.iter().find(|l| layer(l).is_none()) {
            return Err(format!("unknown layer {bad:?} (q, h or f)"));
        }
        if let Some((i, dup)) =
            self.video.layers.iter().enumerate().find(|(i, l)| self.video.layers[..*i].contains(l))
        {
            return Err(format!("layer {dup:?} listed twice (at {i})"));
        }
        if let Some(view) = &self.view {
            if view.grid == 0 {
                return Err("view.grid must be at least 1".into());
            }
            if view.speaker_tile.contains(&0) || view.tile.contains(&0) {
                return Err("view tile sizes must be positive".into());
            }
        }
        if let Some(shape) = &self.shape {
            if shape.client as usize >= self.participants {
                return Err("shape.client is not one of the participants".into());
            }
            if shape.rate_kbit == 0 || !(0.0 <= shape.from_s && shape.from_s < shape.until_s) {
                return Err("shape needs a positive rate and 0 <= from_s < until_s".into());
            }
            if shape.until_s > self.duration_s || self.broadcast.is_some() || self.churn.is_some() {
                return Err("shape must end within the window, in a meeting without churn".into());
            }
        }
        if let Some(loss) = &self.loss {
            if loss.client as usize >= self.participants || loss.percent == 0 || loss.percent >= 100 {
                return Err("loss needs one of the participants and 1 to 99 percent".into());
            }
            if self.broadcast.is_some() || self.churn.is_some() {
                return Err("loss is for a meeting without churn".into());
            }
        }
        if self.video.keyframe_interval_s <= 0.0 {
            return Err("keyframe_interval_s must be positive".into());
        }
        if let Some(broadcast) = &self.broadcast {
            if self.audio.publishers > 1 || self.video.publishers > 1 {
                return Err("a broadcast has one publisher (the first participant)".into());
            }
            if self.audio.publishers + self.video.publishers == 0 || self.participants < 2 {
                return Err("a broadcast needs its publisher and at least one player".into());
            }
            if self.view.is_some() || self.churn.is_some() {
                return Err("a broadcast's players have no view and do not churn".into());
            }
            if broadcast.player.contains(&0) {
                return Err("broadcast.player sizes must be positive".into());
            }
        }
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    pub fn join_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.join_rate)
    }

    /// The layers each camera sends, lowest first (the order of `LAYERS`), whatever order
    /// the file lists them in.
    pub fn camera_layers(&self) -> Vec<LayerShape> {
        let mut shapes: Vec<LayerShape> = self.video.layers.iter().filter_map(|l| layer(l)).collect();
        shapes.sort_by_key(|s| s.rank());
        shapes
    }

    /// The layer (rank) a broadcast's players should get for their size.
    pub fn player_layer(&self) -> Option<usize> {
        let [width, height] = self.broadcast.as_ref()?.player;
        crate::media::layer_for_tile(&self.camera_layers(), width, height).map(|l| l.rank())
    }

    /// Whether the server forwards only the loudest speakers in this room
    /// (`expect::AUDIO_TOP_N_ABOVE`).
    pub fn audio_top_n(&self) -> bool {
        self.participants > crate::expect::AUDIO_TOP_N_ABOVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenario dir") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                if let Some(config) = &scenario.node_config {
                    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(config);
                    assert!(file.is_file(), "{}: node_config {config} is not a file", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 8, "meeting-300, audio-3000, churn, broadcast-1000 and their smoke twins: found {n}");
    }

    fn parse(extra: &str) -> Result<Scenario, String> {
        let text =
            format!("name = \"x\"\nroom = \"x\"\nparticipants = 20\njoin_rate = 1\nduration_s = 1\n{extra}");
        let s: Scenario = toml::from_str(&text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn simulcast_and_views() {
        let s = parse(
            "[video]\npublishers = 2\nlayers = [\"f\", \"q\", \"h\"]\nkeyframe_interval_s = 3\n\
             [view]\ngrid = 25\n",
        )
        .expect("three layers are simulcast");
        let rids: Vec<&str> = s.camera_layers().iter().map(|l| l.rid).collect();
        assert_eq!(rids, ["q", "h", "f"], "lowest first whatever the file's order");
        let view = s.view.as_ref().expect("a view");
        assert_eq!((view.grid, view.speaker_tile, view.tile), (25, [640, 360], [320, 180]), "default tiles");
        assert!(s.audio_top_n(), "20 participants: top-N audio");
        assert!(parse("shown = 1").is_err(), "unknown keys are refused");
        let small = parse("").unwrap();
        assert!(small.view.is_none(), "no view unless asked for");
        let mut ten = small.clone();
        ten.participants = 10;
        assert!(!ten.audio_top_n(), "up to 10 participants every audio track is sent");
        ten.participants = 11;
        assert!(ten.audio_top_n());

        let video =
            |layers: &str| format!("[video]\npublishers = 1\nlayers = {layers}\nkeyframe_interval_s = 3\n");
        assert!(parse(&video("[\"q\", \"q\"]")).unwrap_err().contains("twice"));
        assert!(parse(&video("[\"x\"]")).unwrap_err().contains("unknown layer"));
        assert!(parse(&video("[]")).is_err());
        assert!(parse("[view]\ngrid = 0\n").is_err());
        assert!(parse("[view]\ngrid = 4\ntile = [0, 180]\n").is_err());

        let class = parse(&format!("{}[broadcast]\nplayer = [320, 180]\n", video("[\"q\", \"h\", \"f\"]")))
            .expect("a class");
        assert_eq!(class.player_layer(), Some(0));
        assert!(parse("[broadcast]\nplayer = [640, 360]\n").is_err(), "no publisher");
        let two = "[video]\npublishers = 2\nlayers = [\"h\"]\nkeyframe_interval_s = 3\n";
        assert!(parse(&format!("{two}[broadcast]\nplayer = [640, 360]\n")).is_err(), "two publishers");
    }

    #[test]
    fn the_shipped_scenarios_have_the_shapes_of_scenarios_md() {
        let load = |name: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scenarios").join(name);
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
        };
        for name in ["meeting-300.toml", "meeting-300-smoke.toml"] {
            let s = load(name);
            assert_eq!(s.video.layers, ["q", "h", "f"], "{name}");
            let view = s.view.unwrap_or_else(|| panic!("{name} has a view"));
            assert_eq!((view.grid, view.speaker_tile, view.tile), (25, [640, 360], [320, 180]), "{name}");
        }
        for name in ["audio-3000.toml", "audio-3000-smoke.toml"] {
            let s = load(name);
            assert_eq!((s.audio.publishers, s.audio.speakers, s.audio.rotate_s), (10, 3, 5.0), "{name}");
        }
        for name in ["churn.toml", "churn-smoke.toml"] {
            assert!(load(name).view.is_none(), "{name}");
        }
        for (name, players) in [("broadcast-1000.toml", 1000), ("broadcast-1000-smoke.toml", 50)] {
            let s = load(name);
            assert_eq!(s.participants, players + 1, "{name}: the teacher and the players");
            assert_eq!(s.video.layers, ["q", "h", "f"], "{name}");
            assert_eq!(s.player_layer(), Some(1), "{name}: players get h");
            assert_eq!((s.audio.publishers, s.video.publishers), (1, 1), "{name}");
            let edges = s.broadcast.as_ref().map(|b| b.edges);
            assert_eq!(edges, Some(if players == 1000 { 2 } else { 1 }), "{name}");
        }
    }

    #[test]
    fn refuses_inconsistent_plans() {
        let text = r#"
            name = "x"
            room = "x"
            participants = 2
            join_rate = 1
            duration_s = 1
            [video]
            publishers = 3
            layers = ["h"]
            keyframe_interval_s = 3
        "#;
        let s: Scenario = toml::from_str(text).unwrap();
        assert!(s.validate().is_err());
    }
}
