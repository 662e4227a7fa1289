//! RFC 2198 redundant audio (RED), as browsers send Opus in it: block headers, then the
//! redundant blocks (earlier packets, for a receiver that lost them), then the primary
//! block (this packet's own frame). The router passes RED through to a subscriber that
//! negotiated it and gives the primary alone to one that did not.

/// Where the primary block of a RED payload starts, or None when the payload is not RED
/// (headers or blocks run past its end).
///
/// Each redundant block has a 4-byte header: F=1, the block's payload type (7 bits), its
/// timestamp offset (14 bits) and its length (10 bits). The primary's header is one byte,
/// F=0 and its payload type. The blocks follow in header order, the primary last.
pub fn primary_start(payload: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut redundant = 0;
    loop {
        let first = *payload.get(at)?;
        if first & 0x80 == 0 {
            at += 1;
            break;
        }
        let header = payload.get(at..at + 4)?;
        redundant += usize::from(header[2] & 0x03) << 8 | usize::from(header[3]);
        at += 4;
    }
    let start = at + redundant;
    (start <= payload.len()).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload of `redundant` blocks (each with its timestamp offset) and a primary.
    fn red(redundant: &[(&[u8], u16)], primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (block, offset) in redundant {
            let len = block.len() as u16;
            out.push(0x80 | 111);
            out.push((offset >> 6) as u8);
            out.push(((offset & 0x3f) << 2) as u8 | (len >> 8) as u8);
            out.push(len as u8);
        }
        out.push(111);
        for (block, _) in redundant {
            out.extend_from_slice(block);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn the_primary_follows_every_redundant_block() {
        let p = red(&[(&[1, 2, 3], 960)], &[9, 9]);
        assert_eq!(&p[primary_start(&p).unwrap()..], &[9, 9]);
        let long = vec![7u8; 300];
        let p = red(&[(&long, 1920), (&[1], 960)], &[5, 6, 7]);
        assert_eq!(&p[primary_start(&p).unwrap()..], &[5, 6, 7], "lengths above 255 use the two top bits");
    }

    #[test]
    fn a_primary_alone_has_a_one_byte_header() {
        let p = red(&[], &[4, 4, 4]);
        assert_eq!(primary_start(&p), Some(1));
        assert_eq!(primary_start(&[111]), Some(1), "an empty primary is still RED");
    }

    #[test]
    fn what_runs_past_the_end_is_not_red() {
        let p = red(&[(&[1, 2, 3], 960)], &[9]);
        assert_eq!(primary_start(&p[..6]), None, "a redundant block cut short");
        assert_eq!(primary_start(&[0x80 | 111, 0, 0]), None, "a header cut short");
        assert_eq!(primary_start(&[]), None);
        assert_eq!(primary_start(&[0xff; 64]), None, "headers to the end and no primary");
    }
}
