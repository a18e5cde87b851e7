//! Feature statistics and the Fréchet distance between two Gaussians,
//! `|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½`.
//!
//! `tr (Σ₁Σ₂)^½` is the sum of the square roots of the eigenvalues of `Σ₁Σ₂`, which are those
//! of the symmetric `Lᵀ Σ₁ L` with `Σ₂ = L Lᵀ` (Cholesky). Dimensions with zero variance in both
//! sets contribute nothing and are dropped first; if `Σ₂` is still singular the other one is
//! tried, then a diagonal jitter of 10⁻¹⁰ … 10⁻⁶ × the mean variance (pytorch-fid adds 10⁻⁶
//! absolute in that case). The eigenvalues come from a Householder tridiagonalisation and
//! implicit QL, all in f64, as is the covariance itself (f32 products would put noise into the
//! zero eigenvalues of a covariance of fewer samples than dimensions).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::{EvalError, Result, bad, io_err};

/// Mean and covariance (unbiased, `n − 1`) of `n` feature vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Samples.
    pub n: usize,
    /// Dimension.
    pub dim: usize,
    /// Mean, `dim`.
    pub mean: Vec<f64>,
    /// Covariance, `dim × dim` row-major.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `n` rows of `dim` features.
    pub fn from_features(x: &[f32], n: usize, dim: usize) -> Result<FeatureStats> {
        if n < 2 || x.len() != n * dim {
            return Err(EvalError::Invalid(format!("statistics need at least 2 samples of {dim} features, got {n}")));
        }
        let mut mean = vec![0f64; dim];
        for row in x.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Σ (x − μ)(x − μ)ᵀ in f64 throughout: with fewer samples than dimensions Σ is singular
        // and f32 rounding would turn its zero eigenvalues into noise whose square roots add up
        // (≈0.02 FID at 200 samples against numpy's f64). Upper triangle, rows interleaved over
        // the cores in groups of 4 that share each streamed sample row.
        let mut cov = vec![0f64; dim * dim];
        const BLOCK: usize = 256;
        let mut xc = vec![0f64; BLOCK * dim];
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(dim.div_ceil(4)).max(1);
        for s0 in (0..n).step_by(BLOCK) {
            let b = BLOCK.min(n - s0);
            for (r, row) in x[s0 * dim..(s0 + b) * dim].chunks_exact(dim).enumerate() {
                for ((o, &v), &m) in xc[r * dim..(r + 1) * dim].iter_mut().zip(row).zip(&mean) {
                    *o = f64::from(v) - m;
                }
            }
            let xb = &xc[..b * dim];
            // Groups of 4 rows, dealt round-robin so each thread gets a share of the triangle.
            let mut groups: Vec<Vec<(usize, &mut [f64])>> = (0..threads).map(|_| Vec::new()).collect();
            for (g, rows) in cov.chunks_mut(4 * dim).enumerate() {
                groups[g % threads].push((4 * g, rows));
            }
            std::thread::scope(|sc| {
                for mine in groups {
                    sc.spawn(move || {
                        for (i0, rows) in mine {
                            let nr = rows.len() / dim;
                            for xr in xb.chunks_exact(dim) {
                                let tail = &xr[i0..];
                                for (r, crow) in rows.chunks_exact_mut(dim).enumerate().take(nr) {
                                    let a = xr[i0 + r];
                                    if a != 0.0 {
                                        crow[i0..].iter_mut().zip(tail).for_each(|(c, &v)| *c += a * v);
                                    }
                                }
                            }
                        }
                    });
                }
            });
        }
        for i in 0..dim {
            for j in 0..i {
                cov[i * dim + j] = cov[j * dim + i];
            }
        }
        cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
        Ok(FeatureStats { n, dim, mean, cov })
    }

    /// Writes the statistics as safetensors (`mean`, `cov`, f64) with `meta`.
    pub fn save(&self, w: &mut impl std::io::Write, meta: &HashMap<String, String>) -> Result<()> {
        struct F64<'a>(&'a [f64], Vec<usize>);
        impl View for F64<'_> {
            fn dtype(&self) -> Dtype {
                Dtype::F64
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> std::borrow::Cow<'_, [u8]> {
                std::borrow::Cow::Owned(self.0.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            fn data_len(&self) -> usize {
                self.0.len() * 8
            }
        }
        let mut meta = meta.clone();
        meta.insert("n".into(), self.n.to_string());
        let views = [("mean", F64(&self.mean, vec![self.dim])), ("cov", F64(&self.cov, vec![self.dim, self.dim]))];
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| EvalError::Invalid(format!("cannot serialise statistics: {e}")))?;
        w.write_all(&bytes).map_err(|e| EvalError::Invalid(format!("cannot write statistics: {e}")))
    }

    /// Reads statistics written by [`FeatureStats::save`]; returns them and their metadata.
    pub fn load(path: &Path) -> Result<(FeatureStats, HashMap<String, String>)> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, format!("not a statistics file: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, format!("not a statistics file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let t = st.tensor(name).map_err(|_| bad(path, format!("no `{name}` tensor: not a statistics file")))?;
            if t.dtype() != Dtype::F64 {
                return Err(bad(path, format!("`{name}` is {:?}, F64 expected", t.dtype())));
            }
            Ok((
                t.shape().to_vec(),
                t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8"))).collect(),
            ))
        };
        let (ms, mean) = get("mean")?;
        let (cs, cov) = get("cov")?;
        let dim = mean.len();
        if ms.len() != 1 || cs != [dim, dim] {
            return Err(bad(path, format!("mean {ms:?} and cov {cs:?} do not match")));
        }
        let n = meta.get("n").and_then(|s| s.parse().ok()).ok_or_else(|| bad(path, "no sample count `n`"))?;
        Ok((FeatureStats { n, dim, mean, cov }, meta))
    }
}

