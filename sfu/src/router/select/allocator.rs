//! The bandwidth allocator: given one subscriber's bandwidth estimate and the video
//! tracks it shows, which layer each is sent, or which are paused.
//!
//! Every shown track first gets its lowest layer, most important first; what does not
//! fit is paused, least important first (so a screen share and the active speaker are
//! paused last). What is left raises tracks towards the layer their tile wants, most
//! important first. Audio is never allocated here: it always goes.
//!
//! Against oscillation, an upgrade is only taken when it would also fit in
//! `UPGRADE_HEADROOM` of the estimate; a downgrade is taken at once.

/// An upgrade must fit in this share of the estimate.
pub const UPGRADE_HEADROOM: f64 = 0.85;

/// Importance of a shown track: higher is kept longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Normal = 0,
    Speaker = 1,
    Screen = 2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllocTrack {
    pub priority: Priority,
    /// The best layer the tile wants that arrives (None: nothing arrives).
    pub wanted: Option<u8>,
    /// Bits per second of each layer; 0 for a layer that does not arrive.
    pub layer_bps: [u64; 3],
}

/// Layer per track (None: paused), for an estimate of `budget_bps`. `current` is the
/// previous allocation, in the same order as `tracks`.
pub fn allocate(budget_bps: u64, tracks: &[AllocTrack], current: &[Option<u8>]) -> Vec<Option<u8>> {
    let full = greedy(budget_bps, tracks);
    let cautious = greedy((budget_bps as f64 * UPGRADE_HEADROOM) as u64, tracks);
    full.iter()
        .enumerate()
        .map(|(i, &layer)| {
            let was = current.get(i).copied().flatten();
            if rank(layer) > rank(was) {
                // Up (or resumed): only as far as the cautious budget would go too.
                let up = rank(cautious[i]).max(rank(was));
                let capped = up.min(rank(layer));
                unrank(capped)
            } else {
                layer
            }
        })
        .collect()
}

/// None below layer 0.
fn rank(layer: Option<u8>) -> i16 {
    layer.map_or(-1, |l| l as i16)
}

fn unrank(r: i16) -> Option<u8> {
    (r >= 0).then_some(r as u8)
}

