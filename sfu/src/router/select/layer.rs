//! Simulcast layers: how a publisher's rids rank, and which layer to send when the
//! wanted one is not arriving (the quality a tile wants is the client's to say).

/// The quality a subscriber asks for a track: 0 low, 1 medium, 2 high.
pub use crate::api::{MAX_LAYERS, Quality};

/// The rank (0 lowest) of a rid: `q`, `h`, `f` by name, any other by its place in the
/// offer's rid list, lowest first.
pub fn rid_rank(rid: &str, offered: &[String]) -> u8 {
    match rid {
        "q" => 0,
        "h" => 1,
        "f" => 2,
        _ => offered.iter().position(|r| r == rid).unwrap_or(0).min(MAX_LAYERS - 1) as u8,
    }
}

/// The layer to send for `wanted` quality when `arriving` says which layers the
/// publisher sends now: the best one not above what is wanted, else the lowest above
/// it. None when nothing arrives.
pub fn choose_layer(wanted: Quality, arriving: [bool; MAX_LAYERS]) -> Option<u8> {
    let wanted = (wanted as usize).min(MAX_LAYERS - 1);
    (0..=wanted)
        .rev()
        .find(|l| arriving[*l])
        .or_else(|| (wanted + 1..MAX_LAYERS).find(|l| arriving[*l]))
        .map(|l| l as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_rank_by_name_then_by_offer_order() {
        assert_eq!([rid_rank("q", &[]), rid_rank("h", &[]), rid_rank("f", &[])], [0, 1, 2]);
        let offered = vec!["lo".to_string(), "mid".to_string(), "hi".to_string(), "extra".to_string()];
        assert_eq!(rid_rank("lo", &offered), 0);
        assert_eq!(rid_rank("hi", &offered), 2);
        assert_eq!(rid_rank("extra", &offered), 2, "clamped");
        assert_eq!(rid_rank("unknown", &offered), 0);
    }

    #[test]
    fn the_best_arriving_layer_not_above_the_wanted_one() {
        let all = [true, true, true];
        let table = [
            (0, all, Some(0)),
            (1, all, Some(1)),
            (2, all, Some(2)),
            (2, [true, true, false], Some(1)),
            (1, [true, false, true], Some(0)),
            (0, [false, false, true], Some(2)),
            (0, [false, true, true], Some(1)),
            (2, [false, false, false], None),
            (9, all, Some(2)),
        ];
        for (wanted, arriving, expected) in table {
            assert_eq!(choose_layer(wanted, arriving), expected, "wanted {wanted}, arriving {arriving:?}");
        }
    }
}
