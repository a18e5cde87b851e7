//! Uniform affine quantization grids and their initialisation by the L2.4 grid search
//! (METHOD.md §2.2–2.3), in plain f32 arithmetic that reproduces the official code's rounding.
//!
//! A grid with `L = 2^bits` levels maps `x` to `q = clamp(round_half_even(x / Δ) + zp, 0, L−1)`
//! and back to `(q − zp)·Δ`. The search tries 100 clipping thresholds `r·i/100` (`r` = the
//! largest magnitude) and keeps the one with the smallest mean `|x − x̂|^2.4` (a strictly smaller
//! score wins, so ties keep the smaller threshold).
//!
//! Deviation from the official code, on purpose: weight grids always have the zero-point
//! `2^(bits−1)` (a signed grid `[−2^(bits−1), 2^(bits−1)−1]·Δ`). The official code derives the
//! zero-point as `−round(−thr/Δ)` in float, which comes out one lower (127 / 7) for about one
//! channel in seven and makes the integer weight range `[−127, 128]`, which does not fit an i8
//! (METHOD.md §2.3 ⚠). The candidates' scores are computed on the grid that is exported.

mod act;
pub use act::*;

/// Candidates of the 1-D search (`self.num` in the official code).
pub const SEARCH_STEPS: usize = 100;

/// `eps` of the official `calculate_qparams`: the smallest step.
pub const MIN_DELTA: f32 = 1e-8;

/// The exponent of the search's score.
pub const SCORE_P: f64 = 2.4;

/// Rounds half to even, as `torch.round`.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// An affine grid: step, zero-point (an integer held as f32, as in the official code) and levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// Step Δ.
    pub delta: f32,
    /// Zero-point, an integer in `0..levels`.
    pub zero_point: f32,
    /// `2^bits`.
    pub levels: u32,
}

impl Grid {
    /// `calculate_qparams(min, max)`: the range is widened to contain 0, `Δ = max((hi − lo) /
    /// (L − 1), 1e-8)`, `zp = clamp(−round(lo / Δ), 0, L − 1)`.
    pub fn from_range(min: f32, max: f32, bits: u32) -> Grid {
        let levels = 1u32 << bits;
        let qmax = (levels - 1) as f32;
        let lo = min.min(0.0);
        let hi = max.max(0.0);
        let delta = ((hi - lo) / qmax).max(MIN_DELTA);
        let zero_point = (0.0 - round_half_even(lo / delta)).clamp(0.0, qmax);
        Grid { delta, zero_point, levels }
    }

    /// The signed weight grid `[−2^(bits−1), 2^(bits−1) − 1]·Δ` for the clipping threshold
    /// `thr`: `Δ = max(2·thr / (L − 1), 1e-8)`, `zp = 2^(bits−1)`.
    pub fn signed(thr: f32, bits: u32) -> Grid {
        let levels = 1u32 << bits;
        let delta = ((thr - (-thr)) / (levels - 1) as f32).max(MIN_DELTA);
        Grid { delta, zero_point: (levels / 2) as f32, levels }
    }

    /// Largest level.
    pub fn qmax(&self) -> f32 {
        (self.levels - 1) as f32
    }

    /// The level of `x`: `clamp(round_half_even(x / Δ) + zp, 0, L − 1)`.
    #[inline]
    pub fn level(&self, x: f32) -> f32 {
        (round_half_even(x / self.delta) + self.zero_point).clamp(0.0, self.qmax())
    }

    /// `x` rounded to the grid and back.
    #[inline]
    pub fn fake(&self, x: f32) -> f32 {
        (self.level(x) - self.zero_point) * self.delta
    }

    /// The signed integer `level − zp` of `x`.
    #[inline]
    pub fn int(&self, x: f32) -> i32 {
        (self.level(x) - self.zero_point) as i32
    }
}

/// Which side of zero a tensor lives on (`one_side_dist`), decided once from the first tensor a
/// quantizer sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// All values ≥ 0: the grid is `[0, thr]` with zero-point 0.
    Pos,
    /// All values ≤ 0: `[−thr, 0]`.
    Neg,
    /// Both signs: `[−thr, thr]`.
    Two,
}

