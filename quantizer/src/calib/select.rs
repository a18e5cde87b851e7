//! Choosing which sampler step each trajectory contributes: TDAC (METHOD.md §1.4–1.7) and the
//! baselines `uniform` (Q-Diffusion), `ndtc` (PTQ4DM) and `random`.
//!
//! Steps are indexed in denoising order (`k = 0` is the first, noisiest model call). Every
//! method returns one step index per trajectory: calibration sample `j` is trajectory `j` at
//! step `idx[j]`.

use super::rng::Rng;

/// How the calibration samples are spread over the steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// TDAC: per-step counts from density and variety of the feature maps.
    Tdac {
        /// Weight of the variety score (`--lambda`).
        lambda: f64,
        /// Density threshold on the mean squared feature distance (`--eps`).
        eps: Eps,
    },
    /// Q-Diffusion's uniform selection: every 5th step (METHOD.md §1.8, `generate_t` "Qdiff").
    Uniform,
    /// PTQ4DM's normally distributed selection: steps drawn from N(0.4, 0.4)·T, min-max
    /// rescaled to [0, T] and truncated.
    Ndtc,
    /// Each trajectory at a uniformly random step.
    Random,
}

impl Method {
    /// `tdac`, `uniform`, `ndtc` or `random`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Tdac { .. } => "tdac",
            Method::Uniform => "uniform",
            Method::Ndtc => "ndtc",
            Method::Random => "random",
        }
    }
}

/// TDAC's density threshold ε on the mean squared feature distance between two steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Eps {
    /// A given value (the official code uses 3.0, fitted to CIFAR-10's features).
    Value(f64),
    /// The median of the step pairs' measured distances on this model's trajectories: half the
    /// pairs count as neighbours, so the density weighs the steps on any model (a fixed value
    /// carried to another model can put every pair, or none, within ε — mnist-unet at 3.0).
    Median,
}

impl Eps {
    /// `median`, or a finite non-negative number.
    pub fn parse(s: &str) -> Option<Eps> {
        if s == "median" {
            return Some(Eps::Median);
        }
        s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(Eps::Value)
    }
}

impl std::fmt::Display for Eps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Eps::Value(v) => write!(f, "{v}"),
            Eps::Median => f.write_str("median"),
        }
    }
}

/// The TDAC scores of every step and the counts they give.
#[derive(Clone, Debug, PartialEq)]
pub struct TdacScores {
    /// D: for each step, the number of other steps whose feature map is within ε.
    pub density: Vec<u32>,
    /// V: for each step, Σ over the other steps and over every (image, position) of
    /// `1 − cos` along the channel axis.
    pub variety: Vec<f64>,
    /// D̂: min-max scaled density.
    pub density_scaled: Vec<f64>,
    /// V̂: min-max scaled variety.
    pub variety_scaled: Vec<f64>,
    /// S = D̂ + λ·V̂.
    pub score: Vec<f64>,
    /// Samples per step, summing to the calibration size.
    pub counts: Vec<usize>,
    /// Minimum, median and maximum over all step pairs of the mean squared feature distance —
    /// the quantity `--eps` thresholds (NaN when read from a set written before it was kept).
    pub pair_mse: [f64; 3],
    /// The ε the density was counted with (`--eps median` resolved to its value; NaN when read
    /// from a set written before it was kept).
    pub eps: f64,
}

impl TdacScores {
    /// When the density is the same at every step (every pair within ε, or none), its scaled
    /// score is zero everywhere and the selection follows the variety alone — silently, in the
    /// official code (which divides by zero there). Returns a one-line warning that says so and
    /// suggests an ε inside the measured distances; `None` when the density discriminates.
    pub fn constant_density_warning(&self) -> Option<String> {
        let eps = self.eps;
        let d0 = *self.density.first()?;
        if self.density.len() < 2 || self.density.iter().any(|&d| d != d0) {
            return None;
        }
        let [lo, med, hi] = self.pair_mse;
        let range = if lo.is_finite() {
            format!(
                "; the step pairs' mean squared feature distance spans {lo:.3e} .. {hi:.3e}, median {med:.3e}: --eps median splits them"
            )
        } else {
            String::new()
        };
        Some(format!(
            "TDAC density is {d0} at every step with --eps {eps}, so it does not weigh the steps and the selection follows the variety alone{range}"
        ))
    }
}

