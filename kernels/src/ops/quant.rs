//! Activation quantization into the layout the integer convolutions read, bit-exact with the
//! reference `q = clamp(round_half_even(x / Δ) + zp, 0, 2^bits − 1)` (an f32 division, never a
//! multiplication by 1/Δ, which can move ties), optionally fused after a normalisation and an
//! activation.

use super::act::Activation;
use super::norm::mean_var;

/// An activation quantizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQ {
    /// Step Δ.
    pub delta: f32,
    /// Zero-point.
    pub zero_point: u8,
    /// Bits (1–8).
    pub bits: u8,
}

impl ActQ {
    /// The largest code, `2^bits − 1` (bits above 8 count as 8: the codes are bytes).
    #[inline(always)]
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits.min(8)) - 1) as f32
    }
}

/// `clamp(round_half_even(x / Δ) + zp, 0, qmax)`; NaN quantizes to 0. Sound for any inputs:
/// `qmax` is first brought into `[0, 255]` (NaN to 0).
#[inline(always)]
pub fn quantize(x: f32, delta: f32, zero_point: f32, qmax: f32) -> u8 {
    // Loop-invariant in every caller, so hoisted: the cast below needs a finite bound.
    let qmax = if qmax >= 0.0 { if qmax < 255.0 { qmax } else { 255.0 } } else { 0.0 };
    // Written with comparisons rather than `clamp` and a saturating cast, so that the loops
    // around it vectorise (11× faster on AVX-512); NaN fails both comparisons and becomes 0.
    let r = (x / delta).round_ties_even() + zero_point;
    let r = if r > qmax {
        qmax
    } else if r > 0.0 {
        r
    } else {
        0.0
    };
    // SAFETY: r is qmax (finite, in [0, 255] by the line above), a value in (0, qmax], or 0:
    // finite and representable in i32.
    unsafe { r.to_int_unchecked::<i32>() as u8 }
}

/// Quantized activations: u8 `[⌈C/4⌉][N][Hp][Wp][4]` — four channels interleaved per pixel,
/// the batch inside each channel group, every image surrounded by `pad = [top, bottom, left,
/// right]` pixels of the zero-point (the real value 0), channels past `C` also the zero-point.
/// Every k-group of a stride-1 convolution over this buffer is one contiguous run of positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct C4 {
    /// Channels.
    pub c: usize,
    /// Images.
    pub n: usize,
    /// Height (without padding).
    pub h: usize,
    /// Width (without padding).
    pub w: usize,
    /// Padding `[top, bottom, left, right]`.
    pub pad: [usize; 4],
}

impl C4 {
    /// Channel groups ⌈C/4⌉.
    pub fn groups(&self) -> usize {
        self.c.div_ceil(4)
    }

    /// Padded height.
    pub fn hp(&self) -> usize {
        self.h + self.pad[0] + self.pad[1]
    }

    /// Padded width.
    pub fn wp(&self) -> usize {
        self.w + self.pad[2] + self.pad[3]
    }

    /// Positions per channel group (`N·Hp·Wp`).
    pub fn plane(&self) -> usize {
        self.n * self.hp() * self.wp()
    }

