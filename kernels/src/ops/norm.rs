//! Normalisations (biased variance, as PyTorch), with an optional fused activation.

use super::act::Activation;

/// Σ f(x) over 16 f32 lanes (vectorisable; pairwise-like accuracy for the lengths of norms).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        // A fixed-size view, so that the 16 lanes compile to whole vector adds.
        let c: &[f32; 16] = c.try_into().expect("a chunk of 16");
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    // Pairwise reduction of the lanes.
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

/// Σ x.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    lane_sum(x, |v| v)
}

/// Mean and biased variance of `x`: one pass for the mean, one for the centred squares (so
/// large offsets do not cancel).
#[inline(always)]
pub(crate) fn mean_var(x: &[f32]) -> (f32, f32) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, var)
}

crate::simd::multiversion! {
    /// Group normalisation of `n` images `[c, hw]`: each group of `c/groups` channels is
    /// normalised over its channels and positions, then scaled and shifted per channel, then
    /// `act` is applied.
    pub fn group_norm(
        x: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) => group_norm_generic
}

crate::simd::multiversion! {
    /// Layer normalisation over `[c, h, w]` jointly of each of `n` images (`nn.LayerNorm((C, H,
    /// W))`); `gamma`/`beta` have `c·h·w` elements.
    pub fn layer_norm_chw(
        x: &[f32],
        n: usize,
        len: usize,
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) => layer_norm_chw_generic
}

/// [`group_norm`] on the threads of `par`, split by (image, group) pairs; the same results for
/// any thread count.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_par(
    k: &crate::Kernels,
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    par: &dyn crate::pool::Parallel,
) {
    assert!(
        groups > 0 && c.is_multiple_of(groups) && x.len() >= n * c * hw && y.len() >= n * c * hw,
        "group_norm shapes"
    );
    let (cg, threads) = (c / groups, par.threads());
    let pair = cg * hw;
    let ys = crate::pool::SharedMut::new(y);
    par.run(&|t| {
        let (p0, p1) = crate::pool::split(n * groups, threads, t, 1);
        let mut p = p0;
        while p < p1 {
            // The pairs of one image in this range: groups g0..g1.
            let g0 = p % groups;
            let g1 = (g0 + p1 - p).min(groups);
            let (a, b) = (p * pair, (p + g1 - g0) * pair);
            // SAFETY: pair ranges are disjoint between threads.
            let dst = unsafe { ys.part(a, b) };
            let (ga, be) = (gamma.map(|v| &v[g0 * cg..g1 * cg]), beta.map(|v| &v[g0 * cg..g1 * cg]));
            group_norm(k, &x[a..b], 1, (g1 - g0) * cg, hw, g1 - g0, eps, ga, be, act, dst);
            p += g1 - g0;
        }
    });
}

#[inline(always)]
fn group_norm_generic(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    assert!(c.is_multiple_of(groups) && x.len() >= n * c * hw && y.len() >= n * c * hw, "group_norm shapes");
    let cg = c / groups;
    for img in 0..n {
        for g in 0..groups {
            let base = (img * c + g * cg) * hw;
            let xs = &x[base..base + cg * hw];
            let (mean, var) = mean_var(xs);
            let inv = 1.0 / (var + eps).sqrt();
            for ci in 0..cg {
                let ch = g * cg + ci;
                let (ga, be) = (gamma.map_or(1.0, |v| v[ch]), beta.map_or(0.0, |v| v[ch]));
                let (s, o) = (inv * ga, be - mean * inv * ga);
                let src = &xs[ci * hw..(ci + 1) * hw];
                let dst = &mut y[base + ci * hw..base + (ci + 1) * hw];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v * s + o;
                }
                act.apply_in_place(dst);
            }
        }
    }
}

#[inline(always)]
fn layer_norm_chw_generic(
    x: &[f32],
    n: usize,
    len: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    assert!(x.len() >= n * len && y.len() >= n * len, "layer_norm shapes");
    for img in 0..n {
        let xs = &x[img * len..(img + 1) * len];
        let (mean, var) = mean_var(xs);
        let inv = 1.0 / (var + eps).sqrt();
        let dst = &mut y[img * len..(img + 1) * len];
        for (i, (d, &v)) in dst.iter_mut().zip(xs).enumerate() {
            *d = (v - mean) * inv * gamma.map_or(1.0, |g| g[i]) + beta.map_or(0.0, |b| b[i]);
        }
        act.apply_in_place(dst);
    }
}