/// The feature maps of every step: `steps` tensors of `[images, channels, positions]`.
#[derive(Clone, Copy, Debug)]
pub struct Features<'a> {
    /// One slice per step, each `images · channels · positions` long.
    pub maps: &'a [Vec<f32>],
    /// Images per map.
    pub images: usize,
    /// Channels.
    pub channels: usize,
    /// Spatial positions (H·W, or tokens).
    pub positions: usize,
}

/// `eps` of `nn.CosineSimilarity`: each vector's norm is clamped to at least this.
const COS_EPS: f64 = 1e-6;

/// Density and variety of every step (both symmetric, so one pass over the unordered pairs), the
/// minimum, median and maximum of the pairs' mean squared distance (NaN with one step), and the ε
/// the density was counted with (`Eps::Median` with one step: 0).
pub fn density_variety(f: &Features<'_>, eps: Eps) -> (Vec<u32>, Vec<f64>, [f64; 3], f64) {
    let t = f.maps.len();
    let len = f.images * f.channels * f.positions;
    assert!(f.maps.iter().all(|m| m.len() == len), "every feature map must be images·channels·positions long");
    // Unit vectors along the channel axis, per (image, position).
    let unit: Vec<Vec<f32>> = f.maps.iter().map(|m| normalise_channels(m, f)).collect();
    let mut density = vec![0u32; t];
    let mut variety = vec![0f64; t];
    let pairs: Vec<(usize, usize)> = (0..t).flat_map(|k| (k + 1..t).map(move |j| (k, j))).collect();
    let results: Vec<(f64, f64)> = rayon_map(&pairs, |&(k, j)| {
        let mse = mean_sq_diff(&f.maps[k], &f.maps[j]);
        let cos_sum = channel_cos_sum(&unit[k], &unit[j], f);
        (mse, cos_sum)
    });
    let mut mses: Vec<f64> = results.iter().map(|r| r.0).collect();
    mses.sort_by(f64::total_cmp);
    let pair_mse = match mses.len() {
        0 => [f64::NAN; 3],
        m => [mses[0], mses[m / 2], mses[m - 1]],
    };
    let eps = match eps {
        Eps::Value(v) => v,
        Eps::Median if mses.is_empty() => 0.0,
        Eps::Median => pair_mse[1],
    };
    let per_pair_positions = (f.images * f.positions) as f64;
    for (&(k, j), &(mse, cos_sum)) in pairs.iter().zip(&results) {
        if mse <= eps {
            density[k] += 1;
            density[j] += 1;
        }
        let v = per_pair_positions - cos_sum;
        variety[k] += v;
        variety[j] += v;
    }
    (density, variety, pair_mse, eps)
}

fn rayon_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    items.par_iter().map(f).collect()
}

fn normalise_channels(m: &[f32], f: &Features<'_>) -> Vec<f32> {
    let (c, p) = (f.channels, f.positions);
    let mut out = vec![0f32; m.len()];
    for b in 0..f.images {
        let img = &m[b * c * p..(b + 1) * c * p];
        let o = &mut out[b * c * p..(b + 1) * c * p];
        for pos in 0..p {
            let norm = (0..c).map(|ch| f64::from(img[ch * p + pos]).powi(2)).sum::<f64>().sqrt().max(COS_EPS);
            for ch in 0..c {
                o[ch * p + pos] = (f64::from(img[ch * p + pos]) / norm) as f32;
            }
        }
    }
    out
}

fn mean_sq_diff(a: &[f32], b: &[f32]) -> f64 {
    let mut s = 0f64;
    for ch in a.chunks(4096).zip(b.chunks(4096)) {
        let part: f32 = ch.0.iter().zip(ch.1).map(|(x, y)| (x - y) * (x - y)).sum();
        s += f64::from(part);
    }
    s / a.len() as f64
}

