//! Congestion feedback in a plain compound RTCP packet: transport-wide feedback
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1) and REMB
//! (draft-alvestrand-rmcat-remb-03), for the fast path's own estimate (`estimate.rs`).

/// One transport-wide feedback report: for each sequence number from `base_seq` on, when
/// it arrived (microseconds on the receiver's clock) or `None` when it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub base_seq: u16,
    /// The receiver's count of its reports (a repeated count is a duplicate report).
    pub count: u8,
    pub arrivals: Vec<Option<i64>>,
}

/// The most statuses one report may carry here: a receiver reports every 50-100 ms, so
/// this is far beyond any real report, and bounds the work a forged one can cause.
const MAX_STATUSES: usize = 4096;

/// Statuses read from one datagram at most, all its reports together.
const MAX_STATUSES_PER_DATAGRAM: usize = 8192;

/// Every transport-wide report and the last REMB bitrate in the packet. Malformed parts
/// end the walk; what was read before them stands.
pub fn read(compound: &[u8], reports: &mut Vec<Report>, remb: &mut Option<u64>) {
    let mut budget = MAX_STATUSES_PER_DATAGRAM;
    for (fmt, pt, packet) in super::nack::packets(compound) {
        match (pt, fmt) {
            (205, 15) => match transport_report(packet, budget) {
                Some(report) => {
                    budget -= report.arrivals.len();
                    reports.push(report);
                }
                None => break,
            },
            (206, 15) if packet.len() >= 20 && &packet[12..16] == b"REMB" => {
                let exp = packet[17] >> 2;
                let mantissa =
                    u64::from(packet[17] & 3) << 16 | u64::from(packet[18]) << 8 | u64::from(packet[19]);
                *remb = Some(
                    mantissa.checked_shl(exp.into()).filter(|b| b >> exp == mantissa).unwrap_or(u64::MAX),
                );
            }
            _ => {}
        }
    }
}

