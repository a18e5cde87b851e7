//! Stride-1 2-D convolution as a candle custom op on edadm's own f32 kernels.
//!
//! candle's CPU convolution runs at 3–15 G MAC/s on the quantizer's shapes (forward and
//! backward); the kernels crate's packed GEMM runs at 40+ G MAC/s per core. Reconstruction
//! (and training) spend most of their time in 3×3 convolutions, so they go through this op:
//!
//! * forward: `Conv2dPlan` + `conv2d` per image, images split between rayon threads;
//! * input gradient: the same convolution of the output gradient with the weights transposed
//!   (in/out channels swapped) and flipped, padded by `k − 1 − pad`;
//! * weight gradient: per image `gy[cout × P] · im2col(x)ᵀ[P × K]` on the packed GEMM,
//!   accumulated over images.
//!
//! Only stride 1, no dilation, one group, `pad ≤ kernel − 1` (every convolution of the UNets but
//! the stride-2 downsampling, which stays on candle's op); other devices than the CPU use
//! candle's op too.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use edadm_kernels::Kernels;
use edadm_kernels::gemm::{BSrc, ConvGeom, MatMut, MatRef, pack_a, sgemm};
use edadm_kernels::ops::conv::{Conv2dPlan, conv2d as kconv2d};
use rayon::prelude::*;

pub(crate) fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| edadm_kernels::select().unwrap_or_else(|_| edadm_kernels::reference()))
}

/// Whether [`conv2d`] runs a convolution of this kind on the kernels (else on candle's op).
pub fn supported(stride: usize, dilation: usize, groups: usize, kernel: [usize; 2], pad: [usize; 4]) -> bool {
    stride == 1
        && dilation == 1
        && groups == 1
        && pad[0] < kernel[0]
        && pad[1] < kernel[0]
        && pad[2] < kernel[1]
        && pad[3] < kernel[1]
}

/// `conv2d(x [N, C, H, W], w [O, C, kh, kw])` with padding `[top, bottom, left, right]`,
/// stride 1, differentiable in both arguments. Falls back to candle's op where
/// [`supported`] says no or off the CPU.
pub fn conv2d(x: &Tensor, w: &Tensor, pad: [usize; 4]) -> candle_core::Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    if !x.device().is_cpu() || !supported(1, 1, 1, [kh, kw], pad) || x.dtype() != candle_core::DType::F32 {
        let x = x.pad_with_zeros(2, pad[0], pad[1])?.pad_with_zeros(3, pad[2], pad[3])?;
        return x.conv2d(w, 0, 1, 1, 1);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv { pad })
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: f32 expected") };
    if !l.is_contiguous() {
        candle_core::bail!("{what}: contiguous tensor expected");
    }
    Ok(&v[l.start_offset()..l.start_offset() + l.shape().elem_count()])
}

fn dims4(l: &Layout, what: &str) -> candle_core::Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        d => candle_core::bail!("{what}: rank-4 tensor expected, got {d:?}"),
    }
}

/// `y[n] = conv(x[n], w)` for every image, in parallel.
fn forward(
    x: &[f32],
    [n, c, h, wd]: [usize; 4],
    w: &[f32],
    cout: usize,
    kernel: [usize; 2],
    pad: [usize; 4],
) -> Vec<f32> {
    let k = kernels();
    let geom = ConvGeom { c, h, w: wd, kernel, stride: [1, 1], dilation: [1, 1], pad, pad_value: 0.0 };
    let plan = Conv2dPlan::new(k, geom, 1, cout, w).expect("checked: the kernel fits");
    let [oh, ow] = plan.out_hw();
    let (in_img, out_img) = (c * h * wd, cout * oh * ow);
    let mut y = vec![0f32; n * out_img];
    let scratch_len = plan.scratch_len(k);
    y.par_chunks_mut(out_img.max(1)).enumerate().for_each_init(
        || vec![0f32; scratch_len],
        |scratch, (i, yi)| kconv2d(k, &plan, &x[i * in_img..(i + 1) * in_img], 1, None, yi, scratch),
    );
    y
}

