//! Element-wise activations.

/// An activation applied element-wise (also fused after normalisations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// Identity.
    None,
    /// `x·σ(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
    /// `x·Φ(x)` with the error function.
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `σ(x)`.
    Sigmoid,
}

/// `eˣ` without branches, so loops over it vectorise: Cody–Waite reduction `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, a degree-6 Taylor polynomial for `eʳ` (relative error < 2e-7) and `2ⁿ` built
/// in the exponent bits. The input is clamped to [−87.3, 88.3], so the result is a finite,
/// normal f32 for every input (NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    // t = 1.5·2²³ + n: the low mantissa bits of t hold n (|n| ≤ 127) in two's complement.
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ: (n + 127) moved into the exponent field with integer operations only.
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `1/(1+e^−x)`: finite for every input (see [`exp`]).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The error function, |error| < 1.2e-7 (Numerical Recipes' `erfc` Chebyshev fit, evaluated
/// in f64).
pub fn erf(x: f32) -> f32 {
    let z = f64::from(x).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let r = 1.0 - erfc;
    (if x >= 0.0 { r } else { -r }) as f32
}

impl Activation {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Silu => x * sigmoid(x),
            Activation::Relu => x.max(0.0),
            Activation::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                // 0.5·(1 + tanh(u)) = σ(2u).
                let c = (2.0 / std::f32::consts::PI).sqrt();
                x * sigmoid(2.0 * c * (x + 0.044_715 * x * x * x))
            }
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// Applies the activation to every element of `x` (portable body; [`apply`] runs it
    /// vectorised for the kernel tier).
    #[inline(always)]
    pub fn apply_in_place(self, x: &mut [f32]) {
        // One monomorphic loop per activation, so each vectorises.
        match self {
            Activation::None => {}
            Activation::Silu => x.iter_mut().for_each(|v| *v *= sigmoid(*v)),
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Sigmoid => x.iter_mut().for_each(|v| *v = sigmoid(*v)),
            _ => x.iter_mut().for_each(|v| *v = self.apply(*v)),
        }
    }
}

#[inline(always)]
fn apply_generic(act: Activation, x: &mut [f32]) {
    act.apply_in_place(x);
}

crate::simd::multiversion! {
    /// Applies `act` to every element of `x`, vectorised for the kernel tier.
    pub fn apply(act: Activation, x: &mut [f32]) => apply_generic
}

/// `y = act(x)`.
pub fn apply_to(k: &crate::Kernels, act: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    y.copy_from_slice(x);
    apply(k, act, y);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [(0.0, 0.0), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (2.0, 0.995_322_3), (-1.5, -0.966_105_1)] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x}) = {} want {e}", erf(x));
        }
    }

    #[test]
    fn exp_is_accurate_and_finite_everywhere() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        for x in [f32::NEG_INFINITY, -1e30, -100.0, 100.0, 1e30, f32::INFINITY] {
            let e = exp(x);
            assert!(e.is_finite() && e > 0.0, "exp({x}) = {e}");
        }
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn sigmoid_is_stable_at_the_extremes() {
        assert!(sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
        assert!((Activation::Silu.apply(-100.0)).abs() < 1e-30);
        assert!(Activation::Silu.apply(-1e30).is_finite());
        assert!((sigmoid(0.3) - 0.574_442_5).abs() < 1e-7);
    }
}
