//! f32 scaled dot-product attention over the positions of NCHW feature maps, tiled over
//! queries so that only `tile × keys` scores exist at a time.

use crate::Kernels;
use crate::gemm::{BSrc, MatMut, MatRef, pack_a, sgemm};

/// Shape of a spatial attention: q, k, v and the output are `[n, channels, tokens]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Images.
    pub n: usize,
    /// Channels of q, k, v.
    pub channels: usize,
    /// Heads; head `h` uses channels `[h·d, (h+1)·d)`, `d = channels/heads`.
    pub heads: usize,
    /// Query positions.
    pub tokens: usize,
    /// Logit scale.
    pub scale: f32,
}

/// Query rows handled at a time.
const QUERY_TILE: usize = 64;

impl AttentionShape {
    fn d(&self) -> usize {
        self.channels / self.heads
    }

    fn tile(&self) -> usize {
        self.tokens.min(QUERY_TILE)
    }

    /// Scratch floats [`attention_spatial`] needs.
    pub fn scratch_len(&self, k: &Kernels) -> usize {
        let (d, l, t) = (self.d(), self.tokens, self.tile());
        k.sgemm().packed_a_len(d, l) + k.sgemm().packed_a_len(t, d) + t * l + k.sgemm().scratch_len() + d * t
    }
}

crate::simd::multiversion! {
    /// Softmax of each row of `s` (`rows × cols`) after scaling by `scale`, computed stably.
    pub fn softmax_rows(s: &mut [f32], cols: usize, scale: f32) => softmax_rows_generic
}

#[inline(always)]
fn softmax_rows_generic(s: &mut [f32], cols: usize, scale: f32) {
    for row in s.chunks_exact_mut(cols) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.iter_mut().for_each(|v| *v = super::act::exp((*v - max) * scale));
        let inv = 1.0 / super::norm::sum(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

impl AttentionShape {
    /// Scratch floats [`attention_spatial_par`] needs on `threads` threads.
    pub fn scratch_len_threads(&self, k: &Kernels, threads: usize) -> usize {
        self.scratch_len(k).next_multiple_of(16) * threads.max(1)
    }
}

/// [`attention_spatial`] on the threads of `par`, split by (image, head) pairs, or by query
/// tiles when there are fewer pairs than threads (batch 1: each thread then packs the pair's v
/// itself); the same results for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn attention_spatial_par(
    k: &Kernels,
    s: &AttentionShape,
    q: &[f32],
    kk: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    par: &dyn crate::pool::Parallel,
) {
    let len = s.n * s.channels * s.tokens;
    assert!(q.len() == len && kk.len() == len && v.len() == len && out.len() == len, "attention shapes");
    let threads = par.threads();
    let per = s.scratch_len(k).next_multiple_of(16);
    assert!(scratch.len() >= per * threads, "attention scratch too short");
    let (pairs, tiles) = (s.n * s.heads, s.tokens.div_ceil(s.tile()));
    let (os, ss) = (crate::pool::SharedMut::new(out), crate::pool::SharedMut::new(scratch));
    par.run(&|t| {
        let ((p0, p1), (t0, t1)) = if pairs >= threads {
            (crate::pool::split(pairs, threads, t, 1), (0, tiles))
        } else {
            ((0, pairs), crate::pool::split(tiles, threads, t, 1))
        };
        if p0 == p1 || t0 == t1 {
            return;
        }
        // SAFETY: scratch parts are disjoint between threads; `attention_part` writes only its
        // pairs' query tiles of `out`, disjoint between threads.
        let sc = unsafe { ss.part(t * per, (t + 1) * per) };
        attention_part(k, s, q, kk, v, &os, sc, (p0, p1), (t0, t1));
    });
}

/// `out = v · softmax(scale · qᵀk)ᵀ` per image and head (softmax over keys).
pub fn attention_spatial(
    k: &Kernels,
    s: &AttentionShape,
    q: &[f32],
    kk: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let len = s.n * s.channels * s.tokens;
    assert!(q.len() == len && kk.len() == len && v.len() == len && out.len() == len, "attention shapes");
    assert!(scratch.len() >= s.scratch_len(k), "attention scratch too short");
    let (pairs, tiles) = (s.n * s.heads, s.tokens.div_ceil(s.tile()));
    attention_part(k, s, q, kk, v, &crate::pool::SharedMut::new(out), scratch, (0, pairs), (0, tiles));
}

/// Query tiles `t0..t1` of the (image, head) pairs `p0..p1` (consecutive `[d, l]` blocks of the
/// tensors). A thread that owns all of a pair's tiles writes its output in place; one that owns
/// some goes through a `d × tile` buffer and copies its columns out (the same sums either way).
#[allow(clippy::too_many_arguments)]
fn attention_part(
    k: &Kernels,
    s: &AttentionShape,
    q: &[f32],
    kk: &[f32],
    v: &[f32],
    out: &crate::pool::SharedMut<f32>,
    scratch: &mut [f32],
    (p0, p1): (usize, usize),
    (t0, t1): (usize, usize),
) {
    let (d, l, tile) = (s.d(), s.tokens, s.tile());
    assert!(s.scale > 0.0, "attention scale must be positive (softmax of the scaled maximum)");
    let kern = k.sgemm();
    let (va, rest) = scratch.split_at_mut(kern.packed_a_len(d, l));
    let (qa, rest) = rest.split_at_mut(kern.packed_a_len(tile, d));
    let (scores, rest) = rest.split_at_mut(tile * l);
    let (obuf, gemm_scratch) = rest.split_at_mut(d * tile);
    let whole = t0 == 0 && t1 == l.div_ceil(tile);
    for pair in p0..p1 {
        let base = pair * d * l;
        let (qh, kh, vh) = (&q[base..base + d * l], &kk[base..base + d * l], &v[base..base + d * l]);
        pack_a(MatRef::row_major(vh, d, l), kern.mr, va);
        for i0 in (t0 * tile..(t1 * tile).min(l)).step_by(tile) {
            let tq = (l - i0).min(tile);
            let qa = &mut qa[..kern.packed_a_len(tq, d)];
            let st = &mut scores[..tq * l];
            // qᵀ for queries i0..i0+tq: element (i, c) = q[c·l + i0 + i].
            pack_a(MatRef { data: &qh[i0..], rows: tq, cols: d, rs: 1, cs: l }, kern.mr, qa);
            sgemm(
                kern,
                tq,
                qa,
                BSrc::Mat(MatRef::row_major(kh, d, l)),
                MatMut { data: st, rs: l, cs: 1 },
                None,
                false,
                gemm_scratch,
            );
            softmax_rows(k, st, l, s.scale);
            // out[:, i0..i0+tq] = v · Pᵀ.
            let pt = BSrc::Mat(MatRef::transposed(st, l, tq));
            if whole {
                // SAFETY: this thread owns every query tile of the pair: the block is its alone.
                let o = unsafe { out.part(base, base + d * l) };
                let c = MatMut { data: &mut o[i0..], rs: l, cs: 1 };
                sgemm(kern, d, va, pt, c, None, false, gemm_scratch);
            } else {
                let c = MatMut { data: &mut obuf[..d * tq], rs: tq, cs: 1 };
                sgemm(kern, d, va, pt, c, None, false, gemm_scratch);
                for ch in 0..d {
                    // SAFETY: columns i0..i0+tq of the pair are this thread's alone.
                    let o = unsafe { out.part(base + ch * l + i0, base + ch * l + i0 + tq) };
                    o.copy_from_slice(&obuf[ch * tq..(ch + 1) * tq]);
                }
            }
        }
    }
}
