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
        k.sgemm().packed_a_len(d, l) + k.sgemm().packed_a_len(t, d) + t * l + k.sgemm().scratch_len()
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

/// [`attention_spatial`] on the threads of `par`, split by (image, head) pairs (one thread
/// when there is a single pair); the same results for any thread count.
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
    let (d, l) = (s.d(), s.tokens);
    let len = s.n * s.channels * l;
    assert!(q.len() == len && kk.len() == len && v.len() == len && out.len() == len, "attention shapes");
    let threads = par.threads();
    let per = s.scratch_len(k).next_multiple_of(16);
    assert!(scratch.len() >= per * threads, "attention scratch too short");
    let pairs = s.n * s.heads;
    let (os, ss) = (crate::pool::SharedMut::new(out), crate::pool::SharedMut::new(scratch));
    par.run(&|t| {
        let (p0, p1) = crate::pool::split(pairs, threads, t, 1);
        if p0 == p1 {
            return;
        }
        // Pairs p0..p1 are consecutive [d, l] blocks: images of one head each.
        let sub = AttentionShape { n: p1 - p0, channels: d, heads: 1, ..*s };
        let (a, b) = (p0 * d * l, p1 * d * l);
        // SAFETY: pair ranges and scratch parts are disjoint between threads.
        let (o, sc) = unsafe { (os.part(a, b), ss.part(t * per, (t + 1) * per)) };
        attention_spatial(k, &sub, &q[a..b], &kk[a..b], &v[a..b], o, sc);
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
    let (d, l, tile) = (s.d(), s.tokens, s.tile());
    let len = s.n * s.channels * l;
    assert!(q.len() == len && kk.len() == len && v.len() == len && out.len() == len, "attention shapes");
    assert!(s.scale > 0.0, "attention scale must be positive (softmax of the scaled maximum)");
    let kern = k.sgemm();
    let (va, rest) = scratch.split_at_mut(kern.packed_a_len(d, l));
    let (qa, rest) = rest.split_at_mut(kern.packed_a_len(tile, d));
    let (scores, gemm_scratch) = rest.split_at_mut(tile * l);
    for img in 0..s.n {
        for h in 0..s.heads {
            let base = (img * s.channels + h * d) * l;
            let (qh, kh, vh) = (&q[base..base + d * l], &kk[base..base + d * l], &v[base..base + d * l]);
            pack_a(MatRef::row_major(vh, d, l), kern.mr, va);
            for i0 in (0..l).step_by(tile) {
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
                sgemm(
                    kern,
                    d,
                    va,
                    BSrc::Mat(MatRef::transposed(st, l, tq)),
                    MatMut { data: &mut out[base + i0..base + d * l], rs: l, cs: 1 },
                    None,
                    false,
                    gemm_scratch,
                );
            }
        }
    }
}
