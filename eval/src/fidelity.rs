//! Fidelity of one image set to another (the quantized model's samples to the FP model's from
//! the same noise): PSNR and SSIM.
//!
//! Both take images `[n, c, h, w]` as floats with a `range` (`[-1, 1]` for model samples),
//! clipped to it and mapped to `[0, 1]`. SSIM is Wang et al. (2004) as `pytorch_msssim.ssim`
//! computes it: an 11×11 Gaussian window with σ = 1.5 applied as a separable "valid"
//! convolution, K₁ = 0.01, K₂ = 0.03, averaged over positions, channels and images.

/// Images mapped to `[0, 1]`.
fn unit(x: &[f32], range: [f32; 2]) -> impl Iterator<Item = f64> + '_ {
    let (lo, hi) = (range[0], range[1]);
    x.iter().map(move |&v| f64::from(((v - lo) / (hi - lo)).clamp(0.0, 1.0)))
}

/// Mean squared error after mapping to `[0, 1]`.
pub fn mse(a: &[f32], b: &[f32], range: [f32; 2]) -> f64 {
    assert_eq!(a.len(), b.len(), "image sets of different sizes");
    unit(a, range).zip(unit(b, range)).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len().max(1) as f64
}

/// PSNR in dB over the whole set (one MSE over all pixels); infinite for identical sets.
pub fn psnr(a: &[f32], b: &[f32], range: [f32; 2]) -> f64 {
    let m = mse(a, b, range);
    if m > 0.0 { 10.0 * (1.0 / m).log10() } else { f64::INFINITY }
}

/// PSNR in dB of each of the `n` images of two equally long sets, in image order.
pub fn image_psnrs(a: &[f32], b: &[f32], n: usize, range: [f32; 2]) -> Vec<f64> {
    assert_eq!(a.len(), b.len(), "image sets of different sizes");
    let per = a.len() / n.max(1);
    (0..n)
        .map(|i| {
            let m = mse(&a[i * per..(i + 1) * per], &b[i * per..(i + 1) * per], range);
            if m > 0.0 { 10.0 * (1.0 / m).log10() } else { f64::INFINITY }
        })
        .collect()
}

/// The `q`-quantile (0 ≤ q ≤ 1, nearest rank) of per-image PSNRs: the median image (0.5) is
/// robust to the few trajectories that flip, which decide the whole-set PSNR.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round()) as usize]
}

const WIN: usize = 11;

fn gauss() -> [f64; WIN] {
    let mut g = [0f64; WIN];
    for (i, v) in g.iter_mut().enumerate() {
        let x = i as f64 - (WIN / 2) as f64;
        *v = (-x * x / (2.0 * 1.5 * 1.5)).exp();
    }
    let s: f64 = g.iter().sum();
    g.map(|v| v / s)
}

/// Separable valid Gaussian filter of one `h×w` plane.
fn filter(x: &[f64], h: usize, w: usize, g: &[f64; WIN]) -> Vec<f64> {
    let (oh, ow) = (h - WIN + 1, w - WIN + 1);
    let mut rows = vec![0f64; h * ow];
    for y in 0..h {
        for xo in 0..ow {
            rows[y * ow + xo] = (0..WIN).map(|k| g[k] * x[y * w + xo + k]).sum();
        }
    }
    let mut out = vec![0f64; oh * ow];
    for yo in 0..oh {
        for xo in 0..ow {
            out[yo * ow + xo] = (0..WIN).map(|k| g[k] * rows[(yo + k) * ow + xo]).sum();
        }
    }
    out
}

/// Mean SSIM of `a` against `b`, both `n` images of `c × h × w` (h, w ≥ 11).
pub fn ssim(a: &[f32], b: &[f32], n: usize, c: usize, h: usize, w: usize, range: [f32; 2]) -> f64 {
    assert_eq!(a.len(), n * c * h * w, "image set size");
    assert_eq!(b.len(), a.len(), "image sets of different sizes");
    assert!(h >= WIN && w >= WIN, "SSIM needs images of at least 11x11");
    let g = gauss();
    let (c1, c2) = (0.01f64 * 0.01, 0.03f64 * 0.03);
    let plane = h * w;
    let mut total = 0f64;
    let mut count = 0usize;
    for p in 0..n * c {
        let x: Vec<f64> = unit(&a[p * plane..(p + 1) * plane], range).collect();
        let y: Vec<f64> = unit(&b[p * plane..(p + 1) * plane], range).collect();
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(u, v)| u * v).collect();
        let (mx, my) = (filter(&x, h, w, &g), filter(&y, h, w, &g));
        let (sxx, syy, sxy) = (filter(&xx, h, w, &g), filter(&yy, h, w, &g), filter(&xy, h, w, &g));
        for i in 0..mx.len() {
            let (ux, uy) = (mx[i], my[i]);
            let (vx, vy, cxy) = (sxx[i] - ux * ux, syy[i] - uy * uy, sxy[i] - ux * uy);
            total += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
        count += mx.len();
    }
    total / count.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_image_psnr_and_its_quantiles() {
        let a = vec![0.0f32; 8];
        let mut b = a.clone();
        b[0] = 0.2; // image 0 (4 pixels, range [-1, 1]): MSE 0.1²/4
        let p = image_psnrs(&a, &b, 2, [-1.0, 1.0]);
        assert!((p[0] - 10.0 * (400.0f64).log10()).abs() < 1e-4, "{p:?}");
        assert_eq!(p[1], f64::INFINITY);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0, 5.0], 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn psnr_and_ssim_of_known_cases() {
        let (n, c, h, w) = (2, 1, 16, 16);
        let a: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        assert_eq!(psnr(&a, &a, [-1.0, 1.0]), f64::INFINITY);
        assert!((ssim(&a, &a, n, c, h, w, [-1.0, 1.0]) - 1.0).abs() < 1e-12);
        // A constant offset of 0.2 in [-1, 1] is 0.1 in [0, 1] where nothing clips: MSE 0.01
        // on unclipped pixels.
        let b: Vec<f32> = a.iter().map(|v| (v * 0.5) + 0.2).collect();
        let a2: Vec<f32> = a.iter().map(|v| v * 0.5).collect();
        assert!((psnr(&a2, &b, [-1.0, 1.0]) - 20.0).abs() < 1e-5);
        // SSIM of a brightness shift: structure and contrast are kept, luminance drops a little.
        let s = ssim(&a2, &b, n, c, h, w, [-1.0, 1.0]);
        assert!(s < 1.0 && s > 0.9, "{s}");
        // Anticorrelated images have negative SSIM.
        let neg: Vec<f32> = a2.iter().map(|v| -v).collect();
        assert!(ssim(&a2, &neg, n, c, h, w, [-1.0, 1.0]) < 0.0);
    }
}
