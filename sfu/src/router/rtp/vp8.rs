//! VP8 payload descriptor rewriting (RFC 7741 section 4.2). When one outgoing stream
//! switches source (another simulcast layer, or another publisher on a reused slot), the
//! picture id and TL0PICIDX must keep counting from where the subscriber's decoder is,
//! or it takes the new keyframe's frames for old or missing ones.

/// Where the numbered fields sit in one packet's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Fields {
    /// Picture id, its byte offset, and whether it is the 15-bit form.
    pub picture_id: Option<(u16, usize, bool)>,
    /// TL0PICIDX and its byte offset.
    pub tl0picidx: Option<(u8, usize)>,
}

/// Parse the descriptor's numbered fields; None when the payload is too short for what
/// its flags announce.
pub fn parse(p: &[u8]) -> Option<Vp8Fields> {
    let first = *p.first()?;
    let mut fields = Vp8Fields { picture_id: None, tl0picidx: None };
    if first & 0x80 == 0 {
        return Some(fields);
    }
    let x = *p.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        let b = *p.get(i)?;
        if b & 0x80 != 0 {
            let lo = *p.get(i + 1)?;
            fields.picture_id = Some(((((b & 0x7f) as u16) << 8) | lo as u16, i, true));
            i += 2;
        } else {
            fields.picture_id = Some((b as u16, i, false));
            i += 1;
        }
    }
    if x & 0x40 != 0 {
        fields.tl0picidx = Some((*p.get(i)?, i));
    }
    Some(fields)
}

/// New values for a packet's numbered fields, where they differ from the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Renumber {
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
}

/// Keeps one outgoing VP8 stream's picture ids and TL0PICIDX continuous across source
/// switches. The first source passes through unchanged.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    source: Option<u32>,
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

impl Vp8Rewriter {
    /// The renumbering of one packet of source `ssrc`, None when it goes out as it came.
    /// Call it only for packets that are forwarded, in forwarding order; a switch should
    /// happen at a keyframe.
    pub fn rewrite(&mut self, ssrc: u32, payload: &[u8]) -> Option<Vp8Renumber> {
        let fields = parse(payload)?;
        if self.source != Some(ssrc) {
            let first = self.source.is_none();
            self.source = Some(ssrc);
            if !first {
                if let (Some((pid, _, _)), Some(last)) = (fields.picture_id, self.last_pid) {
                    self.pid_offset = last.wrapping_add(1).wrapping_sub(pid);
                }
                if let (Some((tl0, _)), Some(last)) = (fields.tl0picidx, self.last_tl0) {
                    self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
                }
            }
        }
        let mut out = Vp8Renumber::default();
        if let Some((pid, _, long)) = fields.picture_id {
            let new = pid.wrapping_add(self.pid_offset) & if long { 0x7fff } else { 0x7f };
            self.last_pid = Some(new);
            out.picture_id = (new != pid).then_some(new);
        }
        if let Some((tl0, _)) = fields.tl0picidx {
            let new = tl0.wrapping_add(self.tl0_offset);
            self.last_tl0 = Some(new);
            out.tl0picidx = (new != tl0).then_some(new);
        }
        (out != Vp8Renumber::default()).then_some(out)
    }
}

/// Writes a renumbering into a packet's descriptor in place (the payload as it goes out).
pub fn apply(payload: &mut [u8], renumber: Vp8Renumber) {
    let Some(fields) = parse(payload) else { return };
    if let (Some(new), Some((_, at, long))) = (renumber.picture_id, fields.picture_id) {
        if long {
            payload[at] = 0x80 | ((new >> 8) as u8 & 0x7f);
            payload[at + 1] = new as u8;
        } else {
            payload[at] = new as u8 & 0x7f;
        }
    }
    if let (Some(new), Some((_, at))) = (renumber.tl0picidx, fields.tl0picidx) {
        payload[at] = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with X, I (15-bit picture id) and L, then a VP8 header byte.
    fn packet(pid: u16, tl0: u8) -> Vec<u8> {
        vec![0x90, 0xc0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, 0x00]
    }

    fn fields(p: &[u8]) -> (u16, u8) {
        let f = parse(p).unwrap();
        (f.picture_id.unwrap().0, f.tl0picidx.unwrap().0)
    }

    #[test]
    fn parses_short_and_long_picture_ids() {
        assert_eq!(parse(&[0x10, 0x00]).unwrap(), Vp8Fields { picture_id: None, tl0picidx: None });
        let short = parse(&[0x90, 0x80, 0x05, 0x00]).unwrap();
        assert_eq!(short.picture_id, Some((5, 2, false)));
        let long = parse(&packet(0x1234, 9)).unwrap();
        assert_eq!(long.picture_id, Some((0x1234, 2, true)));
        assert_eq!(long.tl0picidx, Some((9, 4)));
        assert_eq!(parse(&[0x90, 0x80, 0x80]), None, "truncated 15-bit id");
        assert_eq!(parse(&[]), None);
    }

    /// Apply a renumbering to a copy, as the subscriber would see it.
    fn out(r: &mut Vp8Rewriter, ssrc: u32, p: &[u8]) -> Vec<u8> {
        let mut p = p.to_vec();
        if let Some(n) = r.rewrite(ssrc, &p) {
            let f = parse(&p).unwrap();
            if let (Some(pid), Some((_, at, long))) = (n.picture_id, f.picture_id) {
                if long {
                    p[at] = 0x80 | (pid >> 8) as u8;
                    p[at + 1] = pid as u8;
                } else {
                    p[at] = pid as u8;
                }
            }
            if let (Some(tl0), Some((_, at))) = (n.tl0picidx, f.tl0picidx) {
                p[at] = tl0;
            }
        }
        p
    }

    #[test]
    fn first_source_passes_through_unchanged() {
        let mut r = Vp8Rewriter::default();
        for pid in [100u16, 100, 101] {
            assert_eq!(r.rewrite(1, &packet(pid, 7)), None);
        }
    }

    #[test]
    fn a_switch_continues_the_numbering_and_wraps() {
        let mut r = Vp8Rewriter::default();
        out(&mut r, 1, &packet(0x7ffe, 255));
        out(&mut r, 1, &packet(0x7fff, 255));
        // The new source's keyframe follows on directly, wrapping both counters.
        assert_eq!(fields(&out(&mut r, 2, &packet(40, 3))), (0, 0));
        assert_eq!(fields(&out(&mut r, 2, &packet(41, 4))), (1, 1));
        // And back to the first source: still continuous.
        assert_eq!(fields(&out(&mut r, 1, &packet(0x0005, 10))), (2, 2));
    }

    #[test]
    fn short_picture_ids_wrap_at_seven_bits() {
        let mut r = Vp8Rewriter::default();
        out(&mut r, 1, &[0x90, 0x80, 0x7f, 0x00]);
        assert_eq!(out(&mut r, 2, &[0x90, 0x80, 0x10, 0x00])[2], 0x00);
    }

    #[test]
    fn apply_writes_the_renumbering_in_place() {
        let mut p = packet(0x1234, 7);
        apply(&mut p, Vp8Renumber { picture_id: Some(0x0042), tl0picidx: Some(9) });
        assert_eq!(fields(&p), (0x0042, 9));
        assert_eq!(p[0..2], [0x90, 0xc0]);
        let mut short = vec![0x90, 0x80, 0x05, 0x00];
        apply(&mut short, Vp8Renumber { picture_id: Some(0x7f), tl0picidx: Some(1) });
        assert_eq!(short, vec![0x90, 0x80, 0x7f, 0x00], "no TL0PICIDX field to write");
    }
}
