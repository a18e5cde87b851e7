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
    /// The largest code, `2^bits − 1`.
    #[inline(always)]
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
}

/// `clamp(round_half_even(x / Δ) + zp, 0, qmax)`; NaN quantizes to 0.
#[inline(always)]
pub fn quantize(x: f32, delta: f32, zero_point: f32, qmax: f32) -> u8 {
    ((x / delta).round_ties_even() + zero_point).clamp(0.0, qmax) as u8
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
/// interleaved words at `out[0..4w]`, applying `act` first.
#[inline(always)]
fn put_rows(rows: [Option<&[f32]>; 4], act: Activation, q: ActQ, out: &mut [u8]) {
    let (zp, qmax) = (f32::from(q.zero_point), q.qmax());
    let w = out.len() / 4;
    for t in 0..4 {
        match rows[t] {
            Some(r) => {
                for (x, &v) in r[..w].iter().enumerate() {
                    out[4 * x + t] = quantize(act.apply(v), q.delta, zp, qmax);
                }
            }
            None => {
                for x in 0..w {
                    out[4 * x + t] = q.zero_point;
                }
            }
        }
    }
}

crate::simd::multiversion! {
    /// Quantizes channels `ch0..ch0 + layout.c` of `x` (`[N][cx][H][W]` f32) after `act` into
    /// `out` (`layout.len()` bytes), padding included.
    pub fn quantize_c4(x: &[f32], cx: usize, ch0: usize, act: Activation, q: ActQ, layout: &C4, out: &mut [u8]) => quantize_c4_generic
}

#[inline(always)]
fn quantize_c4_generic(x: &[f32], cx: usize, ch0: usize, act: Activation, q: ActQ, layout: &C4, out: &mut [u8]) {
    let C4 { c, n, h, w, .. } = *layout;
    assert!(ch0 + c <= cx && x.len() >= n * cx * h * w, "quantize_c4: input too short");
    quantize_strided_c4_generic(&x[ch0 * h * w..], [h * w, cx * h * w, w], act, q, layout, out);
}

crate::simd::multiversion! {
    /// Quantizes `x` after `act` into `out` (`layout.len()` bytes, padding included), element
    /// (channel `c`, image `b`, row `y`, column `x`) read at `c·strides[0] + b·strides[1] +
    /// y·strides[2] + x`: the requantizing epilogue of the integer convolutions, whose results
    /// are channel-major.
    pub fn quantize_strided_c4(x: &[f32], strides: [usize; 3], act: Activation, q: ActQ, layout: &C4, out: &mut [u8]) => quantize_strided_c4_generic
}

#[inline(always)]
fn quantize_strided_c4_generic(
    x: &[f32],
    [cs, bs, ys]: [usize; 3],
    act: Activation,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
) {
    let C4 { c, n, h, w, pad } = *layout;
    assert_eq!(out.len(), layout.len(), "quantize_c4: output length");
    if layout.is_empty() {
        return;
    }
    assert!((c - 1) * cs + (n - 1) * bs + (h - 1) * ys + w <= x.len(), "quantize_c4: input too short");
    out.fill(q.zero_point);
    for g in 0..layout.groups() {
        for b in 0..n {
            for y in 0..h {
                let row = |t: usize| {
                    let ch = 4 * g + t;
                    (ch < c).then(|| &x[ch * cs + b * bs + y * ys..][..w])
                };
                let at = layout.word(g, b, y + pad[0], pad[2]);
                put_rows([row(0), row(1), row(2), row(3)], act, q, &mut out[at..at + 4 * w]);
            }
        }
    }
}

/// Columns normalised at a time by the fused kernels (a stack buffer per channel).
const CHUNK: usize = 64;

crate::simd::multiversion! {
    /// Group normalisation of `x` (`[N][C][H][W]`) → `act` → quantization into `out`, without
    /// an intermediate f32 tensor. Statistics as [`super::norm::group_norm`].
    pub fn group_norm_quantize_c4(
        x: &[f32],
        groups: usize,
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        act: Activation,
        q: ActQ,
        layout: &C4,
        out: &mut [u8],
    ) => group_norm_quantize_c4_generic
}

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
    out: &mut [u8],
) {
    let C4 { c, n, h, w, pad } = *layout;
    let hw = h * w;
    assert!(c.is_multiple_of(groups) && x.len() >= n * c * hw, "group_norm_quantize: shapes");
    assert_eq!(out.len(), layout.len(), "group_norm_quantize: output length");
    out.fill(q.zero_point);
    let cg = c / groups;
    // Per (image, channel): the affine map of the normalisation, y = x·s + o.
    let s_o = |b: usize, ch: usize| {
        let gi = ch / cg;
        let base = (b * c + gi * cg) * hw;
        let (mean, var) = mean_var(&x[base..base + cg * hw]);
        let inv = 1.0 / (var + eps).sqrt();
        let (ga, be) = (gamma.map_or(1.0, |v| v[ch]), beta.map_or(0.0, |v| v[ch]));
        (inv * ga, be - mean * inv * ga)
    };
    let mut tmp = [[0f32; CHUNK]; 4];
    for g in 0..layout.groups() {
        for b in 0..n {
            let mut coef = [(0f32, 0f32); 4];
            for (t, co) in coef.iter_mut().enumerate() {
                if 4 * g + t < c {
                    *co = s_o(b, 4 * g + t);
                }
            }
            for y in 0..h {
                for x0 in (0..w).step_by(CHUNK) {
                    let len = (w - x0).min(CHUNK);
                    for t in 0..4 {
                        let ch = 4 * g + t;
                        if ch < c {
                            let src = &x[((b * c + ch) * h + y) * w + x0..][..len];
                            let (s, o) = coef[t];
                            for (d, &v) in tmp[t][..len].iter_mut().zip(src) {
                                *d = v * s + o;
                            }
                        }
                    }
                    let rows = [0, 1, 2, 3].map(|t| (4 * g + t < c).then(|| &tmp[t][..len]));
                    let at = layout.word(g, b, y + pad[0], pad[2] + x0);
                    put_rows(rows, act, q, &mut out[at..at + 4 * len]);
                }
            }
        }
    }
}