impl Side {
    /// `"pos" if min ≥ 0 else "neg" if max ≤ 0 else "no"`.
    pub fn of(x: &[f32]) -> Side {
        let (lo, hi) = min_max(x);
        if lo >= 0.0 {
            Side::Pos
        } else if hi <= 0.0 {
            Side::Neg
        } else {
            Side::Two
        }
    }

    /// The candidate range for threshold `thr`.
    fn range(self, thr: f32) -> (f32, f32) {
        match self {
            Side::Pos => (0.0, thr),
            Side::Neg => (-thr, 0.0),
            Side::Two => (-thr, thr),
        }
    }
}

/// Minimum and maximum (NaN-free input assumed; NaNs are skipped).
pub fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `|e|^2.4` for `e ≥ 0` without a libm call: `e² · 2^(0.4·log2 e)` with an atanh series for
/// the logarithm and a Taylor series for the power of two, both accurate to f32 rounding
/// (relative error below 2e-6), branch-free so the score loop vectorises.
#[inline(always)]
fn pow_2_4(e: f32) -> f32 {
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    let bits = e.to_bits();
    let mut k = ((bits >> 23) & 0xFF) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    let big = m > SQRT2;
    m = if big { m * 0.5 } else { m };
    k += i32::from(big);
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let ln_m = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0)))));
    let log2e = k as f32 + ln_m * std::f32::consts::LOG2_E;
    let y = (0.4 * log2e).max(-126.0);
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let yi = (y + MAGIC) - MAGIC;
    let f = (y - yi) * std::f32::consts::LN_2;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let scale = f32::from_bits(((yi as i32 + 127) as u32) << 23);
    e * e * p * scale
}

/// `mean |x − fake(x)|^2.4` over `x`: the error in f32 as the runtime computes `fake`, the power
/// by [`pow_2_4`], partial sums in f32 over 8 lanes × 512 elements, the total in f64. The
/// official code computes the same quantity in PyTorch f32; the two can only pick different
/// thresholds when candidates tie to within f32 rounding.
pub fn lp_score(x: &[f32], g: &Grid) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let (d, zp, qmax) = (g.delta, g.zero_point, g.qmax());
    const MAGIC: f32 = 12_582_912.0;
    let err = |v: f32| {
        // round_half_even(v / Δ) for |v / Δ| < 2^22 (larger ratios clip anyway).
        let r = (v / d).clamp(-4_194_304.0, 4_194_304.0);
        let q = (((r + MAGIC) - MAGIC) + zp).clamp(0.0, qmax);
        pow_2_4((v - (q - zp) * d).abs())
    };
    let mut total = 0f64;
    for block in x.chunks(4096) {
        let mut acc = [0f32; 8];
        let mut it = block.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                acc[l] += err(c[l]);
            }
        }
        let mut s: f64 = acc.iter().map(|&a| f64::from(a)).sum();
        for &v in it.remainder() {
            s += f64::from(err(v));
        }
        total += s;
    }
    total / x.len() as f64
}

/// The 100 thresholds `r / 100 · i` in f32, as the official code computes them.
fn thresholds(r: f32) -> impl Iterator<Item = f32> {
    (1..=SEARCH_STEPS).map(move |i| r / SEARCH_STEPS as f32 * i as f32)
}

/// The activation search (per tensor): the `(min, max)` of the best candidate range. `side` is
/// the quantizer's fixed [`Side`]. The grid is `Grid::from_range(min, max, bits)`.
pub fn search_tensor(x: &[f32], bits: u32, side: Side) -> (f32, f32) {
    let (lo, hi) = min_max(x);
    if x.is_empty() || !lo.is_finite() || !hi.is_finite() {
        return (0.0, 0.0);
    }
    let r = lo.abs().max(hi);
    best_range(x, bits, thresholds(r).map(|thr| side.range(thr)).collect(), side.range(r))
}

