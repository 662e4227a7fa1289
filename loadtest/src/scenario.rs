//! Scenario files (`benches/scenarios/*.toml`): who joins, how fast, for how long, and
//! who publishes what. SCENARIOS.md defines the scenarios themselves.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::media::layer;

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
        if self.video.keyframe_interval_s <= 0.0 {
            return Err("keyframe_interval_s must be positive".into());
        }
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    pub fn join_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.join_rate)
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
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 6, "meeting-300, audio-3000, churn and their smoke twins: found {n}");
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