fn greedy(budget: u64, tracks: &[AllocTrack]) -> Vec<Option<u8>> {
    let mut order: Vec<usize> = (0..tracks.len()).collect();
    // Most important first; among equals, the order the client listed them.
    order.sort_by_key(|&i| (std::cmp::Reverse(tracks[i].priority), i));
    let lowest = |t: &AllocTrack| -> Option<u8> {
        let wanted = t.wanted?;
        (0..=wanted).find(|l| t.layer_bps[*l as usize] > 0).or(Some(wanted))
    };
    let mut out: Vec<Option<u8>> = vec![None; tracks.len()];
    let mut left = budget;
    for &i in &order {
        let t = &tracks[i];
        let Some(l) = lowest(t) else { continue };
        let cost = t.layer_bps[l as usize];
        if cost <= left {
            left -= cost;
            out[i] = Some(l);
        }
    }
    for &i in &order {
        let t = &tracks[i];
        let (Some(mut l), Some(wanted)) = (out[i], t.wanted) else { continue };
        while l < wanted {
            let next = l + 1;
            let extra = t.layer_bps[next as usize].saturating_sub(t.layer_bps[l as usize]);
            if t.layer_bps[next as usize] == 0 {
                // That layer does not arrive; look at the one above.
                if next < wanted {
                    l = next;
                    continue;
                }
                break;
            }
            if extra > left {
                break;
            }
            left -= extra;
            l = next;
        }
        // Never settle on a layer that does not arrive.
        while t.layer_bps[l as usize] == 0 && l > 0 && out[i].is_some_and(|o| o < l) {
            l -= 1;
        }
        out[i] = Some(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    const SIMULCAST: [u64; 3] = [150_000, 500_000, 1_700_000];

    fn cam(priority: Priority, wanted: u8) -> AllocTrack {
        AllocTrack { priority, wanted: Some(wanted), layer_bps: SIMULCAST }
    }

    #[test]
    fn table() {
        // (estimate, tracks, expected layers)
        let cases: Vec<(u64, Vec<AllocTrack>, Vec<Option<u8>>)> = vec![
            // Plenty: everyone gets what the tile wants.
            (
                10_000_000,
                vec![cam(Speaker, 1), cam(Normal, 0), cam(Normal, 0)],
                vec![Some(1), Some(0), Some(0)],
            ),
            // A large tile wanted but only 1 Mbps: the speaker steps down to h.
            (1_000_000, vec![cam(Speaker, 2), cam(Normal, 0)], vec![Some(1), Some(0)]),
            // 400 kbps for three q tiles and a speaker at h: the speaker keeps q, one
            // normal tile keeps q, the last (least important, listed last) is paused.
            (400_000, vec![cam(Speaker, 1), cam(Normal, 0), cam(Normal, 0)], vec![Some(0), Some(0), None]),
            // The screen share outranks the speaker.
            (
                1_900_000,
                vec![
                    cam(Speaker, 1),
                    AllocTrack { priority: Screen, wanted: Some(0), layer_bps: [1_700_000, 0, 0] },
                ],
                vec![Some(0), Some(0)],
            ),
            (
                1_000_000,
                vec![
                    cam(Speaker, 1),
                    AllocTrack { priority: Screen, wanted: Some(0), layer_bps: [1_700_000, 0, 0] },
                ],
                vec![Some(1), None],
            ),
            // Nothing arrives for a track: it is not allocated.
            (10_000_000, vec![AllocTrack { priority: Normal, wanted: None, layer_bps: [0; 3] }], vec![None]),
            // A missing middle layer is skipped over.
            (
                5_000_000,
                vec![AllocTrack { priority: Speaker, wanted: Some(2), layer_bps: [150_000, 0, 1_700_000] }],
                vec![Some(2)],
            ),
            // Nothing fits at all: all paused, never a negative budget.
            (100_000, vec![cam(Speaker, 0), cam(Normal, 0)], vec![None, None]),
        ];
        for (budget, tracks, expected) in cases {
            assert_eq!(greedy(budget, &tracks), expected, "budget {budget}, tracks {tracks:?}");
            let fresh = allocate(budget, &tracks, &[]);
            let total: u64 =
                fresh.iter().zip(&tracks).filter_map(|(l, t)| l.map(|l| t.layer_bps[l as usize])).sum();
            assert!(total <= budget, "allocation {fresh:?} costs {total} over {budget}");
        }
    }

    #[test]
    fn an_estimate_wobbling_at_a_threshold_does_not_oscillate() {
        // h for the speaker costs 500k + 150k for the other: 650k. Around 660-700k the
        // upgrade from q would not fit in 85%, so once down it stays down.
        let tracks = vec![cam(Speaker, 1), cam(Normal, 0)];
        let mut current = allocate(2_000_000, &tracks, &[]);
        assert_eq!(current, vec![Some(1), Some(0)]);
        current = allocate(600_000, &tracks, &current);
        assert_eq!(current, vec![Some(0), Some(0)], "down at once");
        for budget in [660_000, 700_000, 640_000, 690_000, 710_000] {
            current = allocate(budget, &tracks, &current);
            assert_eq!(current, vec![Some(0), Some(0)], "no flapping at {budget}");
        }
        current = allocate(800_000, &tracks, &current);
        assert_eq!(current, vec![Some(1), Some(0)], "recovers with headroom (650k <= 85% of 800k)");
    }

    #[test]
    fn a_paused_track_resumes_when_the_estimate_recovers() {
        let tracks = vec![cam(Speaker, 0), cam(Normal, 0), cam(Normal, 0)];
        // A first allocation is a resume too: it keeps the headroom.
        let mut current = allocate(320_000, &tracks, &[]);
        assert_eq!(current, vec![Some(0), None, None]);
        current = allocate(400_000, &tracks, &current);
        assert_eq!(current, vec![Some(0), Some(0), None]);
        current = allocate(480_000, &tracks, &current);
        assert_eq!(current, vec![Some(0), Some(0), None], "450k does not fit in 85% of 480k");
        current = allocate(540_000, &tracks, &current);
        assert_eq!(current, vec![Some(0), Some(0), Some(0)]);
    }
}