/// One report: header, sender and media SSRC, then base sequence number, status count,
/// reference time (24 bits, 64 ms units), feedback count, packet chunks, receive deltas.
fn transport_report(packet: &[u8], budget: usize) -> Option<Report> {
    let padded = packet[0] & 0x20 != 0;
    let body_end =
        if padded { packet.len().checked_sub(usize::from(*packet.last()?))? } else { packet.len() };
    let packet = packet.get(..body_end)?;
    if packet.len() < 20 {
        return None;
    }
    let base_seq = u16::from_be_bytes([packet[12], packet[13]]);
    let statuses = usize::from(u16::from_be_bytes([packet[14], packet[15]]));
    if statuses > MAX_STATUSES.min(budget) {
        return None;
    }
    // 24-bit reference time: it wraps after 12.4 days of the receiver's clock (the
    // estimate starts a new time line then).
    let reference = i64::from(u32::from_be_bytes([0, packet[16], packet[17], packet[18]]));
    let count = packet[19];
    let mut symbols: Vec<u8> = Vec::with_capacity(statuses);
    let mut at = 20;
    while symbols.len() < statuses {
        let chunk = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        at += 2;
        let left = statuses - symbols.len();
        if chunk & 0x8000 == 0 {
            // Run length: a status and how many times it repeats.
            let symbol = ((chunk >> 13) & 3) as u8;
            let run = usize::from(chunk & 0x1fff).min(left);
            symbols.extend(std::iter::repeat_n(symbol, run));
        } else if chunk & 0x4000 == 0 {
            // Fourteen one-bit symbols: received with a small delta, or not.
            symbols.extend((0..14).rev().map(|bit| ((chunk >> bit) & 1) as u8).take(left));
        } else {
            // Seven two-bit symbols.
            symbols.extend((0..7).rev().map(|i| ((chunk >> (2 * i)) & 3) as u8).take(left));
        }
    }
    let mut time_us = reference * 64_000;
    let mut arrivals = Vec::with_capacity(statuses);
    for symbol in symbols {
        let delta = match symbol {
            1 => {
                let d = i64::from(*packet.get(at)?);
                at += 1;
                Some(d)
            }
            2 => {
                let d = i64::from(i16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
                at += 2;
                Some(d)
            }
            _ => None,
        };
        arrivals.push(delta.map(|d| {
            time_us += d * 250;
            time_us
        }));
    }
    Some(Report { base_seq, count, arrivals })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transport-wide report as a receiver writes one: `arrivals` in 250 us units
    /// after the reference time, for the sequence numbers from `base` on.
    pub(crate) fn report(base: u16, count: u8, reference_64ms: u32, arrivals: &[Option<i64>]) -> Vec<u8> {
        let mut p = vec![0x8f, 205, 0, 0];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&base.to_be_bytes());
        p.extend_from_slice(&(arrivals.len() as u16).to_be_bytes());
        p.extend_from_slice(&reference_64ms.to_be_bytes()[1..]);
        p.push(count);
        let mut last = 0;
        let mut symbols = Vec::new();
        let mut deltas = Vec::new();
        for a in arrivals {
            match a {
                None => symbols.push(0u16),
                Some(t) => {
                    let d = t - last;
                    last = *t;
                    if (0..=255).contains(&d) {
                        symbols.push(1);
                        deltas.push(d as u8);
                    } else {
                        symbols.push(2);
                        deltas.extend_from_slice(&(d as i16).to_be_bytes());
                    }
                }
            }
        }
        // Two-bit vectors of seven.
        for group in symbols.chunks(7) {
            let mut chunk = 0xc000u16;
            for (i, s) in group.iter().enumerate() {
                chunk |= s << (2 * (6 - i));
            }
            p.extend_from_slice(&chunk.to_be_bytes());
        }
        p.extend_from_slice(&deltas);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    #[test]
    fn reads_two_bit_vectors_and_large_deltas() {
        let arrivals = [Some(4), None, Some(10), Some(1000), Some(990), None, None, Some(1001)];
        let mut compound = vec![0x80, 201, 0, 1, 0, 0, 0, 1]; // an empty receiver report first
        compound.extend(report(65_534, 3, 2, &arrivals));
        let (mut reports, mut remb) = (Vec::new(), None);
        read(&compound, &mut reports, &mut remb);
        let base = 2 * 64_000;
        let want: Vec<Option<i64>> = arrivals.iter().map(|a| a.map(|t| base + t * 250)).collect();
        assert_eq!(reports, vec![Report { base_seq: 65_534, count: 3, arrivals: want }]);
        assert_eq!(remb, None);
    }

    #[test]
    fn reads_run_lengths_and_one_bit_vectors() {
        let mut p = vec![0x8f, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 10, 0, 20, 0, 0, 0, 9];
        p.extend_from_slice(&(0x2000u16 | 4).to_be_bytes()); // run: 4 received, small delta
        p.extend_from_slice(&2u16.to_be_bytes()); // run: 2 not received
        p.extend_from_slice(&(0x8000u16 | 0b10_0000_0000_0001).to_be_bytes()); // 14 one-bit
        p.extend_from_slice(&[1, 1, 1, 1, 2, 3]);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        let (mut reports, mut remb) = (Vec::new(), None);
        read(&p, &mut reports, &mut remb);
        let got = &reports[0].arrivals;
        assert_eq!(got.len(), 20);
        assert_eq!(&got[..4], &[Some(250), Some(500), Some(750), Some(1000)]);
        assert_eq!(&got[4..7], &[None, None, Some(1500)]);
        assert_eq!(got[19], Some(2250));
        assert_eq!(got.iter().flatten().count(), 6);
    }

    #[test]
    fn one_datagram_is_read_for_so_many_statuses_at_most() {
        let lost = vec![None; 4000];
        let mut compound = Vec::new();
        for count in 0..3 {
            compound.extend(report(count * 4000, count as u8, 0, &lost));
        }
        let (mut reports, mut remb) = (Vec::new(), None);
        read(&compound, &mut reports, &mut remb);
        assert_eq!(reports.len(), 2, "8,192 statuses a datagram");
    }

    #[test]
    fn reads_remb_and_stops_at_what_is_cut_short() {
        // REMB: 1 SSRC, exponent 3, mantissa 125,000: 1 Mbit/s.
        let mantissa = 125_000u32;
        let mut p = vec![0x8f, 206, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(b"REMB");
        p.extend_from_slice(&[1, (3 << 2) | (mantissa >> 16) as u8, (mantissa >> 8) as u8, mantissa as u8]);
        p.extend_from_slice(&7u32.to_be_bytes());
        let mut cut = report(1, 0, 0, &[Some(1), Some(2)]);
        cut.truncate(cut.len() - 4);
        let words = (cut.len() / 4 - 1) as u16;
        cut[2..4].copy_from_slice(&words.to_be_bytes());
        p.extend(cut);
        let (mut reports, mut remb) = (Vec::new(), None);
        read(&p, &mut reports, &mut remb);
        assert_eq!(remb, Some(1_000_000));
        assert!(reports.is_empty(), "deltas missing: not read");
        let mut huge = report(1, 0, 0, &[Some(1)]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        read(&huge, &mut reports, &mut remb);
        assert!(reports.is_empty(), "more statuses than any real report");
    }
}