    /// Bytes of the buffer.
    pub fn len(&self) -> usize {
        self.groups() * self.plane() * 4
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte offset of the 4-channel word of group `g`, image `b`, padded row `y`, column `x`.
    #[inline(always)]
    pub fn word(&self, g: usize, b: usize, y: usize, x: usize) -> usize {
        (((g * self.n + b) * self.hp() + y) * self.wp() + x) * 4
    }
}

/// Quantizes four channel rows of `w` floats (`None` for channels past `C`) into the
/// interleaved words at `out[0..4w]`, applying `act` first. In chunks, each a pass that
/// vectorises on its own: the activation over a row, the quantization of a row into bytes, the
/// interleaving of four byte rows into words.
#[inline(always)]
fn put_rows(rows: [Option<&[f32]>; 4], act: Activation, q: ActQ, out: &mut [u8]) {
    let (zp, qmax) = (f32::from(q.zero_point), q.qmax());
    let w = out.len() / 4;
    let mut f = [0f32; CHUNK];
    let mut b = [[q.zero_point; CHUNK]; 4];
    for x0 in (0..w).step_by(CHUNK) {
        let len = (w - x0).min(CHUNK);
        for t in 0..4 {
            if let Some(r) = rows[t] {
                let src = &r[x0..x0 + len];
                if act == Activation::None {
                    for (o, &v) in b[t][..len].iter_mut().zip(src) {
                        *o = quantize(v, q.delta, zp, qmax);
                    }
                } else {
                    f[..len].copy_from_slice(src);
                    act.apply_in_place(&mut f[..len]);
                    for (o, &v) in b[t][..len].iter_mut().zip(&f[..len]) {
                        *o = quantize(v, q.delta, zp, qmax);
                    }
                }
            }
        }
        let [b0, b1, b2, b3] = &b;
        for (i, o) in out[4 * x0..4 * (x0 + len)].chunks_exact_mut(4).enumerate() {
            o.copy_from_slice(&[b0[i], b1[i], b2[i], b3[i]]);
        }
    }
}

crate::simd::multiversion! {
    /// Quantizes channels `ch0..ch0 + layout.c` of `x` (`[N][cx][H][W]` f32) after `act` into
    /// `out` (`layout.len()` bytes), padding included.
    pub fn quantize_c4(x: &[f32], cx: usize, ch0: usize, act: Activation, q: ActQ, layout: &C4, out: &mut [u8]) => quantize_c4_generic
}

/// [`quantize_c4`] on the threads of `par`, split by groups of four channels.
#[allow(clippy::too_many_arguments)]
pub fn quantize_c4_par(
    k: &crate::Kernels,
    x: &[f32],
    cx: usize,
    ch0: usize,
    act: Activation,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
    par: &dyn crate::pool::Parallel,
) {
    by_channel_groups(layout, out, par, &|sub, c0, part| quantize_c4(k, x, cx, ch0 + c0, act, q, sub, part));
}

/// Runs `f(sub_layout, first_channel, bytes)` on the threads of `par` for disjoint ranges of the
/// layout's groups of four channels (each range's bytes are contiguous in `out`).
fn by_channel_groups(
    layout: &C4,
    out: &mut [u8],
    par: &dyn crate::pool::Parallel,
    f: &(dyn Fn(&C4, usize, &mut [u8]) + Sync),
) {
    assert_eq!(out.len(), layout.len(), "quantize_c4: output length");
    let threads = par.threads();
    let per_group = layout.plane() * 4;
    let sh = crate::pool::SharedMut::new(out);
    par.run(&|t| {
        let (g0, g1) = crate::pool::split(layout.groups(), threads, t, 1);
        if g0 == g1 {
            return;
        }
        let sub = C4 { c: (4 * g1).min(layout.c) - 4 * g0, ..*layout };
        // SAFETY: channel-group ranges are disjoint between threads.
        let part = unsafe { sh.part(g0 * per_group, g1 * per_group) };
        f(&sub, 4 * g0, part);
    });
}

crate::simd::multiversion! {
    /// [`quantize_c4`] of `x` upsampled by `s` (nearest neighbour): `x` is `[N][cx][H/s][W/s]`,
    /// `layout` is the upsampled `[N][C][H][W]`. Each source value is quantized once and its byte
    /// written `s × s` times — the bytes of an upsampling pass followed by [`quantize_c4`],
    /// without the upsampled f32 tensor.
    pub fn quantize_c4_upsampled(x: &[f32], cx: usize, ch0: usize, s: usize, q: ActQ, layout: &C4, out: &mut [u8]) => quantize_c4_upsampled_generic
}

/// [`quantize_c4_upsampled`] on the threads of `par`, split by groups of four channels.
#[allow(clippy::too_many_arguments)]
pub fn quantize_c4_upsampled_par(
    k: &crate::Kernels,
    x: &[f32],
    cx: usize,
    ch0: usize,
    s: usize,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
    par: &dyn crate::pool::Parallel,
) {
    by_channel_groups(layout, out, par, &|sub, c0, part| quantize_c4_upsampled(k, x, cx, ch0 + c0, s, q, sub, part));
}

#[inline(always)]
fn quantize_c4_upsampled_generic(x: &[f32], cx: usize, ch0: usize, s: usize, q: ActQ, layout: &C4, out: &mut [u8]) {
    let C4 { c, n, h, w, pad } = *layout;
    assert!(s >= 1 && h.is_multiple_of(s) && w.is_multiple_of(s), "quantize_c4_upsampled: size not a multiple of {s}");
    let (hs, ws) = (h / s, w / s);
    assert!(ch0 + c <= cx && x.len() >= n * cx * hs * ws, "quantize_c4_upsampled: input too short");
    assert_eq!(out.len(), layout.len(), "quantize_c4: output length");
    out.fill(q.zero_point);
    let mut words = [0u8; 4 * CHUNK];
    for g in 0..layout.groups() {
        for b in 0..n {
            for ys in 0..hs {
                let row = |t: usize| {
                    let ch = 4 * g + t;
                    (ch < c).then(|| &x[((b * cx + ch0 + ch) * hs + ys) * ws..][..ws])
                };
                for x0 in (0..ws).step_by(CHUNK) {
                    let cl = (ws - x0).min(CHUNK);
                    let rows = [0, 1, 2, 3].map(|t| row(t).map(|r| &r[x0..x0 + cl]));
                    put_rows(rows, Activation::None, q, &mut words[..4 * cl]);
                    for r in 0..s {
                        let at = layout.word(g, b, ys * s + r + pad[0], pad[2] + x0 * s);
                        let dst = &mut out[at..at + 4 * s * cl];
                        for (cell, word) in dst.chunks_exact_mut(4 * s).zip(words[..4 * cl].chunks_exact(4)) {
                            for o in cell.chunks_exact_mut(4) {
                                o.copy_from_slice(word);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn quantize_c4_generic(x: &[f32], cx: usize, ch0: usize, act: Activation, q: ActQ, layout: &C4, out: &mut [u8]) {
    let C4 { c, n, h, w, .. } = *layout;
    assert!(ch0 + c <= cx && x.len() >= n * cx * h * w, "quantize_c4: input too short");
    assert_eq!(out.len(), layout.len(), "quantize_c4: output length");
    let hw = h * w;
    out.fill(q.zero_point);
    for g in 0..layout.groups() {
        for b in 0..n {
            let plane = |t: usize| {
                let ch = 4 * g + t;
                (ch < c).then(|| &x[(b * cx + ch0 + ch) * hw..][..hw])
            };
            put_plane(layout, g, b, [plane(0), plane(1), plane(2), plane(3)], None, act, q, 0, out);
        }
    }
}

/// Positions of a channel plane processed at a time by [`put_plane`].
const PCH: usize = 256;

/// Quantizes four contiguous channel planes (`h·w` floats each, `None` past `C`) of image `b`
/// into channel group `g` of the layout (`out` starts at byte `base` of the layout), through
/// `y = x·s + o` per channel when `affine` is given and `act`: each pass over a chunk of
/// positions vectorises on its own, then the four byte rows are interleaved into the padded
/// words.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn put_plane(
    layout: &C4,
    g: usize,
    b: usize,
    planes: [Option<&[f32]>; 4],
    affine: Option<[(f32, f32); 4]>,
    act: Activation,
    q: ActQ,
    base: usize,
    out: &mut [u8],
) {
    let (w, hw, pad) = (layout.w, layout.h * layout.w, layout.pad);
    let (zp, qmax) = (f32::from(q.zero_point), q.qmax());
    let mut f = [0f32; PCH];
    // The layout's words for a chunk of positions: byte `t` of word `i` is channel `t`'s level
    // at position `p0 + i` (little-endian), built in 32-bit lanes so that the interleave
    // vectorises with the quantization.
    let mut words = [0u32; PCH];
    for p0 in (0..hw).step_by(PCH) {
        let len = (hw - p0).min(PCH);
        let wd = &mut words[..len];
        wd.fill(0);
        for t in 0..4 {
            let shift = 8 * t as u32;
            let Some(plane) = planes[t] else {
                for o in wd.iter_mut() {
                    *o |= u32::from(q.zero_point) << shift;
                }
                continue;
            };
            let src = &plane[p0..p0 + len];
            if affine.is_none() && act == Activation::None {
                for (o, &v) in wd.iter_mut().zip(src) {
                    *o |= u32::from(quantize(v, q.delta, zp, qmax)) << shift;
                }
                continue;
            }
            match affine {
                Some(a) => {
                    let (sc, of) = a[t];
                    for (d, &v) in f[..len].iter_mut().zip(src) {
                        *d = v * sc + of;
                    }
                }
                None => f[..len].copy_from_slice(src),
            }
            act.apply_in_place(&mut f[..len]);
            for (o, &v) in wd.iter_mut().zip(&f[..len]) {
                *o |= u32::from(quantize(v, q.delta, zp, qmax)) << shift;
            }
        }
        for o in wd.iter_mut() {
            *o = o.to_le(); // the identity on every target edadm builds for
        }
        let mut p = p0;
        while p < p0 + len {
            let (y, x) = (p / w, p % w);
            let run = (w - x).min(p0 + len - p);
            let at = layout.word(g, b, y + pad[0], x + pad[2]) - base;
            let i0 = p - p0;
            let dst = &mut out[at..at + 4 * run];
            dst.copy_from_slice(bytemuck::cast_slice(&words[i0..i0 + run]));
            p += run;
        }
    }
}

/// Columns normalised at a time by the fused kernels (a stack buffer per channel).
const CHUNK: usize = 64;

/// Group normalisation of `x` (`[N][C][H][W]`) → `act` → quantization into `out`, without
/// an intermediate f32 tensor. Statistics as [`super::norm::group_norm`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_quantize_c4(
    k: &crate::Kernels,
    x: &[f32],
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
) {
    group_norm_quantize_c4_par(k, x, groups, eps, gamma, beta, act, q, layout, out, &crate::pool::Serial);
}

/// [`group_norm_quantize_c4`] on the threads of `par`, split by groups of four channels (the
/// output layout's units); the same bytes for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_quantize_c4_par(
    k: &crate::Kernels,
    x: &[f32],
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
    par: &dyn crate::pool::Parallel,
) {
    let C4 { c, n, h, w, .. } = *layout;
    assert!(groups > 0 && c.is_multiple_of(groups) && x.len() >= n * c * h * w, "group_norm_quantize: shapes");
    assert_eq!(out.len(), layout.len(), "group_norm_quantize: output length");
    let per_group = layout.plane() * 4;
    let threads = par.threads();
    let sh = crate::pool::SharedMut::new(out);
    par.run(&|t| {
        let (g0, g1) = crate::pool::split(layout.groups(), threads, t, 1);
        // SAFETY: channel-group ranges are disjoint between threads.
        let part = unsafe { sh.part(g0 * per_group, g1 * per_group) };
        gn_quantize_part(k, x, groups, eps, gamma, beta, act, q, layout, g0, g1, part);
    });
}

crate::simd::multiversion! {
    fn gn_quantize_part(
        x: &[f32],
        groups: usize,
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        act: Activation,
        q: ActQ,
        layout: &C4,
        g0: usize,
        g1: usize,
        out: &mut [u8],
    ) => group_norm_quantize_c4_generic
}

/// Channel groups `g0..g1` of the layout into `out` (their bytes).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn group_norm_quantize_c4_generic(
    x: &[f32],
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    q: ActQ,
    layout: &C4,
    g0: usize,
    g1: usize,
    out: &mut [u8],
) {
    let C4 { c, n, h, w, .. } = *layout;
    let hw = h * w;
    out.fill(q.zero_point);
    let cg = c / groups;
    let base_at = layout.word(g0, 0, 0, 0);
    for b in 0..n {
        // The statistics of a norm group once for all its channels in this part (a norm group
        // spans several words when it has more than four channels): images outside, words
        // inside, so consecutive words reuse them.
        let mut last: Option<(usize, f32, f32)> = None;
        for g in g0..g1 {
            // Per channel: the affine map of the normalisation, y = x·s + o.
            let mut coef = [(0f32, 0f32); 4];
            for (t, co) in coef.iter_mut().enumerate() {
                let ch = 4 * g + t;
                if ch >= c {
                    continue;
                }
                let gi = ch / cg;
                let (mean, inv) = match last {
                    Some((lg, m, i)) if lg == gi => (m, i),
                    _ => {
                        let base = (b * c + gi * cg) * hw;
                        let (mean, var) = mean_var(&x[base..base + cg * hw]);
                        let inv = 1.0 / (var + eps).sqrt();
                        last = Some((gi, mean, inv));
                        (mean, inv)
                    }
                };
                let (ga, be) = (gamma.map_or(1.0, |v| v[ch]), beta.map_or(0.0, |v| v[ch]));
                *co = (inv * ga, be - mean * inv * ga);
            }
            let plane = |t: usize| {
                let ch = 4 * g + t;
                (ch < c).then(|| &x[(b * c + ch) * hw..][..hw])
            };
            put_plane(layout, g, b, [plane(0), plane(1), plane(2), plane(3)], Some(coef), act, q, base_at, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    #[test]
    fn quantize_is_round_half_even_of_an_f32_division() {
        // 0.3/0.1 = 2.9999998 in f32 (rounds to 3); x·(1/Δ) gives 3.0000002 — same result here,
        // but exact ties must follow the division: 0.25/0.1 = 2.5 → 2 (even), 0.35/0.1 = 3.4999998.
        assert_eq!(quantize(0.25, 0.1, 0.0, 255.0), 2);
        assert_eq!(quantize(0.75, 0.5, 0.0, 255.0), 2); // 1.5 → 2
        assert_eq!(quantize(1.25, 0.5, 0.0, 255.0), 2); // 2.5 → 2
        assert_eq!(quantize(-1.25, 0.5, 128.0, 255.0), 126); // −2.5 → −2
        assert_eq!(quantize(1e9, 0.5, 128.0, 255.0), 255);
        assert_eq!(quantize(-1e9, 0.5, 128.0, 255.0), 0);
        assert_eq!(quantize(f32::NAN, 0.5, 128.0, 255.0), 0);
        assert_eq!(quantize(3.0, 1.0, 8.0, 15.0), 11);
        // Any bound is sound: above 255, infinite or NaN bounds cannot reach an out-of-range cast.
        assert_eq!(quantize(1e30, 1e-30, 0.0, 2147483648.0), 255);
        assert_eq!(quantize(1e30, 1.0, 0.0, f32::INFINITY), 255);
        assert_eq!(quantize(7.0, 1.0, 0.0, f32::NEG_INFINITY), 0);
        assert_eq!(quantize(7.0, 1.0, 0.0, f32::NAN), 0);
        assert_eq!(ActQ { delta: 1.0, zero_point: 0, bits: 31 }.qmax(), 255.0);
        // Find an input where x/Δ and x·(1/Δ) disagree, and check the division wins.
        let (x, d) = (1..200u32)
            .flat_map(|k| [0.1f32, 0.07, 0.013, 0.3].map(move |d| ((k as f32 + 0.5) * d, d)))
            .find(|&(x, d)| (x / d).round_ties_even() != (x * (1.0 / d)).round_ties_even())
            .expect("a tie the reciprocal moves");
        let q = quantize(x, d, 0.0, 255.0);
        assert_eq!(q, (x / d).round_ties_even() as u8);
        assert_ne!(q, (x * (1.0 / d)).round_ties_even() as u8, "x = {x}, Δ = {d}");
    }

    fn naive(x: &[f32], cx: usize, ch0: usize, act: Activation, q: ActQ, l: &C4) -> Vec<u8> {
        let mut out = vec![q.zero_point; l.len()];
        for g in 0..l.groups() {
            for b in 0..l.n {
                for y in 0..l.h {
                    for xx in 0..l.w {
                        for t in 0..4 {
                            let ch = 4 * g + t;
                            if ch < l.c {
                                let v = act.apply(x[((b * cx + ch0 + ch) * l.h + y) * l.w + xx]);
                                out[l.word(g, b, y + l.pad[0], xx + l.pad[2]) + t] =
                                    quantize(v, q.delta, f32::from(q.zero_point), q.qmax());
                            }
                        }
                    }
                }
            }
        }
        out
    }

    crate::testing::tier_test! {
        fn quantize_c4_matches_the_naive_layout_on_every_tier(k) {
            for (c, cx, ch0, n, h, w, pad, act) in [
                (5usize, 7usize, 2usize, 2usize, 3usize, 70usize, [1usize, 1, 1, 1], Activation::Silu),
                (8, 8, 0, 1, 4, 4, [0, 1, 0, 1], Activation::None),
                (1, 1, 0, 3, 5, 2, [2, 0, 0, 3], Activation::Relu),
            ] {
                let l = C4 { c, n, h, w, pad };
                let x: Vec<f32> = data(n * cx * h * w, 5).iter().map(|v| v * 4.0).collect();
                let q = ActQ { delta: 0.031, zero_point: 120, bits: 8 };
                let mut out = vec![0u8; l.len()];
                quantize_c4(k, &x, cx, ch0, act, q, &l, &mut out);
                assert_eq!(out, naive(&x, cx, ch0, act, q, &l), "{:?} {l:?}", k.tier());
            }
        }
    }

    crate::testing::tier_test! {
        fn upsampled_quantization_is_the_upsampling_then_the_quantization(k) {
            let pool = crate::pool::Pool::new(2).unwrap();
            // (c, cx, ch0, n, source h, source w, factor, pad); 70 source columns span two chunks.
            for (c, cx, ch0, n, hs, ws, s, pad) in [
                (5usize, 7usize, 2usize, 2usize, 3usize, 70usize, 2usize, [1usize, 1, 1, 1]),
                (8, 8, 0, 1, 4, 4, 2, [1, 1, 1, 1]),
                (1, 1, 0, 3, 5, 2, 3, [2, 0, 0, 3]),
            ] {
                let l = C4 { c, n, h: hs * s, w: ws * s, pad };
                let x: Vec<f32> = data(n * cx * hs * ws, 6).iter().map(|v| v * 4.0).collect();
                let mut up = vec![0f32; n * cx * l.h * l.w];
                crate::ops::elementwise::upsample_nearest(&x, n * cx, hs, ws, s, &mut up);
                let q = ActQ { delta: 0.027, zero_point: 131, bits: 8 };
                let want = naive(&up, cx, ch0, Activation::None, q, &l);
                let mut out = vec![0xAAu8; l.len()];
                quantize_c4_upsampled(k, &x, cx, ch0, s, q, &l, &mut out);
                assert_eq!(out, want, "{:?} {l:?}", k.tier());
                out.fill(0xAA);
                quantize_c4_upsampled_par(k, &x, cx, ch0, s, q, &l, &mut out, &pool);
                assert_eq!(out, want, "{:?} {l:?} on 2 threads", k.tier());
            }
        }
    }

    crate::testing::tier_test! {
        fn fused_norms_quantize_what_the_separate_ops_compute(k) {
            let (n, c, h, w) = (2, 12, 5, 70);
            let l = C4 { c, n, h, w, pad: [1, 1, 1, 1] };
            let x: Vec<f32> = data(n * c * h * w, 9).iter().map(|v| v * 3.0 + 0.5).collect();
            let gamma = data(c, 10);
            let beta = data(c, 11);
            let q = ActQ { delta: 0.02, zero_point: 128, bits: 8 };
            let mut y = vec![0f32; x.len()];
            crate::ops::norm::group_norm(
                k,
                &x,
                n,
                c,
                h * w,
                4,
                1e-6,
                Some(&gamma),
                Some(&beta),
                Activation::Silu,
                &mut y,
            );
            let want = naive(&y, c, 0, Activation::None, q, &l);
            let mut got = vec![0u8; l.len()];
            group_norm_quantize_c4(k, &x, 4, 1e-6, Some(&gamma), Some(&beta), Activation::Silu, q, &l, &mut got);
            assert_eq!(got, want, "group norm {:?}", k.tier());
            for threads in [2, 3] {
                let pool = crate::pool::Pool::new(threads).unwrap();
                let mut par = vec![0u8; l.len()];
                let (g, b) = (Some(&gamma[..]), Some(&beta[..]));
                group_norm_quantize_c4_par(k, &x, 4, 1e-6, g, b, Activation::Silu, q, &l, &mut par, &pool);
                assert_eq!(par, want, "group norm on {threads} threads");
                quantize_c4_par(k, &y, c, 0, Activation::None, q, &l, &mut par, &pool);
                assert_eq!(par, want, "quantize on {threads} threads");
            }
        }
    }
}