/// The Fréchet distance between `a` and `b` (`b` is the reference: its covariance is
/// factorised first).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(EvalError::Invalid(format!("statistics of {} and {} features", a.dim, b.dim)));
    }
    let d = a.dim;
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |s: &FeatureStats| (0..d).map(|i| s.cov[i * d + i]).sum::<f64>();
    let (tr_a, tr_b) = (tr(a), tr(b));
    // Dimensions where both variances vanish add nothing.
    let keep: Vec<usize> = (0..d).filter(|&i| a.cov[i * d + i] > 0.0 || b.cov[i * d + i] > 0.0).collect();
    let sub = |s: &FeatureStats| -> Vec<f64> {
        let mut m = Vec::with_capacity(keep.len() * keep.len());
        for &i in &keep {
            m.extend(keep.iter().map(|&j| s.cov[i * d + j]));
        }
        m
    };
    let (sa, sb) = (sub(a), sub(b));
    let m = keep.len();
    let mut factor = None;
    for (x, y) in [(&sa, &sb), (&sb, &sa)] {
        if let Some(l) = cholesky(y, m, 0.0) {
            factor = Some((x, l));
            break;
        }
    }
    if factor.is_none() {
        let mean_var = (0..m).map(|i| sb[i * m + i]).sum::<f64>() / m.max(1) as f64;
        for eps in [1e-10, 1e-9, 1e-8, 1e-7, 1e-6] {
            if let Some(l) = cholesky(&sb, m, eps * mean_var) {
                factor = Some((&sa, l));
                break;
            }
        }
    }
    let (x, l) = factor.ok_or_else(|| EvalError::Invalid("covariances are not positive semi-definite".into()))?;
    // Lᵀ X L.
    let xl = matmul(x, &l, m);
    let lt = transpose(&l, m);
    let mut s = matmul(&lt, &xl, m);
    let eig = symmetric_eigenvalues(&mut s, m)?;
    let tr_sqrt: f64 = eig.iter().map(|&v| v.max(0.0).sqrt()).sum();
    Ok(mean_term + tr_a + tr_b - 2.0 * tr_sqrt)
}