fn channel_cos_sum(a: &[f32], b: &[f32], f: &Features<'_>) -> f64 {
    let (c, p) = (f.channels, f.positions);
    let mut dots = vec![0f32; p];
    let mut total = 0f64;
    for img in 0..f.images {
        dots.fill(0.0);
        let (ia, ib) = (&a[img * c * p..(img + 1) * c * p], &b[img * c * p..(img + 1) * c * p]);
        for ch in 0..c {
            for ((d, x), y) in dots.iter_mut().zip(&ia[ch * p..(ch + 1) * p]).zip(&ib[ch * p..(ch + 1) * p]) {
                *d += x * y;
            }
        }
        total += dots.iter().map(|&d| f64::from(d)).sum::<f64>();
    }
    total
}

/// `(v − min) / (max − min)`; all zeros when every value is equal (the official code divides
/// by zero there and gets NaN; zero keeps the other score in charge).
pub fn min_max_scale(v: &[f64]) -> Vec<f64> {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi > lo { v.iter().map(|x| (x - lo) / (hi - lo)).collect() } else { vec![0.0; v.len()] }
}

/// Per-step counts from scores (METHOD.md §1.6): `round_half_even(S_k / ΣS · n)`, then the
/// fix-up — a shortfall adds one to the steps with the largest counts (descending, ties to the
/// earlier step), a surplus takes one from every step with a positive count walking from the
/// last step back, until the total is `n`. Uniform counts when every score is 0.
pub fn counts_from_scores(score: &[f64], n: usize) -> Vec<usize> {
    let t = score.len();
    assert!(t > 0, "no steps");
    let total: f64 = score.iter().sum();
    let mut x: Vec<i64> = if total > 0.0 {
        score.iter().map(|s| (s / total * n as f64).round_ties_even() as i64).collect()
    } else {
        (0..t).map(|k| (n * (k + 1) / t - n * k / t) as i64).collect()
    };
    let mut err = n as i64 - x.iter().sum::<i64>();
    if err >= 0 {
        let mut order: Vec<usize> = (0..t).collect();
        order.sort_by(|&a, &b| x[b].cmp(&x[a]));
        let mut i = 0;
        while err > 0 {
            x[order[i % t]] += 1;
            err -= 1;
            i += 1;
        }
    } else {
        while err < 0 {
            for k in (0..t).rev() {
                if err == 0 {
                    break;
                }
                if x[k] > 0 {
                    x[k] -= 1;
                    err += 1;
                }
            }
        }
    }
    x.into_iter().map(|v| v as usize).collect()
}

/// TDAC's scores and counts for `n` samples.
pub fn tdac(f: &Features<'_>, lambda: f64, eps: Eps, n: usize) -> TdacScores {
    let (density, variety, pair_mse, eps) = density_variety(f, eps);
    let dd: Vec<f64> = density.iter().map(|&d| f64::from(d)).collect();
    let density_scaled = min_max_scale(&dd);
    let variety_scaled = min_max_scale(&variety);
    let score: Vec<f64> = density_scaled.iter().zip(&variety_scaled).map(|(d, v)| d + lambda * v).collect();
    let counts = counts_from_scores(&score, n);
    TdacScores { density, variety, density_scaled, variety_scaled, score, counts, pair_mse, eps }
}

/// Step indices with `counts[k]` copies of `k`, randomly permuted: entry `j` is the step of
/// trajectory `j`.
pub fn assign(counts: &[usize], rng: &mut Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = counts.iter().enumerate().flat_map(|(k, &c)| std::iter::repeat_n(k, c)).collect();
    rng.shuffle(&mut idx);
    idx
}