/// The forward op.
#[derive(Clone, Copy, Debug)]
struct Conv {
    pad: [usize; 4],
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "edadm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "conv input")?, f32_slice(s2, l2, "conv weight")?);
        let [n, c, h, wd] = dims4(l1, "conv input")?;
        let [o, ci, kh, kw] = dims4(l2, "conv weight")?;
        if ci != c {
            candle_core::bail!("conv: input has {c} channels, the weight {ci}");
        }
        let (oh, ow) =
            ((h + self.pad[0] + self.pad[1]).checked_sub(kh - 1), (wd + self.pad[2] + self.pad[3]).checked_sub(kw - 1));
        let (Some(oh), Some(ow)) = (oh, ow) else {
            candle_core::bail!("conv: a {kh}x{kw} kernel does not fit {h}x{wd}")
        };
        let y = forward(x, [n, c, h, wd], w, o, [kh, kw], self.pad);
        Ok((CpuStorage::F32(y), Shape::from((n, o, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (o, c, kh, kw) = w.dims4()?;
        let p = self.pad;
        // Input gradient: gy ⊛ w transposed and flipped, padded by k − 1 − pad.
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let mut wt = vec![0f32; wv.len()];
        for co in 0..o {
            for ci in 0..c {
                for a in 0..kh {
                    for b in 0..kw {
                        wt[((ci * o + co) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)] =
                            wv[((co * c + ci) * kh + a) * kw + b];
                    }
                }
            }
        }
        let wt = Tensor::from_vec(wt, (c, o, kh, kw), w.device())?;
        let gpad = [kh - 1 - p[0], kh - 1 - p[1], kw - 1 - p[2], kw - 1 - p[3]];
        let gx = gy.contiguous()?.apply_op2(&wt, Conv { pad: gpad })?;
        // Weight gradient.
        let gw = x.contiguous()?.apply_op2(&gy.contiguous()?, ConvGradWeight { pad: p, kernel: [kh, kw] })?;
        Ok((Some(gx), Some(gw)))
    }
}

/// `gw = Σ_n gy[n] · im2col(x[n])ᵀ`: arguments `(x, gy)`.
#[derive(Clone, Copy, Debug)]
struct ConvGradWeight {
    pad: [usize; 4],
    kernel: [usize; 2],
}

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "edadm-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gy) = (f32_slice(s1, l1, "conv input")?, f32_slice(s2, l2, "conv output gradient")?);
        let [n, c, h, wd] = dims4(l1, "conv input")?;
        let [n2, o, oh, ow] = dims4(l2, "conv output gradient")?;
        let ([kh, kw], p) = (self.kernel, self.pad);
        if n2 != n || oh + kh != h + p[0] + p[1] + 1 || ow + kw != wd + p[2] + p[3] + 1 {
            candle_core::bail!("conv gradient: shapes {:?} and {:?} do not match", l1.dims(), l2.dims());
        }
        let k = kernels();
        let kern = k.sgemm();
        let (kk, pos) = (c * kh * kw, oh * ow);
        let (in_img, out_img) = (c * h * wd, o * pos);
        let threads = rayon::current_num_threads().max(1).min(n.max(1));
        let per = n.div_ceil(threads);
        let partial: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                // Per thread: gwᵀ [K × O] = Σ_img im2col(x)[K × P] · gyᵀ[P × O].
                let mut acc = vec![0f32; kk * o];
                let mut cols = vec![0f32; kk * pos];
                let mut packed = vec![0f32; kern.packed_a_len(kk, pos)];
                let mut scratch = vec![0f32; kern.scratch_len()];
                for img in t * per..((t + 1) * per).min(n) {
                    let xi = &x[img * in_img..(img + 1) * in_img];
                    // im2col, row-major [K × P]: row (ci, a, b) holds the input shifted by
                    // (a − top, b − left), zero outside; each output row a contiguous copy.
                    for ci in 0..c {
                        for a in 0..kh {
                            for b in 0..kw {
                                let row = &mut cols[((ci * kh + a) * kw + b) * pos..][..pos];
                                for i in 0..oh {
                                    let dst = &mut row[i * ow..(i + 1) * ow];
                                    let yy = (i + a) as isize - p[0] as isize;
                                    if yy < 0 || yy as usize >= h {
                                        dst.fill(0.0);
                                        continue;
                                    }
                                    let src = &xi[(ci * h + yy as usize) * wd..][..wd];
                                    // Columns j with 0 ≤ j + b − left < wd.
                                    let j0 = p[2].saturating_sub(b).min(ow);
                                    let j1 = (wd + p[2]).saturating_sub(b).min(ow).max(j0);
                                    dst[..j0].fill(0.0);
                                    dst[j1..].fill(0.0);
                                    let s0 = j0 + b - p[2];
                                    dst[j0..j1].copy_from_slice(&src[s0..s0 + (j1 - j0)]);
                                }
                            }
                        }
                    }
                    pack_a(MatRef::row_major(&cols, kk, pos), kern.mr, &mut packed);
                    let gyi = &gy[img * out_img..(img + 1) * out_img];
                    sgemm(
                        kern,
                        kk,
                        &packed,
                        BSrc::Mat(MatRef { data: gyi, rows: pos, cols: o, rs: 1, cs: pos }),
                        MatMut { data: &mut acc, rs: o, cs: 1 },
                        None,
                        true,
                        &mut scratch,
                    );
                }
                acc
            })
            .collect();
        let mut gw = vec![0f32; o * kk];
        for part in &partial {
            for k in 0..kk {
                for co in 0..o {
                    gw[co * kk + k] += part[k * o + co];
                }
            }
        }
        Ok((CpuStorage::F32(gw), Shape::from((o, c, kh, kw))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err < 1e-5, "{what}: relative error {err}");
    }

