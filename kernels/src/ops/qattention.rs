//! Integer attention (METHOD.md §2.6, §4.3): q, k, v and the softmax probabilities quantized
//! with their own static quantizers, `QKᵀ` and `P·V` as exact u8×i8 products, the softmax in
//! f32 in between.
//!
//! Per image and head, queries are processed in tiles of `TQ`, keys in tiles of `TK`: only a
//! `TQ × TK` block of scores exists at a time. When the keys do not fit one tile, a first pass
//! streams the key tiles to find each query's maximum logit and softmax denominator (online
//! rescaling), and a second pass recomputes the logits tile by tile, quantizes the final
//! probabilities and accumulates `P·V` exactly in i32. Every float reduction has a fixed order
//! (16-lane sums), so all kernel tiers produce bit-identical results.
//!
//! Zero-points: the GEMMs take `q − 128` and `v − 128` as their signed operands and apply the
//! row corrections themselves; the column corrections (`(128 − zq)·Σ_c (k − zk)` for the scores,
//! `(128 − zv)·Σ_j (p − zp)` for the output) come from sums computed alongside.

use crate::Kernels;
use crate::gemm::MatMut;
use crate::qgemm::{PackedQRef, QEpilogue, pack_q_u8, packed_q_len, qgemm, qgemm_scratch_len};

use super::act::exp;
use super::quant::{ActQ, quantize};
use crate::pool::{Parallel, Serial, SharedMut, split};

/// Query rows per tile.
const TQ: usize = 48;

/// Shape and quantizers of one integer attention over `[n, channels, tokens]` tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QAttention {
    /// Images.
    pub n: usize,
    /// Channels of q, k, v.
    pub channels: usize,
    /// Heads (channels `[h·d, (h+1)·d)`, `d = channels/heads`).
    pub heads: usize,
    /// Tokens (query and key positions).
    pub tokens: usize,
    /// Logit scale.
    pub scale: f32,
    /// Whether q and k are multiplied by `√scale` before they are quantized (LDM legacy
    /// attention) instead of scaling the product.
    pub scale_before: bool,
    /// Quantizer of q.
    pub q: ActQ,
    /// Quantizer of k.
    pub k: ActQ,
    /// Quantizer of v.
    pub v: ActQ,
    /// Quantizer of the probabilities.
    pub p: ActQ,
    /// Keys per tile (a multiple of 4).
    pub key_tile: usize,
}

struct Sizes {
    d: usize,
    dg: usize,
    tk: usize,
}

impl QAttention {
    fn sizes(&self) -> Sizes {
        let d = self.channels / self.heads;
        let tk = self.key_tile.min(self.tokens.next_multiple_of(4)).max(4);
        Sizes { d, dg: d.div_ceil(4), tk }
    }

    /// Scratch floats [`qattention`] needs.
    pub fn scratch_len(&self, k: &Kernels) -> usize {
        let kern = k.qgemm();
        let Sizes { d, dg, tk, .. } = self.sizes();
        let l = self.tokens;
        let tiles = l.div_ceil(tk);
        let words = |bytes: usize| bytes.div_ceil(4);
        (words(dg * l * 4) // k, channel-interleaved
            + l // column sums of k
            + 2 * words(d * l) // q and v quantized, row-major
            + words(packed_q_len(kern, TQ, dg)) + TQ // packed q tile and its row sums
            + tiles * words(packed_q_len(kern, d, tk / 4)) + tiles * d // packed v per key tile and sums
            + TQ * tk // scores
            + words((tk / 4) * TQ * 4) // quantized probabilities
            + words(tk) // one row of them
            + 4 * TQ // max, sum, column sums of P, spare
            + d * TQ // P·V accumulator
            + qgemm_scratch_len(kern, dg.max(tk / 4)))
        .next_multiple_of(16)
    }

    /// Scratch floats [`qattention_par`] needs on `threads` threads.
    pub fn scratch_len_threads(&self, k: &Kernels, threads: usize) -> usize {
        self.scratch_len(k) * threads.max(1)
    }
}

/// Splits `n` floats off the front of `s`.
fn take<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (a, b) = std::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// `out[c, i] = Δp·Δv·Σ_j (P̂[i, j] − zp)·(v̂[c, j] − zv)` with `P̂ = quant(softmax_j(logits))`
/// and `logits = σ·Σ_c (q̂[c, i] − zq)·(k̂[c, j] − zk)`, per image and head; q, k, v, out are
/// f32 `[n, channels, tokens]`.
pub fn qattention(kx: &Kernels, a: &QAttention, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], scratch: &mut [f32]) {
    qattention_par(kx, a, q, k, v, out, scratch, &Serial);
}