/// Layer normalisation over the channel axis at each position. `x` is `n` blocks of
/// `[c, positions]` when `channel_stride = positions` (NCHW) or `[positions, c]` when
/// `channel_stride = 1` (tokens, `[N, L, C]`).
pub fn layer_norm_channel(
    x: &[f32],
    n: usize,
    c: usize,
    positions: usize,
    channels_last: bool,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
) {
    let len = c * positions;
    assert!(x.len() >= n * len && y.len() >= n * len, "layer_norm shapes");
    let (cs, ps) = if channels_last { (1, c) } else { (positions, 1) };
    for img in 0..n {
        let base = img * len;
        for p in 0..positions {
            let at = |ch: usize| base + p * ps + ch * cs;
            let mean = (0..c).map(|ch| f64::from(x[at(ch)])).sum::<f64>() / c as f64;
            let var = (0..c)
                .map(|ch| {
                    let d = f64::from(x[at(ch)]) - mean;
                    d * d
                })
                .sum::<f64>()
                / c as f64;
            let inv = 1.0 / (var as f32 + eps).sqrt();
            for ch in 0..c {
                y[at(ch)] =
                    (x[at(ch)] - mean as f32) * inv * gamma.map_or(1.0, |g| g[ch]) + beta.map_or(0.0, |b| b[ch]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    /// Group norm in f64 from its definition (biased variance), then `act` in f32.
    fn naive_group_norm(
        x: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        g: &[f32],
        b: &[f32],
        act: Activation,
    ) -> Vec<f32> {
        let cg = c / groups;
        let mut y = vec![0f32; x.len()];
        for img in 0..n {
            for gi in 0..groups {
                let base = (img * c + gi * cg) * hw;
                let xs = &x[base..base + cg * hw];
                let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / xs.len() as f64;
                let var = xs.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / xs.len() as f64;
                for (i, &v) in xs.iter().enumerate() {
                    let ch = gi * cg + i / hw;
                    let z = (f64::from(v) - mean) / (var + f64::from(eps)).sqrt() * f64::from(g[ch]) + f64::from(b[ch]);
                    y[base + i] = act.apply(z as f32);
                }
            }
        }
        y
    }

    /// Within `tol` (relative, at least absolute below 1).
    fn close_within(got: &[f32], want: &[f32], tol: f32, what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}: [{i}] {a} vs {b}");
        }
    }

    crate::testing::tier_test! {
        fn group_and_layer_norms_match_their_definitions(k) {
            // (n, c, hw, groups, act): one group, several, odd sizes across the SIMD widths,
            // and a large offset that a one-pass variance would lose (E[x²] − E[x]² in f32 is off
            // by ~1 % there; the two-pass form only by the f32 mean's rounding, ulp(1000)/σ).
            for (n, c, hw, groups, act, offset) in [
                (2usize, 8usize, 37usize, 4usize, Activation::Silu, 0.0f32),
                (1, 32, 64, 32, Activation::None, 0.0),
                (3, 6, 5, 1, Activation::Relu, 0.0),
                (1, 4, 1024, 2, Activation::None, 1000.0),
            ] {
                let x: Vec<f32> = data(n * c * hw, 3).iter().map(|v| v * 3.0 + offset).collect();
                let g: Vec<f32> = data(c, 4).iter().map(|v| 1.0 + v).collect();
                let b = data(c, 5);
                let want = naive_group_norm(&x, n, c, hw, groups, 1e-5, &g, &b, act);
                let mut y = vec![f32::NAN; x.len()];
                group_norm(k, &x, n, c, hw, groups, 1e-5, Some(&g), Some(&b), act, &mut y);
                let tol = if offset > 0.0 { 1e-4 } else { 2e-5 };
                close_within(&y, &want, tol, &format!("group_norm {:?} n{n} c{c} hw{hw} g{groups}", k.tier()));
                // The threaded form gives the same bits for every thread count.
                for threads in [2, 3] {
                    let pool = crate::pool::Pool::new(threads).unwrap();
                    let mut yp = vec![f32::NAN; x.len()];
                    group_norm_par(k, &x, n, c, hw, groups, 1e-5, Some(&g), Some(&b), act, &mut yp, &pool);
                    assert!(yp.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
                }
                // LayerNorm over (C, H, W) is a group norm with one group and per-element
                // parameters: against the same definition with parameters per element.
                let len = c * hw;
                let ge: Vec<f32> = data(len, 6).iter().map(|v| 1.0 + v).collect();
                let be = data(len, 7);
                let mut want = naive_group_norm(&x, n, len, 1, 1, 1e-5, &ge, &be, Activation::None);
                act.apply_in_place(&mut want);
                let mut y = vec![f32::NAN; x.len()];
                layer_norm_chw(k, &x, n, len, 1e-5, Some(&ge), Some(&be), act, &mut y);
                close_within(&y, &want, tol, &format!("layer_norm_chw {:?} n{n} len{len}", k.tier()));
            }
        }
    }

    #[test]
    fn channel_layer_norm_matches_its_definition_in_both_layouts() {
        let (n, c, positions) = (2usize, 12usize, 7usize);
        let x: Vec<f32> = data(n * c * positions, 8).iter().map(|v| v * 2.0 + 5.0).collect();
        let g: Vec<f32> = data(c, 9).iter().map(|v| 1.0 + v).collect();
        let b = data(c, 10);
        for channels_last in [false, true] {
            let mut y = vec![f32::NAN; x.len()];
            layer_norm_channel(&x, n, c, positions, channels_last, 1e-5, Some(&g), Some(&b), &mut y);
            // Gather each position's channels into [n·positions, c] rows and normalise them as
            // groups of one image each.
            let at = |img: usize, p: usize, ch: usize| {
                img * c * positions + if channels_last { p * c + ch } else { ch * positions + p }
            };
            for img in 0..n {
                for p in 0..positions {
                    let row: Vec<f32> = (0..c).map(|ch| x[at(img, p, ch)]).collect();
                    let ones = vec![1.0; c];
                    let zeros = vec![0.0; c];
                    let norm = naive_group_norm(&row, 1, c, 1, 1, 1e-5, &ones, &zeros, Activation::None);
                    let want: Vec<f32> = (0..c).map(|ch| norm[ch] * g[ch] + b[ch]).collect();
                    let got: Vec<f32> = (0..c).map(|ch| y[at(img, p, ch)]).collect();
                    close_within(&got, &want, 2e-5, &format!("channels_last {channels_last} image {img} position {p}"));
                }
            }
        }
    }
}