crate::simd::multiversion! {
    /// Layer normalisation over (C, H, W) of each image → `act` → quantization into `out`.
    pub fn layer_norm_chw_quantize_c4(
        x: &[f32],
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        act: Activation,
        q: ActQ,
        layout: &C4,
        out: &mut [u8],
    ) => layer_norm_chw_quantize_c4_generic
}

#[inline(always)]
fn layer_norm_chw_quantize_c4_generic(
    x: &[f32],
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    q: ActQ,
    layout: &C4,
    out: &mut [u8],
) {
    let C4 { c, n, h, w, pad } = *layout;
    let len = c * h * w;
    assert!(x.len() >= n * len, "layer_norm_quantize: shapes");
    assert_eq!(out.len(), layout.len(), "layer_norm_quantize: output length");
    out.fill(q.zero_point);
    let mut tmp = [[0f32; CHUNK]; 4];
    for b in 0..n {
        let img = &x[b * len..(b + 1) * len];
        let (mean, var) = mean_var(img);
        let inv = 1.0 / (var + eps).sqrt();
        for g in 0..layout.groups() {
            for y in 0..h {
                for x0 in (0..w).step_by(CHUNK) {
                    let cl = (w - x0).min(CHUNK);
                    for (t, row) in tmp.iter_mut().enumerate() {
                        let ch = 4 * g + t;
                        if ch < c {
                            let off = (ch * h + y) * w + x0;
                            for (i, d) in row[..cl].iter_mut().enumerate() {
                                let ga = gamma.map_or(1.0, |v| v[off + i]);
                                let be = beta.map_or(0.0, |v| v[off + i]);
                                *d = (img[off + i] - mean) * inv * ga + be;
                            }
                        }
                    }
                    let rows = [0, 1, 2, 3].map(|t| (4 * g + t < c).then(|| &tmp[t][..cl]));
                    let at = layout.word(g, b, y + pad[0], pad[2] + x0);
                    put_rows(rows, act, q, &mut out[at..at + 4 * cl]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{data, for_each_tier};

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

    #[test]
    fn quantize_c4_matches_the_naive_layout_on_every_tier() {
        for_each_tier(|k| {
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
        });
    }

    #[test]
    fn fused_norms_quantize_what_the_separate_ops_compute() {
        for_each_tier(|k| {
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

            let g2 = data(c * h * w, 12);
            let b2 = data(c * h * w, 13);
            crate::ops::norm::layer_norm_chw(k, &x, n, c * h * w, 1e-5, Some(&g2), Some(&b2), Activation::Relu, &mut y);
            let want = naive(&y, c, 0, Activation::None, q, &l);
            layer_norm_chw_quantize_c4(k, &x, 1e-5, Some(&g2), Some(&b2), Activation::Relu, q, &l, &mut got);
            assert_eq!(got, want, "layer norm {:?}", k.tier());
        });
    }
}
