//! Seeded, reproducible Gaussian noise.
//!
//! Noise is a function of `(seed, stream, index)` only, so an image's noise does not depend on
//! the batch it was generated in or on the platform:
//! - each stream is a xoshiro256++ generator whose state is four successive outputs of
//!   SplitMix64 started at `seed ⊕ (stream · 0x9E3779B97F4A7C15)`;
//! - pairs of outputs give `u₁ = (top 53 bits + 1)·2⁻⁵³ ∈ (0, 1]` and
//!   `u₂ = (top 53 bits)·2⁻⁵³ ∈ [0, 1)`, and Box–Muller in f64 gives
//!   `z₀ = √(−2 ln u₁)·cos 2πu₂`, `z₁ = √(−2 ln u₁)·sin 2πu₂`, rounded to f32, in that order.
//!
//! Samplers use stream `image` for x_T and stream `(step + 1) · 2³² + image` for the noise
//! added at a step.

/// A stream of standard normal values.
#[derive(Clone, Debug)]
pub struct NoiseStream {
    s: [u64; 4],
    spare: Option<f32>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl NoiseStream {
    /// The stream `stream` of seed `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let s = [splitmix(&mut x), splitmix(&mut x), splitmix(&mut x), splitmix(&mut x)];
        NoiseStream { s, spare: None }
    }

    /// The next 64 raw bits of the stream's xoshiro256++ generator.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// The next standard normal value.
    pub fn next_normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }

    /// Fills `out` with standard normal values.
    pub fn fill(&mut self, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = self.next_normal());
    }
}

/// Fills a batch `out` (`images` samples of equal length) with the x_T noise of images
/// `first_image..first_image + images` for `seed`.
pub fn initial_noise(seed: u64, first_image: u64, out: &mut [f32], images: usize) {
    let per = out.len() / images.max(1);
    for (i, chunk) in out.chunks_exact_mut(per.max(1)).enumerate().take(images) {
        NoiseStream::new(seed, first_image + i as u64).fill(chunk);
    }
}

/// Fills a batch with the noise a sampler adds at `step` (0-based), images as in
/// [`initial_noise`].
pub fn step_noise(seed: u64, step: usize, first_image: u64, out: &mut [f32], images: usize) {
    let per = out.len() / images.max(1);
    for (i, chunk) in out.chunks_exact_mut(per.max(1)).enumerate().take(images) {
        NoiseStream::new(seed, ((step as u64 + 1) << 32) + first_image + i as u64).fill(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_independent_of_batching() {
        let mut a = vec![0f32; 8];
        initial_noise(7, 0, &mut a, 2);
        let mut b = vec![0f32; 4];
        initial_noise(7, 1, &mut b, 1);
        assert_eq!(&a[4..], &b[..]);
        let mut c = vec![0f32; 8];
        initial_noise(8, 0, &mut c, 2);
        assert_ne!(a, c);
        let mut s = vec![0f32; 8];
        step_noise(7, 0, 0, &mut s, 2);
        assert_ne!(a, s);
    }

    #[test]
    fn moments_are_standard_normal() {
        let mut v = vec![0f32; 200_000];
        NoiseStream::new(1234, 0).fill(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (f64::from(x) - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
    }
}
