//! Generic NACKs (RFC 4585 §6.2.1) in a plain compound RTCP packet.

/// The packets of a plain compound RTCP packet: (FMT or count, payload type, the whole
/// packet). A malformed one ends the walk; what came before it stands.
pub fn packets(compound: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    let mut rest = compound;
    std::iter::from_fn(move || {
        if rest.len() < 4 || rest[0] >> 6 != 2 {
            return None;
        }
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if len > rest.len() {
            return None;
        }
        let (packet, after) = rest.split_at(len);
        rest = after;
        Some((packet[0] & 0x1f, packet[1], packet))
    })
}

/// Every (media SSRC, lost sequence number) the packet's generic NACKs name. Malformed
/// parts end the walk; what was read before them stands.
pub fn lost_packets(compound: &[u8]) -> Vec<(u32, u16)> {
    let mut lost = Vec::new();
    for (fmt, pt, packet) in packets(compound) {
        // RTPFB, FMT 1: sender SSRC, media SSRC, then (PID, BLP) pairs.
        if pt == 205 && fmt == 1 && packet.len() >= 12 {
            let media = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            for fci in packet[12..].chunks_exact(4) {
                let pid = u16::from_be_bytes([fci[0], fci[1]]);
                let blp = u16::from_be_bytes([fci[2], fci[3]]);
                lost.push((media, pid));
                for bit in 0..16 {
                    if blp & (1 << bit) != 0 {
                        lost.push((media, pid.wrapping_add(bit + 1)));
                    }
                }
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack(media: u32, pairs: &[(u16, u16)]) -> Vec<u8> {
        let words = 2 + pairs.len();
        let mut p = vec![0x81, 205];
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&media.to_be_bytes());
        for (pid, blp) in pairs {
            p.extend_from_slice(&pid.to_be_bytes());
            p.extend_from_slice(&blp.to_be_bytes());
        }
        p
    }

    #[test]
    fn reads_pid_and_bitmask_after_a_receiver_report() {
        // An empty receiver report first, as in a compound packet.
        let mut compound = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        compound.extend(nack(42, &[(65_535, 0b101)]));
        assert_eq!(lost_packets(&compound), vec![(42, 65_535), (42, 0), (42, 2)]);
    }

    #[test]
    fn ignores_other_feedback_and_stops_at_a_bad_length() {
        let mut compound = vec![0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 42]; // PLI
        compound.extend(nack(7, &[(10, 0)]));
        compound.extend([0x81, 205, 0, 9]); // claims more than there is
        assert_eq!(lost_packets(&compound), vec![(7, 10)]);
        assert!(lost_packets(&[0x00, 205, 0, 0]).is_empty(), "wrong version");
    }
}
