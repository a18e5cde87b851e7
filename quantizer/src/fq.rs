//! Fake quantization as candle ops with hand-written gradients (METHOD.md §2.4–2.5): the
//! activation quantizer with a learned step (LSQ through a straight-through rounding, no
//! gradient scale) and QDrop, and AdaRound's soft and hard weight rounding.
//!
//! The forward arithmetic is the runtime's: `q = clamp(round_half_even(x / Δ) + zp, 0, qmax)`,
//! `x̂ = (q − zp)·Δ`, in f32. Inputs must be contiguous f32 on the CPU.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::calib::Rng;
use crate::grid::{Grid, round_half_even};

/// AdaRound's stretch: `h(α) = clamp(σ(α)·(ζ − γ) + γ, 0, 1)`.
pub const ZETA: f32 = 1.1;
/// See [`ZETA`].
pub const GAMMA: f32 = -0.1;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fake quantization needs contiguous input".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The QDrop mask of `len` elements for `seed`: `true` where the element is quantized (each with
/// probability 1/2, `torch.rand_like(x) < 0.5`).
pub fn drop_mask(seed: u64, len: usize) -> Vec<bool> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform_f32() < 0.5).collect()
}

/// An activation quantizer as a two-input op `(x, Δ[1])`.
#[derive(Clone, Debug)]
pub struct ActFq {
    /// Zero-point (fixed).
    pub zero_point: f32,
    /// Largest level.
    pub qmax: f32,
    /// QDrop: the seed of this call's mask, or `None` to quantize every element.
    pub drop_seed: Option<u64>,
}

impl ActFq {
    fn mask(&self, len: usize) -> Option<Vec<bool>> {
        self.drop_seed.map(|s| drop_mask(s, len))
    }

    /// Applies the quantizer: `x` any shape, `delta` a one-element tensor.
    pub fn apply(&self, x: &Tensor, delta: &Tensor) -> crate::Result<Tensor> {
        Ok(x.contiguous()?.apply_op2(&delta.contiguous()?, self.clone())?)
    }
}

impl CustomOp2 for ActFq {
    fn name(&self) -> &'static str {
        "edadm-act-fq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1)?;
        let delta = slice(s2, l2)?[0];
        let g = Grid { delta, zero_point: self.zero_point, levels: self.qmax as u32 + 1 };
        let mask = self.mask(x.len());
        let y: Vec<f32> = match &mask {
            None => x.iter().map(|&v| g.fake(v)).collect(),
            Some(m) => x.iter().zip(m).map(|(&v, &q)| if q { g.fake(v) } else { v }).collect(),
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        delta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xs = flat(x)?;
        let d = flat(delta)?[0];
        let gs = flat(grad)?;
        let mask = self.mask(xs.len());
        let mut gx = vec![0f32; xs.len()];
        let mut gd = 0f64;
        for i in 0..xs.len() {
            if mask.as_ref().is_some_and(|m| !m[i]) {
                gx[i] = gs[i];
                continue;
            }
            let r = xs[i] / d;
            let level = round_half_even(r) + self.zero_point;
            let dd = if level < 0.0 {
                -self.zero_point
            } else if level > self.qmax {
                self.qmax - self.zero_point
            } else {
                gx[i] = gs[i];
                round_half_even(r) - r
            };
            gd += f64::from(gs[i]) * f64::from(dd);
        }
        let gx = Tensor::from_vec(gx, x.shape(), x.device())?;
        let gd = Tensor::from_vec(vec![gd as f32], delta.shape(), delta.device())?;
        Ok((Some(gx), Some(gd)))
    }
}

/// AdaRound's per-element data for one weight tensor whose output channel is the slowest axis.
#[derive(Clone, Debug)]
pub struct AdaRound {
    /// `floor(w / Δ[c])` per element.
    pub base: Arc<Vec<f32>>,
    /// `Δ[c]` per output channel.
    pub delta: Arc<Vec<f32>>,
    /// Zero-point (the same for every channel: `2^(bits−1)`).
    pub zero_point: f32,
    /// Largest level.
    pub qmax: f32,
}

