//! GroupNorm and the per-channel bias add as candle custom ops with analytic gradients.
//!
//! Built from candle's primitives, both spend their backward pass in `sum_keepdim` over the
//! batch and spatial axes (the gradients of the broadcast γ, β and bias), which candle's CPU
//! backend runs as strided folds — the largest cost of a training step after the
//! convolutions. Here the forward runs the kernels crate's `group_norm` (the runtime's own,
//! so the interpreter's FP forward computes the runtime's GroupNorm bit for bit), and the
//! backward is the closed form on contiguous planes:
//! `gβ_c = Σ gy`, `gγ_c = Σ gy·x̂`, `gx = (γ_c·gy − mean_g(γ·gy) − x̂·mean_g(γ·gy·x̂)) / σ_g`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::conv_op::kernels;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: f32 expected") };
    if !l.is_contiguous() {
        candle_core::bail!("{what}: contiguous tensor expected");
    }
    Ok(&v[l.start_offset()..l.start_offset() + l.shape().elem_count()])
}

fn vec_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// GroupNorm of `x` `[N, C, H, W]` over `groups` with per-channel `gamma`, `beta` (`[C]`).
pub fn group_norm(x: &Tensor, groups: usize, eps: f32, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() != 4 {
        candle_core::bail!("group_norm custom op: f32 [N, C, H, W] on the CPU expected");
    }
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, GroupNorm { groups, eps })
}

/// `y + b[c]` for `y` `[N, C, ...]`, `b` `[C]`.
pub fn add_channel_bias(y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias)
}

#[derive(Clone, Copy, Debug)]
struct GroupNorm {
    groups: usize,
    eps: f32,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "edadm-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "group_norm input")?;
        let (g, b) = (f32_slice(s2, l2, "group_norm gamma")?, f32_slice(s3, l3, "group_norm beta")?);
        let &[n, c, h, w] = l1.dims() else { candle_core::bail!("group_norm: [N, C, H, W] expected") };
        if g.len() != c || b.len() != c || self.groups == 0 || !c.is_multiple_of(self.groups) {
            candle_core::bail!("group_norm: {c} channels, {} groups, γ {} β {}", self.groups, g.len(), b.len());
        }
        let mut y = vec![0f32; x.len()];
        let k = kernels();
        edadm_kernels::ops::norm::group_norm(
            k,
            x,
            n,
            c,
            h * w,
            self.groups,
            self.eps,
            Some(g),
            Some(b),
            edadm_kernels::ops::act::Activation::None,
            &mut y,
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let (xs, gs, gys) = (vec_of(x)?, vec_of(gamma)?, vec_of(gy)?);
        let (hw, cg) = (h * w, c / self.groups);
        let m = (cg * hw) as f64;
        let mut gx = vec![0f32; xs.len()];
        let mut ggamma = vec![0f64; c];
        let mut gbeta = vec![0f64; c];
        for img in 0..n {
            for gi in 0..self.groups {
                let base = (img * c + gi * cg) * hw;
                let xg = &xs[base..base + cg * hw];
                let mean = xg.iter().map(|&v| f64::from(v)).sum::<f64>() / m;
                let var = xg.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / m;
                let inv = 1.0 / (var + f64::from(self.eps)).sqrt();
                // Σ γ·gy and Σ γ·gy·x̂ over the group.
                let (mut s1, mut s2) = (0f64, 0f64);
                for ci in 0..cg {
                    let ch = gi * cg + ci;
                    let ga = f64::from(gs[ch]);
                    let (mut sb, mut sg) = (0f64, 0f64);
                    for p in 0..hw {
                        let i = base + ci * hw + p;
                        let xh = (f64::from(xs[i]) - mean) * inv;
                        let d = f64::from(gys[i]);
                        sb += d;
                        sg += d * xh;
                    }
                    gbeta[ch] += sb;
                    ggamma[ch] += sg;
                    s1 += ga * sb;
                    s2 += ga * sg;
                }
                let (m1, m2) = (s1 / m, s2 / m);
                for ci in 0..cg {
                    let ga = f64::from(gs[gi * cg + ci]);
                    for p in 0..hw {
                        let i = base + ci * hw + p;
                        let xh = (f64::from(xs[i]) - mean) * inv;
                        gx[i] = ((ga * f64::from(gys[i]) - m1 - xh * m2) * inv) as f32;
                    }
                }
            }
        }
        let dev = x.device();
        let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(gx, (n, c, h, w), dev)?),
            Some(Tensor::from_vec(to32(ggamma), c, dev)?),
            Some(Tensor::from_vec(to32(gbeta), c, dev)?),
        ))
    }
}

#[derive(Clone, Copy, Debug)]
struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "edadm-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, b) = (f32_slice(s1, l1, "bias input")?, f32_slice(s2, l2, "bias")?);
        let dims = l1.dims();
        if dims.len() < 2 || dims[1] != b.len() {
            candle_core::bail!("channel bias: {dims:?} and {} biases", b.len());
        }
        let inner: usize = dims[2..].iter().product();
        let mut out = y.to_vec();
        for (i, chunk) in out.chunks_mut(inner.max(1)).enumerate() {
            let v = b[i % b.len()];
            chunk.iter_mut().for_each(|x| *x += v);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let c = b.dim(0)?;
        let inner: usize = y.dims()[2..].iter().product();
        let g = vec_of(gy)?;
        let mut gb = vec![0f64; c];
        for (i, chunk) in g.chunks(inner.max(1)).enumerate() {
            gb[i % c] += chunk.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        let gb: Vec<f32> = gb.into_iter().map(|v| v as f32).collect();
        Ok((Some(gy.clone()), Some(Tensor::from_vec(gb, c, b.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let (a, b) = (vec_of(a).unwrap(), vec_of(b).unwrap());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err < tol, "{what}: relative error {err}");
    }

    #[test]
    fn group_norm_and_bias_match_candles_primitives_with_gradients() {
        let dev = Device::Cpu;
        let (n, c, h, w, g) = (3, 8, 5, 4, 4);
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 0.7).unwrap()).unwrap();
        let ga = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
        let be = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let ours = group_norm(&x, g, 1e-6, &ga, &be).unwrap();
        let xr = x.reshape((n, g, c / g * h * w)).unwrap();
        let mean = xr.mean_keepdim(2).unwrap();
        let d = xr.broadcast_sub(&mean).unwrap();
        let var = d.sqr().unwrap().mean_keepdim(2).unwrap();
        let xh = d.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap().reshape((n, c, h, w)).unwrap();
        let theirs = xh
            .broadcast_mul(&ga.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&be.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        close(&ours, &theirs, 1e-5, "group norm forward");
        let go = ours.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = theirs.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&x, "x"), (&ga, "gamma"), (&be, "beta")] {
            close(go.get(v).unwrap(), gt.get(v).unwrap(), 1e-4, what);
        }

        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, c, &dev).unwrap()).unwrap();
        let ours = add_channel_bias(&x, &b).unwrap();
        let theirs = x.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap()).unwrap();
        close(&ours, &theirs, 1e-6, "bias forward");
        let go = ours.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = theirs.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        close(go.get(&b).unwrap(), gt.get(&b).unwrap(), 1e-5, "bias gradient");
        close(go.get(&x).unwrap(), gt.get(&x).unwrap(), 1e-6, "input gradient");
    }
}
