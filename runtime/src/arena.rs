//! Borrowing one step's buffers from the arena: the output and the scratch mutably, every input
//! immutably, all without allocation and without `unsafe`. The planner guarantees that a step's
//! inputs never overlap its output or scratch; a violation is a planner bug and panics.

/// A place in the arena, in floats. Offsets are multiples of 16 (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) off: usize,
    pub(crate) len: usize,
}

impl Slot {
    pub(crate) fn end(&self) -> usize {
        self.off + self.len
    }
}

/// Read access to the arena outside a step's mutable slots.
pub(crate) struct Reader<'a> {
    /// `(start offset, slice)` of the read-only pieces, in offset order.
    pieces: [(usize, &'a [f32]); 3],
}

impl<'a> Reader<'a> {
    /// The floats of `s`.
    pub(crate) fn get(&self, s: Slot) -> &'a [f32] {
        for &(start, piece) in &self.pieces {
            if s.off >= start && s.end() <= start + piece.len() {
                return &piece[s.off - start..s.end() - start];
            }
        }
        panic!("planner bug: an input overlaps the output or scratch of its step");
    }
}

/// Splits `arena` into the mutable `out` and `scratch` slots and a reader for the rest.
pub(crate) fn split(arena: &mut [f32], out: Slot, scratch: Slot) -> (Reader<'_>, &mut [f32], &mut [f32]) {
    // Order the two mutable slots by offset (an empty scratch sits at the end of `out`).
    let scratch = if scratch.len == 0 { Slot { off: out.end(), len: 0 } } else { scratch };
    let swap = scratch.off < out.off;
    let (lo, hi) = if swap { (scratch, out) } else { (out, scratch) };
    assert!(lo.end() <= hi.off, "planner bug: output and scratch overlap");
    let (p0, rest) = arena.split_at_mut(lo.off);
    let (m0, rest) = rest.split_at_mut(lo.len);
    let (p1, rest) = rest.split_at_mut(hi.off - lo.end());
    let (m1, p2) = rest.split_at_mut(hi.len);
    let reader = Reader { pieces: [(0, &*p0), (lo.end(), &*p1), (hi.end(), &*p2)] };
    if swap { (reader, m1, m0) } else { (reader, m0, m1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_disjoint_views() {
        let mut a: Vec<f32> = (0..100).map(|i| i as f32).collect();
        for (out, scratch) in [
            (Slot { off: 16, len: 16 }, Slot { off: 64, len: 10 }),
            (Slot { off: 64, len: 16 }, Slot { off: 0, len: 16 }),
            (Slot { off: 32, len: 16 }, Slot { off: 0, len: 0 }),
        ] {
            let (r, o, s) = split(&mut a, out, scratch);
            assert_eq!((o.len(), s.len()), (out.len, scratch.len));
            assert_eq!(o[0], out.off as f32);
            let other =
                if out.off == 0 || scratch.off == 0 { Slot { off: 48, len: 8 } } else { Slot { off: 0, len: 8 } };
            assert_eq!(r.get(other)[0], other.off as f32);
            o[0] = -1.0;
        }
    }

    #[test]
    #[should_panic(expected = "planner bug")]
    fn overlapping_input_is_caught() {
        let mut a = vec![0f32; 64];
        let (r, _, _) = split(&mut a, Slot { off: 16, len: 16 }, Slot::default());
        r.get(Slot { off: 8, len: 16 });
    }
}