/// `h(α)` of AdaRound.
#[inline]
pub fn rect_sigmoid(a: f32) -> f32 {
    (sigmoid(a) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

#[inline]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

impl AdaRound {
    /// From the FP weight and its per-channel grids; returns the rounding state and the initial
    /// α, set so that `h(α)` equals the fractional part `w/Δ − floor(w/Δ)`.
    pub fn new(w: &[f32], grids: &[Grid]) -> (AdaRound, Vec<f32>) {
        let row = w.len() / grids.len();
        let mut base = Vec::with_capacity(w.len());
        let mut alpha = Vec::with_capacity(w.len());
        for (c, g) in grids.iter().enumerate() {
            for &v in &w[c * row..(c + 1) * row] {
                let r = v / g.delta;
                let fl = r.floor();
                let frac = r - fl;
                base.push(fl);
                alpha.push(-((ZETA - GAMMA) / (frac - GAMMA) - 1.0).ln());
            }
        }
        let first = grids.first().copied().unwrap_or(Grid { delta: 1.0, zero_point: 0.0, levels: 256 });
        let ada = AdaRound {
            base: Arc::new(base),
            delta: Arc::new(grids.iter().map(|g| g.delta).collect()),
            zero_point: first.zero_point,
            qmax: first.qmax(),
        };
        (ada, alpha)
    }

    fn row(&self) -> usize {
        self.base.len() / self.delta.len()
    }

    /// The soft-rounded weight for `alpha` (shape of the weight), differentiable in `alpha`.
    pub fn soft(&self, alpha: &Tensor) -> crate::Result<Tensor> {
        Ok(alpha.contiguous()?.apply_op1(self.clone())?)
    }

    /// The hard-rounded integers `clamp(floor(w/Δ) + [α ≥ 0], −zp, qmax − zp)`.
    pub fn hard_ints(&self, alpha: &[f32]) -> Vec<i32> {
        self.base
            .iter()
            .zip(alpha)
            .map(|(&b, &a)| {
                let v = b + if a >= 0.0 { 1.0 } else { 0.0 };
                (v.clamp(-self.zero_point, self.qmax - self.zero_point)) as i32
            })
            .collect()
    }

    /// The hard-rounded weight, dequantized.
    pub fn hard(&self, alpha: &[f32]) -> Vec<f32> {
        let row = self.row();
        self.hard_ints(alpha).iter().enumerate().map(|(i, &q)| q as f32 * self.delta[i / row]).collect()
    }
}

impl CustomOp1 for AdaRound {
    fn name(&self) -> &'static str {
        "edadm-adaround"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = slice(s, l)?;
        let row = self.row();
        let y: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &al)| {
                let level = (self.base[i] + rect_sigmoid(al) + self.zero_point).clamp(0.0, self.qmax);
                (level - self.zero_point) * self.delta[i / row]
            })
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, alpha: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let a = flat(alpha)?;
        let g = flat(grad)?;
        let row = self.row();
        let ga: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &al)| {
                let s = sigmoid(al);
                let h = s * (ZETA - GAMMA) + GAMMA;
                let level = self.base[i] + h.clamp(0.0, 1.0) + self.zero_point;
                if !(0.0..=1.0).contains(&h) || !(0.0..=self.qmax).contains(&level) {
                    return 0.0;
                }
                g[i] * self.delta[i / row] * (ZETA - GAMMA) * s * (1.0 - s)
            })
            .collect();
        Ok(Some(Tensor::from_vec(ga, alpha.shape(), alpha.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn the_activation_quantizer_matches_the_grid_and_its_lsq_gradient_is_the_ste_derivative() {
        let dev = Device::Cpu;
        let xs: Vec<f32> = vec![-3.0, -0.26, -0.05, 0.0, 0.05, 0.149, 0.31, 0.5, 1.2, 2.9];
        let (zp, qmax) = (8.0, 15.0); // 4-bit, signed-symmetric grid
        let d0 = 0.1f32;
        let x = Var::from_vec(xs.clone(), xs.len(), &dev).unwrap();
        let delta = Var::from_vec(vec![d0], 1, &dev).unwrap();
        let op = ActFq { zero_point: zp, qmax, drop_seed: None };
        let y = op.apply(x.as_tensor(), delta.as_tensor()).unwrap();
        let g = Grid { delta: d0, zero_point: zp, levels: 16 };
        assert_eq!(y.to_vec1::<f32>().unwrap(), xs.iter().map(|&v| g.fake(v)).collect::<Vec<_>>());
        // Loss = Σ c_i·y_i with distinct weights, so each element's gradient is visible.
        let c: Vec<f32> = (0..xs.len()).map(|i| 1.0 + 0.1 * i as f32).collect();
        let ct = Tensor::from_vec(c.clone(), xs.len(), &dev).unwrap();
        let grads = (y * ct).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let gd = grads.get(delta.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        // The straight-through surrogate: the rounding offset r_i = round(x/Δ) − x/Δ frozen at Δ0,
        // y(Δ, x) = (clamp(x/Δ + r + zp, 0, qmax) − zp)·Δ; its finite differences are the
        // gradients LSQ uses.
        let r: Vec<f64> = xs.iter().map(|&v| f64::from(round_half_even(v / d0) - v / d0)).collect();
        let surrogate = |d: f64, x: &[f64]| -> f64 {
            x.iter()
                .zip(&r)
                .zip(&c)
                .map(|((&v, &ri), &ci)| {
                    let level = (v / d + ri + f64::from(zp)).clamp(0.0, f64::from(qmax));
                    f64::from(ci) * (level - f64::from(zp)) * d
                })
                .sum()
        };
        let x64: Vec<f64> = xs.iter().map(|&v| f64::from(v)).collect();
        let h = 1e-6;
        let fd = (surrogate(f64::from(d0) + h, &x64) - surrogate(f64::from(d0) - h, &x64)) / (2.0 * h);
        assert!((f64::from(gd) - fd).abs() < 1e-3, "dΔ {gd} vs finite difference {fd}");
        for i in 0..xs.len() {
            let mut hi = x64.clone();
            let mut lo = x64.clone();
            hi[i] += 1e-7;
            lo[i] -= 1e-7;
            let fd = (surrogate(f64::from(d0), &hi) - surrogate(f64::from(d0), &lo)) / 2e-7;
            assert!((f64::from(gx[i]) - fd).abs() < 1e-3, "dx[{i}] {} vs {fd}", gx[i]);
        }
        // Clipped elements pass no gradient to x; inside ones pass it unchanged.
        assert_eq!(gx[0], 0.0);
        assert_eq!(gx[3], c[3]);
    }

    #[test]
    fn qdrop_keeps_half_of_the_elements_in_full_precision() {
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..4000).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(xs.clone(), xs.len(), &dev).unwrap();
        let delta = Var::from_vec(vec![0.05f32], 1, &dev).unwrap();
        let op = ActFq { zero_point: 128.0, qmax: 255.0, drop_seed: Some(17) };
        let y = op.apply(x.as_tensor(), delta.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let m = drop_mask(17, xs.len());
        let quantized = m.iter().filter(|&&q| q).count();
        assert!((1800..2200).contains(&quantized), "{quantized}");
        let g = Grid { delta: 0.05, zero_point: 128.0, levels: 256 };
        for i in 0..xs.len() {
            assert_eq!(y[i], if m[i] { g.fake(xs[i]) } else { xs[i] });
        }
        // Dropped elements contribute nothing to dΔ; the same seed gives the same mask.
        let y2 = op.apply(x.as_tensor(), delta.as_tensor()).unwrap();
        let grads = y2.sum_all().unwrap().backward().unwrap();
        let gd = grads.get(delta.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        let want: f64 =
            (0..xs.len()).filter(|&i| m[i]).map(|i| f64::from(round_half_even(xs[i] / 0.05) - xs[i] / 0.05)).sum();
        assert!((f64::from(gd) - want).abs() < 1e-2, "{gd} {want}");
    }

    #[test]
    fn adaround_starts_at_the_fp_weight_and_its_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        // Two output channels of three weights, 4-bit grids Δ = 0.1 and 0.25.
        let w = vec![0.123f32, -0.349, 0.69, 0.6, -1.9, 0.01];
        let grids = [Grid::signed(0.75, 4), Grid::signed(1.875, 4)];
        let (ada, alpha0) = AdaRound::new(&w, &grids);
        let alpha = Var::from_vec(alpha0.clone(), (2, 3), &dev).unwrap();
        let soft = ada.soft(alpha.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // h(α0) = frac, so the soft weight starts at the FP weight (inside the clip range).
        for (i, (&s, &v)) in soft.iter().zip(&w).enumerate() {
            assert!((s - v).abs() < 1e-5, "{i}: {s} vs {v}");
        }
        // Hard rounding at α0 is rounding to nearest (frac ≥ 0.5 ⇔ α ≥ 0 up to ties).
        let ints = ada.hard_ints(&alpha0);
        let want: Vec<i32> = w.iter().enumerate().map(|(i, &v)| grids[i / 3].int(v)).collect();
        assert_eq!(ints, want);
        // d(Σ c·soft)/dα against central differences of the forward (smooth in α).
        let c = [1.0f32, -2.0, 0.5, 3.0, 1.5, -1.0];
        let ct = Tensor::from_vec(c.to_vec(), (2, 3), &dev).unwrap();
        let a1: Vec<f32> = alpha0.iter().map(|a| a * 0.5 + 0.3).collect();
        alpha.set(&Tensor::from_vec(a1.clone(), (2, 3), &dev).unwrap()).unwrap();
        let y = ada.soft(alpha.as_tensor()).unwrap();
        let grads = (y * ct).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = grads.get(alpha.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f = |a: &[f32]| -> f64 {
            let t = Tensor::from_vec(a.to_vec(), (2, 3), &dev).unwrap();
            let y = ada.soft(&t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            y.iter().zip(&c).map(|(&y, &c)| f64::from(y) * f64::from(c)).sum()
        };
        for i in 0..6 {
            let (mut hi, mut lo) = (a1.clone(), a1.clone());
            hi[i] += 1e-2;
            lo[i] -= 1e-2;
            let fd = (f(&hi) - f(&lo)) / 2e-2;
            assert!((f64::from(ga[i]) - fd).abs() < 2e-3 * fd.abs().max(1.0), "dα[{i}] {} vs {fd}", ga[i]);
        }
        // Element 4 (−1.9 / 0.25 = −7.6 → floor −8) sits on the lowest level: nudging α up moves
        // it, down saturates; its channel's clamp is respected by the hard integers.
        assert!(ints.iter().all(|&q| (-8..=7).contains(&q)));
    }
}