/// Q-Diffusion's uniform counts over `steps` steps for `n` samples (`generate_t` "Qdiff"):
/// every 5th step gets `⌊n / (steps/5)⌋`, the last step the remainder.
pub fn uniform_counts(steps: usize, n: usize) -> Vec<usize> {
    let vert = 5usize;
    let per = (n as f64 / (steps as f64 / vert as f64)) as usize;
    let mut c = vec![0usize; steps];
    let mut used = 0usize;
    for (k, ck) in c.iter_mut().enumerate().take(steps.saturating_sub(1)) {
        if k % vert == 0 {
            *ck = per.min(n - used);
            used += *ck;
        }
    }
    c[steps - 1] = n - used;
    c
}

/// PTQ4DM's normally distributed steps for `n` samples: `N(0.4, 0.4)·T`, min-max rescaled to
/// `[0, T]`, truncated (the maximum lands on `T`, clamped to `T − 1`).
pub fn ndtc_steps(steps: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let v: Vec<f64> = (0..n).map(|_| (0.4 + 0.4 * rng.normal()) * steps as f64).collect();
    let scaled = min_max_scale(&v);
    scaled.iter().map(|s| ((s * steps as f64) as usize).min(steps - 1)).collect()
}

/// The step of every trajectory for a non-TDAC method (`n` trajectories, `steps` steps).
pub fn baseline_steps(method: Method, steps: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    match method {
        Method::Uniform => assign(&uniform_counts(steps, n), rng),
        Method::Ndtc => ndtc_steps(steps, n, rng),
        Method::Random => (0..n).map(|_| rng.below(steps as u64) as usize).collect(),
        Method::Tdac { .. } => unreachable!("TDAC needs feature maps"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps, one image, two channels, two positions, hand-computed.
    #[test]
    fn density_and_variety_match_hand_computed_values() {
        // F0 = [[1, 0], [0, 1]] (channel-major: channel 0 = (1, 0), channel 1 = (0, 1)):
        //   position 0 vector (1, 0), position 1 vector (0, 1).
        // F1: position 0 (1, 0), position 1 (0, 2)   → same directions as F0.
        // F2: position 0 (0, 3), position 1 (3, 0)   → orthogonal to F0 and F1 at both positions.
        let maps = vec![vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0, 2.0], vec![0.0, 3.0, 3.0, 0.0]];
        let f = Features { maps: &maps, images: 1, channels: 2, positions: 2 };
        // mse(F0,F1) = (0+0+0+1)/4 = 0.25; mse(F0,F2) = (1+9+9+1)/4 = 5; mse(F1,F2) = (1+9+9+4)/4 = 5.75.
        let (d, v, mse, eps) = density_variety(&f, Eps::Value(3.0));
        assert_eq!(eps, 3.0);
        assert_eq!(d, vec![1, 1, 0]);
        assert_eq!(mse, [0.25, 5.0, 5.75]);
        // 1 − cos: F0/F1 → 0 at both positions; F0/F2 and F1/F2 → 1 at both positions.
        assert_eq!(v, vec![2.0, 2.0, 4.0]);
        let (d, _, _, _) = density_variety(&f, Eps::Value(5.0)); // inclusive threshold
        assert_eq!(d, vec![2, 1, 1]);
        // The median distance (5.0) as ε: the same count, F0's two pairs within it.
        let (d, _, _, eps) = density_variety(&f, Eps::Median);
        assert_eq!((d, eps), (vec![2, 1, 1], 5.0));
    }

    #[test]
    fn tdac_scores_and_counts_are_the_official_formula() {
        let maps = vec![vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0, 2.0], vec![0.0, 3.0, 3.0, 0.0]];
        let f = Features { maps: &maps, images: 1, channels: 2, positions: 2 };
        let s = tdac(&f, 1.2, Eps::Value(3.0), 10);
        assert_eq!(s.density_scaled, vec![1.0, 1.0, 0.0]);
        assert_eq!(s.variety_scaled, vec![0.0, 0.0, 1.0]);
        assert_eq!(s.score, vec![1.0, 1.0, 1.2]);
        // 10·(1, 1, 1.2)/3.2 = 3.125, 3.125, 3.75 → 3, 3, 4 (sum 10, no fix-up).
        assert_eq!(s.counts, vec![3, 3, 4]);
        assert_eq!(s.constant_density_warning(), None, "density 1, 1, 0 discriminates");
    }

    #[test]
    fn a_constant_density_is_reported_with_an_eps_inside_the_distances() {
        let maps = vec![vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0, 2.0], vec![0.0, 3.0, 3.0, 0.0]];
        let f = Features { maps: &maps, images: 1, channels: 2, positions: 2 };
        for eps in [0.1, 10.0] {
            // ε below every distance (density 0, 0, 0) or above all of them (2, 2, 2).
            let s = tdac(&f, 1.2, Eps::Value(eps), 10);
            assert_eq!(s.density_scaled, vec![0.0; 3]);
            let w = s.constant_density_warning().expect("a constant density is reported");
            assert!(w.contains(&format!("--eps {eps}")) && w.contains("median 5.000e0: --eps median"), "{w}");
        }
    }

    #[test]
    fn the_count_fix_up_matches_the_official_rules() {
        // Shortfall: 4·(1,1,1)/3 = 1.33 → 1,1,1 (sum 3): one more to the largest, ties → first.
        assert_eq!(counts_from_scores(&[1.0, 1.0, 1.0], 4), vec![2, 1, 1]);
        // Shortfall with distinct counts: (0.5, 0.25, 0.25)·2 = 1, 0.5, 0.5 → 1, 0, 0: the missing
        // sample goes to the step with the largest count, not to the ones rounded down.
        assert_eq!(counts_from_scores(&[0.5, 0.25, 0.25], 2), vec![2, 0, 0]);
        // Surplus: (0.125, 0.4375, 0.4375)·6 = 0.75, 2.625, 2.625 → 1, 3, 3: the last step gives one.
        assert_eq!(counts_from_scores(&[0.125, 0.4375, 0.4375], 6), vec![1, 3, 2]);
        // Surplus: (0.5, 0.5, 0.5, 0.5)·6/2 = 1.5 each → 2,2,2,2 (sum 8): take one from the last
        // steps walking back: 2,2,1,1.
        assert_eq!(counts_from_scores(&[0.5; 4], 6), vec![2, 2, 1, 1]);
        // All-zero scores: uniform.
        assert_eq!(counts_from_scores(&[0.0; 4], 6), vec![1, 2, 1, 2]);
        for n in [1usize, 7, 100, 1024] {
            let s: Vec<f64> = (0..37).map(|i| ((i * 7919) % 13) as f64).collect();
            assert_eq!(counts_from_scores(&s, n).iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn assignment_gives_every_trajectory_one_step() {
        let mut rng = Rng::new(7);
        let idx = assign(&[3, 0, 2], &mut rng);
        assert_eq!(idx.len(), 5);
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 0, 0, 2, 2]);
        assert_eq!(idx, assign(&[3, 0, 2], &mut Rng::new(7)), "deterministic for a seed");
    }

    #[test]
    fn baselines_follow_their_definitions() {
        // 100 steps, 1024 samples: 20 steps (0, 5, …, 95) with ⌊1024/20⌋ = 51, the last step
        // the remaining 1024 − 20·51 = 4.
        let c = uniform_counts(100, 1024);
        assert_eq!(c.iter().sum::<usize>(), 1024);
        assert_eq!((c[0], c[5], c[95], c[99], c[1]), (51, 51, 51, 4, 0));
        let mut rng = Rng::new(3);
        let s = ndtc_steps(100, 4096, &mut rng);
        assert!(s.iter().all(|&k| k < 100));
        assert!(s.contains(&0) && s.contains(&99), "min-max rescaled to the full range");
        let mean = s.iter().sum::<usize>() as f64 / s.len() as f64;
        assert!((30.0..70.0).contains(&mean), "{mean}");
        let r = baseline_steps(Method::Random, 10, 1000, &mut rng);
        assert!(r.iter().all(|&k| k < 10) && (0..10).all(|k| r.contains(&k)));
    }
}