/// [`qattention`] on the threads of `par` (scratch: [`QAttention::scratch_len_threads`]). The
/// images × heads are split between the threads, or, when there are fewer of them than threads,
/// the query tiles of each head (every thread then quantizes that head's k and v itself). The
/// result does not depend on the split.
#[allow(clippy::too_many_arguments)]
pub fn qattention_par(
    kx: &Kernels,
    a: &QAttention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    par: &dyn Parallel,
) {
    let Sizes { tk, .. } = a.sizes();
    let len = a.n * a.channels * a.tokens;
    assert!(a.channels.is_multiple_of(a.heads) && tk.is_multiple_of(4), "attention shape");
    assert!(q.len() == len && k.len() == len && v.len() == len && out.len() == len, "attention buffers");
    let threads = par.threads();
    let per = a.scratch_len(kx);
    assert!(scratch.len() >= per * threads, "attention scratch too short");
    let heads = a.n * a.heads;
    let qtiles = a.tokens.div_ceil(TQ);
    let out = SharedMut::new(out);
    let scratch = SharedMut::new(scratch);
    par.run(&|t| {
        // SAFETY: thread t alone uses scratch part t.
        let scratch = unsafe { scratch.part(t * per, (t + 1) * per) };
        if heads >= threads {
            let (h0, h1) = split(heads, threads, t, 1);
            for hh in h0..h1 {
                head(kx, kx, a, hh / a.heads, hh % a.heads, 0, qtiles, q, k, v, &out, scratch);
            }
        } else {
            let (t0, t1) = split(qtiles, threads, t, 1);
            if t0 < t1 {
                for hh in 0..heads {
                    head(kx, kx, a, hh / a.heads, hh % a.heads, t0, t1, q, k, v, &out, scratch);
                }
            }
        }
    });
}

crate::simd::multiversion! {
    /// Query tiles `t0..t1` of head `h` of image `img`.
    fn head(kx: &Kernels, a: &QAttention, img: usize, h: usize, t0: usize, t1: usize, q: &[f32], k: &[f32], v: &[f32], out: &SharedMut<f32>, scratch: &mut [f32]) => head_generic
}