/// The candidate range `(min, max)` with the smallest [`lp_score`] (a strictly smaller score
/// wins, so ties keep the earlier candidate); `fallback` when no score is finite.
fn best_range(x: &[f32], bits: u32, cands: Vec<(f32, f32)>, fallback: (f32, f32)) -> (f32, f32) {
    let scores: Vec<f64> = if x.len() >= 1 << 14 {
        use rayon::prelude::*;
        cands.par_iter().map(|&(mn, mx)| lp_score(x, &Grid::from_range(mn, mx, bits))).collect()
    } else {
        cands.iter().map(|&(mn, mx)| lp_score(x, &Grid::from_range(mn, mx, bits))).collect()
    };
    let mut best = (f64::INFINITY, fallback);
    for (&c, &score) in cands.iter().zip(&scores) {
        if score < best.0 {
            best = (score, c);
        }
    }
    best.1
}

/// The weight search for one output channel: the threshold of the best signed grid
/// ([`Grid::signed`]).
pub fn search_channel(w: &[f32], bits: u32) -> Grid {
    let (lo, hi) = min_max(w);
    if w.is_empty() || !lo.is_finite() || !hi.is_finite() {
        return Grid::signed(0.0, bits);
    }
    let r = lo.abs().max(hi);
    let mut best = (f64::INFINITY, Grid::signed(r, bits));
    for thr in thresholds(r) {
        let g = Grid::signed(thr, bits);
        let score = lp_score(w, &g);
        if score < best.0 {
            best = (score, g);
        }
    }
    best.1
}