/// Lower Cholesky factor of `s + jitter·I` (row-major), `None` if not positive definite.
fn cholesky(s: &[f64], n: usize, jitter: f64) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let dot: f64 = ri.iter().zip(rj).map(|(a, b)| a * b).sum();
            if i == j {
                let v = s[i * n + i] + jitter - dot;
                if v.is_nan() || v <= 1e-300 {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = (s[i * n + j] - dot) / l[j * n + j];
            }
        }
    }
    Some(l)
}

fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

/// `a·b` for square row-major matrices, rows split over the available cores.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    if n == 0 {
        return c;
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.div_ceil(8));
    let rows_per = n.div_ceil(threads).div_ceil(8) * 8;
    std::thread::scope(|s| {
        for (t, cblock) in c.chunks_mut(rows_per * n).enumerate() {
            s.spawn(move || {
                let r0 = t * rows_per;
                for (bi, cb) in cblock.chunks_mut(8 * n).enumerate() {
                    let i0 = r0 + bi * 8;
                    let rows = cb.len() / n;
                    for k in 0..n {
                        let brow = &b[k * n..(k + 1) * n];
                        for ii in 0..rows {
                            let aik = a[(i0 + ii) * n + k];
                            if aik != 0.0 {
                                cb[ii * n..(ii + 1) * n].iter_mut().zip(brow).for_each(|(c, &bv)| *c += aik * bv);
                            }
                        }
                    }
                }
            });
        }
    });
    c
}