/// `y[j] = quantize(s·x[j])` for a whole row (vectorised by the caller's tier).
#[inline(always)]
fn quantize_row(x: &[f32], s: f32, aq: &ActQ, y: &mut [u8]) {
    let (zp, qmax) = (f32::from(aq.zero_point), aq.qmax());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = quantize(s * v, aq.delta, zp, qmax);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head_generic(
    kx: &Kernels,
    a: &QAttention,
    img: usize,
    h: usize,
    t0: usize,
    t1: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &SharedMut<f32>,
    scratch: &mut [f32],
) {
    let kern = kx.qgemm();
    let Sizes { d, dg, tk } = a.sizes();
    let l = a.tokens;
    let tiles = l.div_ceil(tk);
    let pre = if a.scale_before { a.scale.sqrt() } else { 1.0 };
    let sigma = if a.scale_before { a.q.delta * a.k.delta } else { a.scale * a.q.delta * a.k.delta };
    let (zq, zk, zv, zp) =
        (i32::from(a.q.zero_point), i32::from(a.k.zero_point), i32::from(a.v.zero_point), i32::from(a.p.zero_point));

    let mut s = &mut *scratch;
    let kbuf: &mut [u32] = bytemuck::cast_slice_mut(take(&mut s, (dg * l * 4).div_ceil(4)));
    let kbuf = &mut kbuf[..dg * l];
    let colk: &mut [i32] = bytemuck::cast_slice_mut(take(&mut s, l));
    let qrows: &mut [u8] = bytemuck::cast_slice_mut(take(&mut s, (d * l).div_ceil(4)));
    let qrows = &mut qrows[..d * l];
    let vrows: &mut [u8] = bytemuck::cast_slice_mut(take(&mut s, (d * l).div_ceil(4)));
    let vrows = &mut vrows[..d * l];
    let qa_len = packed_q_len(kern, TQ, dg);
    let qpack: &mut [u8] = bytemuck::cast_slice_mut(take(&mut s, qa_len.div_ceil(4)));
    let qpack = &mut qpack[..qa_len];
    let qsums: &mut [i32] = bytemuck::cast_slice_mut(take(&mut s, TQ));
    let va_len = packed_q_len(kern, d, tk / 4);
    let vpack: &mut [u8] = bytemuck::cast_slice_mut(take(&mut s, tiles * va_len.div_ceil(4)));
    let vsums: &mut [i32] = bytemuck::cast_slice_mut(take(&mut s, tiles * d));
    let scores = take(&mut s, TQ * tk);
    let pbuf: &mut [u32] = bytemuck::cast_slice_mut(take(&mut s, ((tk / 4) * TQ * 4).div_ceil(4)));
    let pbuf = &mut pbuf[..(tk / 4) * TQ];
    let prow: &mut [u8] = bytemuck::cast_slice_mut(take(&mut s, tk.div_ceil(4)));
    let prow = &mut prow[..tk];
    let stats = take(&mut s, 4 * TQ);
    let (rmax, rest) = stats.split_at_mut(TQ);
    let (rsum, rest) = rest.split_at_mut(TQ);
    let colp: &mut [i32] = bytemuck::cast_slice_mut(&mut rest[..TQ]);
    let acc = take(&mut s, d * TQ);
    let gemm_scratch = s;

    // Offsets of the k-groups of k (channel groups) and of P (key groups).
    let koffs = |g: usize| g * l * 4;
    let poffs = |g: usize| g * TQ * 4;

    let base = (img * a.channels + h * d) * l;
    let (qh, kh, vh) = (&q[base..base + d * l], &k[base..base + d * l], &v[base..base + d * l]);
    // q, k (scaled first for LDM's legacy attention) and v quantized row by row; k goes
    // through `qrows` into the channel-interleaved words `[d/4][L]` with its column sums
    // Σ_c (k̂ − zk).
    for c in 0..d {
        quantize_row(&kh[c * l..(c + 1) * l], pre, &a.k, &mut qrows[c * l..(c + 1) * l]);
    }
    colk.fill(0);
    for c in 0..d {
        for (s, &x) in colk.iter_mut().zip(&qrows[c * l..(c + 1) * l]) {
            *s += i32::from(x) - zk;
        }
    }
    let zk8 = u32::from(a.k.zero_point);
    for g in 0..dg {
        if 4 * g + 4 <= d {
            let rows = &qrows[4 * g * l..(4 * g + 4) * l];
            let (r0, rest) = rows.split_at(l);
            let (r1, rest) = rest.split_at(l);
            let (r2, r3) = rest.split_at(l);
            for ((((w, &a), &b), &c), &e) in kbuf[g * l..(g + 1) * l].iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *w = u32::from_le_bytes([a, b, c, e]);
            }
            continue;
        }
        let row = |t: usize| (4 * g + t < d).then(|| &qrows[(4 * g + t) * l..(4 * g + t + 1) * l]);
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        for (j, w) in kbuf[g * l..(g + 1) * l].iter_mut().enumerate() {
            let b = |r: Option<&[u8]>| r.map_or(zk8, |r| u32::from(r[j]));
            *w = b(r0) | b(r1) << 8 | b(r2) << 16 | b(r3) << 24;
        }
    }
    for c in 0..d {
        quantize_row(&vh[c * l..(c + 1) * l], 1.0, &a.v, &mut vrows[c * l..(c + 1) * l]);
        quantize_row(&qh[c * l..(c + 1) * l], pre, &a.q, &mut qrows[c * l..(c + 1) * l]);
    }
    // v − 128 packed per key tile: rows = channels, K = the tile's keys.
    for t in 0..tiles {
        let j0 = t * tk;
        let dst = &mut vpack[t * va_len.div_ceil(4) * 4..][..va_len];
        pack_q_u8(kern, d, tk / 4, &vrows[j0..], l, 1, (l - j0).min(tk), dst, &mut vsums[t * d..(t + 1) * d]);
    }
    let (pzp, pq) = (f32::from(a.p.zero_point), a.p.qmax());
    let pfill = u32::from_ne_bytes([a.p.zero_point; 4]);
    for i0 in (t0 * TQ..(t1 * TQ).min(l)).step_by(TQ) {
        let tq = (l - i0).min(TQ);
        // q − 128 packed: rows = queries, K = channels.
        pack_q_u8(kern, tq, dg, &qrows[i0..], 1, l, d, &mut qpack[..packed_q_len(kern, tq, dg)], qsums);
        let qref = PackedQRef { data: &qpack[..packed_q_len(kern, tq, dg)], sums: qsums, m: tq, kg: dg };
        // Logits of keys j0..j0+tkc into `scores` (row stride tk).
        let logits = |j0: usize, tkc: usize, scores: &mut [f32], gs: &mut [f32]| {
            let ep = QEpilogue { scale: None, zero_point: zk, bias: None, accumulate: false };
            let kb: &[u8] = bytemuck::cast_slice(&kbuf[..]);
            qgemm_offsets(kern, qref, kb, dg, koffs, 4 * j0, tkc, MatMut { data: scores, rs: tk, cs: 1 }, &ep, gs);
            let corr = &colk[j0..j0 + tkc];
            for r in 0..tq {
                for (x, &ck) in scores[r * tk..r * tk + tkc].iter_mut().zip(corr) {
                    let raw = x.to_bits() as i32;
                    *x = sigma * raw.wrapping_add((128 - zq).wrapping_mul(ck)) as f32;
                }
            }
        };
        // Pass 1 (several key tiles): running max and denominator.
        if tiles > 1 {
            rmax[..tq].fill(f32::NEG_INFINITY);
            rsum[..tq].fill(0.0);
            for t in 0..tiles {
                let j0 = t * tk;
                let tkc = (l - j0).min(tk);
                logits(j0, tkc, scores, gemm_scratch);
                for r in 0..tq {
                    let row = &mut scores[r * tk..r * tk + tkc];
                    let m_new = rmax[r].max(row_max(row));
                    for x in row.iter_mut() {
                        *x = exp(*x - m_new);
                    }
                    rsum[r] = rsum[r] * exp(rmax[r] - m_new) + super::norm::sum(row);
                    rmax[r] = m_new;
                }
            }
        }
        // Pass 2: probabilities, quantized, and P·V accumulated in i32.
        colp[..tq].fill(0);
        for t in 0..tiles {
            let j0 = t * tk;
            let tkc = (l - j0).min(tk);
            logits(j0, tkc, scores, gemm_scratch);
            for r in 0..tq {
                let row = &mut scores[r * tk..r * tk + tkc];
                if tiles == 1 {
                    rmax[r] = row_max(row);
                    for x in row.iter_mut() {
                        *x = exp(*x - rmax[r]);
                    }
                    rsum[r] = super::norm::sum(row);
                } else {
                    for x in row.iter_mut() {
                        *x = exp(*x - rmax[r]);
                    }
                }
                let inv = 1.0 / rsum[r];
                // P̂ (keys past the tile: the zero-point) → words [keys/4][TQ].
                for (o, &x) in prow[..tkc].iter_mut().zip(row.iter()) {
                    *o = quantize(x * inv, a.p.delta, pzp, pq);
                }
                prow[tkc..].fill(a.p.zero_point);
                colp[r] += prow[..tkc].iter().map(|&x| i32::from(x)).sum::<i32>() - zp * tkc as i32;
                for (g, w) in prow.chunks_exact(4).enumerate() {
                    pbuf[g * TQ + r] = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                }
            }
            for g in 0..tk / 4 {
                pbuf[g * TQ + tq..(g + 1) * TQ].fill(pfill);
            }
            let vref = PackedQRef {
                data: &vpack[t * va_len.div_ceil(4) * 4..][..va_len],
                sums: &vsums[t * d..(t + 1) * d],
                m: d,
                kg: tk / 4,
            };
            let ep = QEpilogue { scale: None, zero_point: zp, bias: None, accumulate: t > 0 };
            let pb: &[u8] = bytemuck::cast_slice(&pbuf[..]);
            qgemm_offsets(kern, vref, pb, tk / 4, poffs, 0, tq, MatMut { data: acc, rs: TQ, cs: 1 }, &ep, gemm_scratch);
        }
        // out[c, i0 + r] = Δp·Δv·(acc + (128 − zv)·Σ_j (p̂ − zp)).
        let s_out = a.p.delta * a.v.delta;
        for c in 0..d {
            // SAFETY: (image, head, query tile) parts of `out` are disjoint between threads.
            let dst = unsafe { out.part(base + c * l + i0, base + c * l + i0 + tq) };
            for ((o, x), &cp) in dst.iter_mut().zip(&acc[c * TQ..c * TQ + tq]).zip(&colp[..tq]) {
                let raw = x.to_bits() as i32;
                *o = s_out * raw.wrapping_add((128 - zv).wrapping_mul(cp)) as f32;
            }
        }
    }
}