/// Per-output-channel weight grids: `w` holds `channels` rows of equal length (the output
/// channel is the slowest axis, as in `[out, in, kh, kw]` and `[out, in]`).
pub fn search_weights(w: &[f32], channels: usize, bits: u32) -> Vec<Grid> {
    assert!(channels > 0 && w.len().is_multiple_of(channels), "weights must have `channels` equal rows");
    use rayon::prelude::*;
    w.par_chunks_exact(w.len() / channels).map(|row| search_channel(row, bits)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_match_hand_computed_grids() {
        // Symmetric 8-bit over [-1.275, 1.275]: Δ = 2.55/255 = 0.01, zp = −round(−127.5) = 128.
        let g = Grid::from_range(-1.275, 1.275, 8);
        assert!((g.delta - 0.01).abs() < 1e-9);
        assert_eq!(g.zero_point, 128.0);
        // One-sided [0, 2.55]: zp 0, Δ 0.01; values below 0 clip to 0, above to 2.55.
        let g = Grid::from_range(0.3, 2.55, 8);
        assert_eq!((g.zero_point, g.levels), (0.0, 256));
        assert_eq!(g.fake(-1.0), 0.0);
        assert!((g.fake(9.0) - 2.55).abs() < 1e-6);
        // Degenerate range: Δ is the floor 1e-8.
        assert_eq!(Grid::from_range(0.0, 0.0, 8).delta, MIN_DELTA);
        // 4-bit [-0.75, 0.75]: Δ = 0.1, zp = −round(−7.5) = 8 (half to even).
        let g = Grid::from_range(-0.75, 0.75, 4);
        assert_eq!(g.zero_point, 8.0);
        assert_eq!(g.level(0.05), 8.0); // 0.5 rounds to 0 (even)
        assert_eq!(g.level(0.15), 10.0); // 1.5 rounds to 2
        assert_eq!(g.level(-5.0), 0.0);
        assert_eq!(g.int(5.0), 7);
        // The float zero-point quirk the signed weight grid avoids: thr/Δ is not exactly 127.5.
        let thr = 0.3f32;
        let quirky = Grid::from_range(-thr, thr, 8);
        let signed = Grid::signed(thr, 8);
        assert_eq!(signed.delta, quirky.delta);
        assert_eq!(signed.zero_point, 128.0);
        assert!(quirky.zero_point == 127.0 || quirky.zero_point == 128.0);
    }

    #[test]
    fn round_half_even_and_sides() {
        assert_eq!([0.5f32, 1.5, 2.5, -0.5, -1.5].map(round_half_even), [0.0, 2.0, 2.0, -0.0, -2.0]);
        assert_eq!(Side::of(&[0.0, 1.0]), Side::Pos);
        assert_eq!(Side::of(&[-1.0, 0.0]), Side::Neg);
        assert_eq!(Side::of(&[-1.0, 1.0]), Side::Two);
    }

    #[test]
    fn the_fast_power_matches_powf() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let e = 1e-6f32 * 1.0002f32.powi(i);
            let want = f64::from(e).powf(2.4);
            worst = worst.max((f64::from(pow_2_4(e)) - want).abs() / want);
        }
        assert!(worst < 2e-6, "relative error {worst}");
        assert_eq!(pow_2_4(0.0), 0.0);
        assert_eq!(pow_2_4(1.0), 1.0);
    }

    #[test]
    fn lp_score_is_the_mean_of_the_error_to_the_power_2_4() {
        // Grid Δ = 1 (8-bit over [-127.5, 127.5], zp 128): 0.25 → 0 (error 0.25); 3 → 3 (0);
        // 200 → clipped to 127 (error 73).
        let g = Grid::from_range(-127.5, 127.5, 8);
        assert_eq!(g.delta, 1.0);
        let want = (0.25f64.powf(2.4) + 0.0 + 73f64.powf(2.4)) / 3.0;
        assert!((lp_score(&[0.25, 3.0, 200.0], &g) - want).abs() < 2e-6 * want);
    }

    #[test]
    fn the_search_clips_a_lone_outlier_and_keeps_a_uniform_range() {
        // Uniform data on [-1, 1]: clipping anything costs more than it saves at 8 bits, so the
        // full range wins (i = 100).
        let x: Vec<f32> = (0..=2000).map(|i| -1.0 + i as f32 / 1000.0).collect();
        assert_eq!(search_tensor(&x, 8, Side::Two), (-1.0, 1.0));
        // 4-bit, Gaussian data (10 000 draws): the best clip lies well inside the largest value
        // (≈ 2.5σ for a 4-bit grid, the maximum is near 4σ), and it is the exhaustive argmin.
        let mut rng = crate::calib::Rng::new(9);
        let y: Vec<f32> = (0..10_000).map(|_| rng.normal() as f32).collect();
        let (mn, mx) = search_tensor(&y, 4, Side::Two);
        let r = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(mn == -mx && mx < 0.8 * r && mx > 1.5, "{mn} {mx} of {r}");
        let scores: Vec<f64> = thresholds(r).map(|t| lp_score(&y, &Grid::from_range(-t, t, 4))).collect();
        let best = scores.iter().enumerate().fold(0, |b, (i, &s)| if s < scores[b] { i } else { b });
        assert_eq!(mx, r / 100.0 * (best + 1) as f32);
        // One-sided data gets a [0, thr] grid.
        let z: Vec<f32> = (0..100).map(|i| i as f32 * 0.01).collect();
        let (mn, mx) = search_tensor(&z, 8, Side::Pos);
        assert_eq!(mn, 0.0);
        assert!(mx > 0.9 && mx <= 0.99 + 1e-6);
    }

    #[test]
    fn weight_search_works_per_channel_on_a_signed_grid() {
        // Channel 0: ±1 evenly; channel 1: tiny values with one large one.
        let mut w: Vec<f32> = (0..64).map(|i| -1.0 + 2.0 * i as f32 / 63.0).collect();
        w.extend((0..63).map(|i| 0.001 * (i as f32 - 31.0)));
        w.push(0.5);
        let g = search_weights(&w, 2, 4);
        assert_eq!(g.len(), 2);
        assert!(g.iter().all(|g| g.zero_point == 8.0 && g.levels == 16));
        // Channel 0 keeps (nearly) its full range, channel 1 does not clip below its bulk.
        assert!(g[0].delta > 1.5 / 15.0, "{:?}", g[0]);
        assert!(g[1].delta < g[0].delta);
        // Every integer weight fits the signed 4-bit range.
        for (row, g) in w.chunks(64).zip(&g) {
            assert!(row.iter().all(|&v| (-8..=7).contains(&g.int(v))));
        }
    }

    #[test]
    fn minmax_percentile_and_asymmetric_search_ranges() {
        let b1: Vec<f32> = (0..=1000).map(|i| -0.25 + 6.25 * i as f32 / 1000.0).collect(); // [-0.25, 6]
        let b2: Vec<f32> = b1.iter().map(|v| v * 2.0).collect(); // [-0.5, 12]
        let mut m = ActRange::with_init(8, ActInit::MinMax);
        m.observe(&b1);
        m.observe(&b2);
        assert_eq!(m.grid(), Some(Grid::from_range(-0.5, 12.0, 8)));
        // Asymmetric: zp near 0.25/Δ instead of 128, all levels over [-0.5, 12].
        let g = m.grid().unwrap();
        assert_eq!(g.zero_point, 10.0);
        // Percentile 90 of a uniform ramp 0..=1000: ranks 100 and 900; a second batch ×2 averages.
        let r: Vec<f32> = (0..=1000).map(|i| i as f32).collect();
        let r2: Vec<f32> = r.iter().map(|v| v * 2.0).collect();
        assert_eq!(quantiles(&r, 0.1, 0.9), (100.0, 900.0));
        let mut p = ActRange::with_init(8, ActInit::Percentile(90.0));
        p.observe(&r);
        p.observe(&r2);
        assert_eq!(p.grid(), Some(Grid::from_range(150.0, 1350.0, 8)));
        // The asymmetric search keeps the whole of a uniform [-0.25, 6] at 8 bits (clipping
        // costs more than it saves), where the symmetric one spans [-6, 6].
        assert_eq!(search_tensor_asym(&b1, 8), (-0.25, 6.0));
        assert_eq!(search_tensor(&b1, 8, Side::Two), (-6.0, 6.0));
        let mut a = ActRange::with_init(8, ActInit::MseAsym);
        a.observe(&b1);
        let (got, want) = (a.grid().unwrap(), Grid::from_range(-0.25, 6.0, 8));
        assert!((got.delta - want.delta).abs() < 1e-6 && got.zero_point == want.zero_point, "{got:?}");
        assert!(a.grid().unwrap().delta < 0.55 * Grid::from_range(-6.0, 6.0, 8).delta);
    }

    #[test]
    fn activation_ranges_follow_the_official_moving_average() {
        let mut a = ActRange::new(8);
        assert!(a.grid().is_none());
        let b1: Vec<f32> = (0..=200).map(|i| -1.0 + i as f32 / 100.0).collect(); // best range ±1
        let b2: Vec<f32> = b1.iter().map(|v| v * 3.0).collect(); // best range ±3
        a.observe(&b1);
        let first = (-0.1f32 + -0.9f32, 0.1f32 + 0.9f32);
        assert_eq!(a.grid(), Some(Grid::from_range(first.0, first.1, 8)));
        a.observe(&b2);
        let (mn, mx) = (0.1 * -3.0 + 0.9 * first.0, 0.1 * 3.0 + 0.9 * first.1);
        assert_eq!(a.grid(), Some(Grid::from_range(mn, mx, 8)));
        assert_eq!(a.side(), Some(Side::Two));
    }

    #[test]
    fn a_layer_choice_folds_every_candidate_as_its_own_init_would() {
        let b1: Vec<f32> =
            (0..10_000).map(|i| (i as f32 * 0.37).sin() * 2.0 + if i == 7 { 40.0 } else { 0.0 }).collect();
        let b2: Vec<f32> = b1.iter().map(|v| v * 0.5 - 0.3).collect();
        let mut l = ActRange::with_init(8, ActInit::Layer);
        assert!(l.candidates().is_empty());
        l.observe(&b1);
        l.observe(&b2);
        let cands = l.candidates();
        assert_eq!(cands.len(), LAYER_CANDIDATES.len());
        for (c, got) in LAYER_CANDIDATES.iter().zip(&cands) {
            let mut alone = ActRange::with_init(8, *c);
            alone.observe(&b1);
            alone.observe(&b2);
            assert_eq!(Some(*got), alone.grid(), "{c:?}");
        }
        // Before a choice the first candidate quantizes; a choice switches the range.
        assert_eq!(l.grid(), Some(cands[0]));
        l.choose(4);
        assert_eq!(l.grid(), Some(cands[4]));
        // The outlier: minmax spans it, the 99th percentile clips it.
        assert!(cands[4].delta > 5.0 * cands[3].delta);
        assert_eq!(ActInit::from_name("layer", 0.0), Some(ActInit::Layer));
        assert_eq!(ActInit::Layer.name(), "layer");
    }
}