    #[test]
    fn forward_and_gradients_match_candles_convolution() {
        let dev = Device::Cpu;
        for (n, c, o, h, w, k, pad) in [
            (3usize, 5usize, 7usize, 9usize, 6usize, 3usize, [1usize, 1, 1, 1]),
            (2, 4, 3, 5, 5, 1, [0, 0, 0, 0]),
            (1, 3, 2, 6, 7, 3, [0, 2, 1, 0]),
            (4, 8, 16, 4, 4, 3, [1, 1, 1, 1]),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, k, k), &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, 1, &dev).unwrap();
            let ours = conv2d(&x, &wt, pad).unwrap();
            let xp = x.pad_with_zeros(2, pad[0], pad[1]).unwrap().pad_with_zeros(3, pad[2], pad[3]).unwrap();
            let theirs = xp.conv2d(&wt, 0, 1, 1, 1).unwrap();
            close(&ours, &theirs, "forward");
            // A loss that weighs every output differently.
            let r = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
            let lo = ours.mul(&r).unwrap().sum_all().unwrap().broadcast_mul(&g).unwrap();
            let lt = theirs.mul(&r).unwrap().sum_all().unwrap().broadcast_mul(&g).unwrap();
            let (go, gt) = (lo.backward().unwrap(), lt.backward().unwrap());
            close(go.get(&x).unwrap(), gt.get(&x).unwrap(), "input gradient");
            close(go.get(&wt).unwrap(), gt.get(&wt).unwrap(), "weight gradient");
        }
    }

    #[test]
    fn strided_or_over_padded_convolutions_fall_back() {
        assert!(supported(1, 1, 1, [3, 3], [1, 1, 1, 1]));
        assert!(!supported(2, 1, 1, [3, 3], [1, 1, 1, 1]));
        assert!(!supported(1, 1, 1, [1, 1], [1, 1, 1, 1]));
        assert!(!supported(1, 2, 1, [3, 3], [1, 1, 1, 1]));
    }
}