/// The largest element (16 independent lanes, so it vectorises; NaN-free inputs).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            m[i] = m[i].max(c[i]);
        }
    }
    let tail = it.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    m.iter().fold(tail, |a, &b| a.max(b))
}

/// [`qgemm`] with the k-group offsets `offs(g) + shift` for `g < kg`, built on the stack (up to
/// 1024 k-groups, which covers head dims and key tiles of attention).
#[allow(clippy::too_many_arguments)]
fn qgemm_offsets(
    kern: &crate::qgemm::QgemmKernel,
    a: PackedQRef<'_>,
    b: &[u8],
    kg: usize,
    offs: impl Fn(usize) -> usize,
    shift: usize,
    n: usize,
    c: MatMut<'_>,
    ep: &QEpilogue<'_>,
    scratch: &mut [f32],
) {
    let mut buf = [0usize; 1024];
    assert!(kg <= buf.len(), "attention: too many k-groups");
    for (g, o) in buf[..kg].iter_mut().enumerate() {
        *o = offs(g) + shift;
    }
    qgemm(kern, a, b, &buf[..kg], n, c, ep, scratch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    /// The fake-quant definition in f64: quantize q, k, v; exact integer logits; softmax;
    /// quantize P; exact integer P·V; dequantize.
    fn naive(a: &QAttention, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (d, l) = (a.channels / a.heads, a.tokens);
        let pre = if a.scale_before { a.scale.sqrt() } else { 1.0 };
        let sigma = if a.scale_before { a.q.delta * a.k.delta } else { a.scale * a.q.delta * a.k.delta };
        let qf = |x: f32, aq: &ActQ| {
            i64::from(quantize(x, aq.delta, f32::from(aq.zero_point), aq.qmax())) - i64::from(aq.zero_point)
        };
        let mut out = vec![0f32; q.len()];
        for img in 0..a.n {
            for h in 0..a.heads {
                let base = (img * a.channels + h * d) * l;
                for i in 0..l {
                    let logits: Vec<f64> = (0..l)
                        .map(|j| {
                            let s: i64 = (0..d)
                                .map(|c| qf(pre * q[base + c * l + i], &a.q) * qf(pre * k[base + c * l + j], &a.k))
                                .sum();
                            f64::from(sigma * s as f32)
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<i64> = e.iter().map(|x| qf((x / z) as f32, &a.p)).collect();
                    for c in 0..d {
                        let o: i64 = (0..l).map(|j| p[j] * qf(v[base + c * l + j], &a.v)).sum();
                        out[base + c * l + i] = a.p.delta * a.v.delta * o as f32;
                    }
                }
            }
        }
        out
    }

    fn run(kx: &Kernels, a: &QAttention, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        let mut scratch = vec![f32::NAN; a.scratch_len(kx)];
        qattention(kx, a, q, k, v, &mut out, &mut scratch);
        out
    }

    crate::testing::tier_test! {
    fn integer_attention_matches_fake_quant_and_is_identical_on_every_tier(kx) {
        let cases = [
            (2usize, 8usize, 1usize, 16usize, 512usize, false),
            (1, 12, 3, 70, 512, true),
            (1, 6, 2, 130, 32, false), // several key tiles: the two-pass path
            (1, 5, 1, 9, 4, true),     // one key group per tile, odd channels
        ];
        for (n, channels, heads, tokens, key_tile, before) in cases {
            let len = n * channels * tokens;
            let (q, k, v) = (data(len, 41), data(len, 42), data(len, 43));
            let aq = |delta: f32, zp: u8| ActQ { delta, zero_point: zp, bits: 8 };
            let a = QAttention {
                n,
                channels,
                heads,
                tokens,
                scale: 1.0 / ((channels / heads) as f32).sqrt(),
                scale_before: before,
                q: aq(0.008, 128),
                k: aq(0.009, 127),
                v: aq(0.0079, 131),
                p: aq(1.0 / 255.0, 0),
                key_tile,
            };
            let want = naive(&a, &q, &k, &v);
            let reference = run(&crate::reference(), &a, &q, &k, &v);
            // Against the definition: a probability may round to the next level where the
            // f64 softmax and the f32 one straddle a rounding boundary — a few LSB of P.
            let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let err = reference.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale;
            assert!(err < 0.02, "case {n} {channels} {heads} {tokens}: error {err}");
            {
                let got = run(kx, &a, &q, &k, &v);
                assert!(got.iter().zip(&reference).all(|(x, y)| x.to_bits() == y.to_bits()), "{:?} differs", kx.tier());
                // Split between threads (heads, or query tiles when heads are fewer): same bits.
                for threads in [2, 3] {
                    let pool = crate::pool::Pool::new(threads).unwrap();
                    let mut got = vec![f32::NAN; q.len()];
                    let mut scratch = vec![f32::NAN; a.scratch_len_threads(kx, threads)];
                    qattention_par(kx, &a, &q, &k, &v, &mut got, &mut scratch, &pool);
                    assert!(
                        got.iter().zip(&reference).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{:?}: {threads} threads differ",
                        kx.tier()
                    );
                }
            }
        }
    }
    }
}
