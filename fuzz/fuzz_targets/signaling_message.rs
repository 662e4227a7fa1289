//! A WebSocket text frame as the signaling server reads it: parsed as a `ClientMessage`,
//! or, when that fails, read as JSON for its `type` (what `classify_json_error` does), and
//! a subscription's tiles mapped to qualities (what `shown_tracks` does). Also read as a
//! `ServerMessage`, as the load generator reads the server's frames.
//!
//! Properties: no panic; every message that parses serializes and reads back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::messages::{ClientMessage, ServerMessage};
use proto::quality::{MAX_LAYERS, quality_for_tile, quality_named};

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 by the time the server sees it.
    let Ok(text) = std::str::from_utf8(data) else { return };

    match serde_json::from_str::<ClientMessage>(text) {
        Ok(message) => {
            let written = serde_json::to_string(&message).expect("a parsed message serializes");
            let read: ClientMessage = serde_json::from_str(&written).expect("what we write reads back");
            assert_eq!(read, message, "client message changed in a round trip through {written}");
            if let ClientMessage::Subscribe { tracks } = &message {
                for t in tracks {
                    let quality = match (t.quality.as_deref(), t.width, t.height) {
                        (Some(name), _, _) => quality_named(name),
                        (None, Some(w), Some(h)) => Some(quality_for_tile(w, h)),
                        _ => None,
                    };
                    assert!(quality.is_none_or(|q| usize::from(q) < MAX_LAYERS));
                }
            }
        }
        Err(_) => {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                let _ = value.get("type").and_then(|t| t.as_str());
            }
        }
    }

    if let Ok(message) = serde_json::from_str::<ServerMessage>(text) {
        let written = serde_json::to_string(&message).expect("a parsed message serializes");
        let read: ServerMessage = serde_json::from_str(&written).expect("what we write reads back");
        assert_eq!(read, message, "server message changed in a round trip through {written}");
        let value = serde_json::to_value(&message).expect("a parsed message is a JSON value");
        let tag = value["type"].as_str().expect("every server message has a type");
        assert!(ServerMessage::TYPES.contains(&tag), "{tag} is listed in ServerMessage::TYPES");
    }
});