/// Eigenvalues of the symmetric `a` (`n×n`, destroyed): Householder reduction to tridiagonal
/// form, then implicit QL with Wilkinson shifts.
pub(crate) fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Result<Vec<f64>> {
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    let mut v = vec![0f64; n];
    let mut p = vec![0f64; n];
    for i in (1..n).rev() {
        d[i] = a[i * n + i];
        let l = i;
        v[..l].copy_from_slice(&a[i * n..i * n + l]);
        let norm = v[..l].iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[i] = 0.0;
            continue;
        }
        let alpha = if v[l - 1] > 0.0 { -norm } else { norm };
        v[l - 1] -= alpha;
        let vtv: f64 = v[..l].iter().map(|x| x * x).sum();
        e[i] = alpha;
        if vtv == 0.0 {
            continue;
        }
        let beta = 2.0 / vtv;
        for r in 0..l {
            p[r] = beta * a[r * n..r * n + l].iter().zip(&v[..l]).map(|(x, y)| x * y).sum::<f64>();
        }
        let kk = 0.5 * beta * v[..l].iter().zip(&p[..l]).map(|(x, y)| x * y).sum::<f64>();
        for r in 0..l {
            p[r] -= kk * v[r];
        }
        for r in 0..l {
            let (vr, wr) = (v[r], p[r]);
            a[r * n..r * n + l].iter_mut().zip(&p[..l]).zip(&v[..l]).for_each(|((x, &w), &vv)| {
                *x -= vr * w + wr * vv;
            });
        }
    }
    if n > 0 {
        d[0] = a[0];
    }
    // Implicit QL on (d, e): e[i] couples i and i − 1; shift to e[i] coupling i and i + 1.
    for i in 1..n {
        e[i - 1] = e[i];
    }
    if n > 0 {
        e[n - 1] = 0.0;
    }
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 60 {
                return Err(EvalError::Invalid("eigenvalues did not converge".into()));
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r.abs() } else { -r.abs() });
            let (mut s, mut c, mut pp) = (1.0f64, 1.0f64, 0.0f64);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= pp;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - pp;
                r = (d[i] - g) * s + 2.0 * c * b;
                pp = s * r;
                d[i + 1] = g + pp;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            d[l] -= pp;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    #[test]
    fn eigenvalues_of_a_known_spectrum() {
        // Q diag(λ) Qᵀ with Q a product of Householder reflections.
        let n = 37;
        let mut seed = 7;
        let lambda: Vec<f64> = (0..n).map(|i| (i as f64 - 10.0) * 0.37).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            a[i * n + i] = lambda[i];
        }
        for _ in 0..3 {
            let v: Vec<f64> = (0..n).map(|_| rng(&mut seed)).collect();
            let vv: f64 = v.iter().map(|x| x * x).sum();
            let h: Vec<f64> =
                (0..n * n).map(|k| f64::from(u8::from(k / n == k % n)) - 2.0 * v[k / n] * v[k % n] / vv).collect();
            a = matmul(&matmul(&h, &a, n), &h, n);
        }
        let mut got = symmetric_eigenvalues(&mut a, n).unwrap();
        got.sort_by(f64::total_cmp);
        for (g, w) in got.iter().zip(&lambda) {
            assert!((g - w).abs() < 1e-10, "{g} vs {w}");
        }
    }

    #[test]
    fn frechet_distance_of_known_gaussians() {
        // Diagonal covariances: FID = |μ₁ − μ₂|² + Σ (√a − √b)².
        let d = 5;
        let diag = |v: &[f64]| {
            let mut c = vec![0f64; d * d];
            for i in 0..d {
                c[i * d + i] = v[i];
            }
            c
        };
        let a =
            FeatureStats { n: 10, dim: d, mean: vec![0.0, 1.0, 0.0, 0.0, 2.0], cov: diag(&[1.0, 4.0, 9.0, 0.0, 2.0]) };
        let b = FeatureStats { n: 10, dim: d, mean: vec![1.0; d], cov: diag(&[4.0, 4.0, 1.0, 0.0, 0.5]) };
        let want = 1.0 + 0.0 + 1.0 + 1.0 + 1.0 + 1.0 + 0.0 + 4.0 + 0.0 + (2f64.sqrt() - 0.5f64.sqrt()).powi(2);
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        // A singular reference (rank-1) still works through the other factor or the jitter.
        let mut c = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] = 1.0;
            }
        }
        let s = FeatureStats { n: 10, dim: d, mean: vec![0.0; d], cov: c };
        assert!(frechet_distance(&a, &s).unwrap().is_finite());
    }

    #[test]
    fn statistics_match_a_direct_computation_and_round_trip() {
        let (n, d) = (300, 7);
        let mut seed = 3;
        let x: Vec<f32> = (0..n * d).map(|_| rng(&mut seed) as f32 + 2.0).collect();
        let s = FeatureStats::from_features(&x, n, d).unwrap();
        for i in 0..d {
            let mi = (0..n).map(|r| f64::from(x[r * d + i])).sum::<f64>() / n as f64;
            assert!((mi - s.mean[i]).abs() < 1e-12);
            for j in 0..d {
                let mj = (0..n).map(|r| f64::from(x[r * d + j])).sum::<f64>() / n as f64;
                let c = (0..n).map(|r| (f64::from(x[r * d + i]) - mi) * (f64::from(x[r * d + j]) - mj)).sum::<f64>()
                    / (n - 1) as f64;
                assert!((c - s.cov[i * d + j]).abs() < 1e-6 * c.abs().max(1e-3), "{c} vs {}", s.cov[i * d + j]);
            }
        }
        let mut bytes = Vec::new();
        s.save(&mut bytes, &HashMap::from([("source".to_string(), "test".to_string())])).unwrap();
        let p = std::env::temp_dir().join(format!("edadm-eval-stats-{}.safetensors", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        let (back, meta) = FeatureStats::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(meta["source"], "test");
        std::fs::write(&p, b"junk").unwrap();
        assert!(FeatureStats::load(&p).is_err());
        std::fs::remove_file(&p).unwrap();
        assert!(FeatureStats::from_features(&x[..d], 1, d).is_err());
    }
}
