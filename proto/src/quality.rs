//! Which simulcast quality a client's tile needs: from its size in device pixels, or by
//! name (`low`, `medium`, `high`).

/// A simulcast layer by rank: 0 the lowest (q), 1 (h), 2 the highest (f).
pub type Quality = u8;

/// At most three simulcast layers per track (low, medium, high).
pub const MAX_LAYERS: usize = 3;

/// The quality a tile of `width` x `height` device pixels needs.
pub fn quality_for_tile(width: u32, height: u32) -> Quality {
    if width <= 320 && height <= 240 {
        0
    } else if width <= 640 && height <= 480 {
        1
    } else {
        2
    }
}

/// A quality by its name in the protocol.
pub fn quality_named(name: &str) -> Option<Quality> {
    match name {
        "low" => Some(0),
        "medium" => Some(1),
        "high" => Some(MAX_LAYERS as u8 - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_sizes_map_to_qualities() {
        let table = [
            ((320, 180), 0),
            ((320, 240), 0),
            ((321, 180), 1),
            ((640, 360), 1),
            ((640, 481), 2),
            ((1280, 720), 2),
            ((0, 0), 0),
        ];
        for ((w, h), q) in table {
            assert_eq!(quality_for_tile(w, h), q, "{w}x{h}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(["low", "medium", "high"].map(quality_named), [Some(0), Some(1), Some(2)]);
        assert_eq!(quality_named("ultra"), None);
    }
}
