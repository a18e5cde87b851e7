//! The integer transposed convolution: one GEMM over the input positions, its i32 results
//! scattered onto the output grid, one f32 epilogue per output.

use super::{Addend, QInput, QOutput};
use crate::Kernels;
use crate::gemm::MatMut;
use crate::ops::conv::ConvTransposeGeom;
use crate::ops::quant::C4;
use crate::qgemm::{PackedQ, QEpilogue, QgemmKernel, qgemm, qgemm_scratch_len};

/// An integer transposed convolution: one GEMM with rows `(co, i, j)` (`A[(co, i, j), ci] =
/// w[ci, co, i, j]`) over the input positions, its exact zero-point-corrected i32 results
/// scattered and summed in i32 onto the output grid, then one f32 epilogue per output. With
/// kernel = stride (the 2×2 stride-2 upsampling of small UNets) nothing overlaps and the
/// scatter is a pixel shuffle.
#[derive(Clone, Debug)]
pub struct QConvTranspose2dPlan {
    geom: ConvTransposeGeom,
    n: usize,
    oh: usize,
    ow: usize,
    layout: C4,
    packed: PackedQ,
    offs: Vec<usize>,
    /// The microkernel the weights are packed for ([`Kernels::qgemm_for`]).
    kern: QgemmKernel,
}

impl QConvTranspose2dPlan {
    /// Plans the transposed convolution of `geom` over `n` images with weights `w`
    /// (`[cin][cout][kh][kw]`, i8). `None` if the output would be empty or
    /// `output_padding ≥ stride`.
    pub fn new(k: &Kernels, n: usize, geom: ConvTransposeGeom, w: &[i8]) -> Option<QConvTranspose2dPlan> {
        let ConvTransposeGeom { cin, cout, h, w: wd, kernel: [kh, kw], stride, output_padding, .. } = geom;
        if output_padding[0] >= stride[0] || output_padding[1] >= stride[1] || stride.contains(&0) {
            return None;
        }
        let [oh, ow] = geom.out_hw()?;
        assert_eq!(w.len(), cin * cout * kh * kw, "weights must be [cin][cout][kh][kw]");
        let layout = C4 { c: cin, n, h, w: wd, pad: [0; 4] };
        let kg = layout.groups();
        let m = cout * kh * kw;
        let mut mat = vec![0i8; m * kg * 4];
        for ci in 0..cin {
            for r in 0..m {
                mat[r * kg * 4 + ci] = w[ci * m + r];
            }
        }
        let offs = (0..kg).map(|g| layout.word(g, 0, 0, 0)).collect();
        let kern = *k.qgemm_for(w);
        Some(QConvTranspose2dPlan { geom, n, oh, ow, layout, packed: PackedQ::new(&kern, &mat, m, kg), offs, kern })
    }

    /// The layout the input must be quantized into.
    pub fn input_layout(&self) -> &C4 {
        &self.layout
    }

    /// Output `[h, w]`.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.packed_bytes()
    }

    /// The microkernel it runs.
    pub fn kernel(&self) -> &QgemmKernel {
        &self.kern
    }

    /// Scratch floats [`qconv_transpose2d`] needs.
    pub fn scratch_len(&self, _k: &Kernels) -> usize {
        let g = &self.geom;
        let cols = self.n * g.h * g.w;
        qgemm_scratch_len(&self.kern, self.offs.len()) + self.packed.m() * cols + g.cout * self.n * self.oh * self.ow
    }
}

/// `y[b, co, oy, ox] = Δa·Δw[co]·Σ (q − zp)·w + bias[co]` over every `(ci, y, x, i, j)` with
/// `oy = y·s + i − p`, `ox = x·s + j − p`; the sum exact in i32.
pub fn qconv_transpose2d(
    k: &Kernels,
    plan: &QConvTranspose2dPlan,
    input: QInput<'_>,
    bias: Option<&[f32]>,
    out: QOutput<'_>,
    scratch: &mut [f32],
) {
    let ConvTransposeGeom { cout, h, w, kernel: [kh, kw], stride: [sh, sw], padding: [ph, pw], .. } = plan.geom;
    let n = plan.n;
    let (oh, ow) = (plan.oh, plan.ow);
    out.check(n, cout, oh, ow);
    assert_eq!(input.data.len(), plan.layout.len(), "transposed convolution input has the wrong layout");
    assert!(input.scale.len() >= cout && bias.is_none_or(|b| b.len() >= cout), "scale and bias per output channel");
    assert!(scratch.len() >= plan.scratch_len(k), "qconv_transpose2d scratch too short");
    let cols = n * h * w;
    let m = plan.packed.m();
    let (gemm_scratch, rest) = scratch.split_at_mut(qgemm_scratch_len(&plan.kern, plan.offs.len()));
    let (flat, rest) = rest.split_at_mut(m * cols);
    let acc = &mut rest[..cout * n * oh * ow];
    // Raw mode: `flat` holds the zero-point-corrected i32 sums of every (co, i, j) row.
    let ep = QEpilogue { scale: None, zero_point: i32::from(input.zero_point), bias: None, accumulate: false };
    qgemm(
        &plan.kern,
        plan.packed.view(),
        input.data,
        &plan.offs,
        cols,
        MatMut { data: flat, rs: cols, cs: 1 },
        &ep,
        gemm_scratch,
    );
    // Scatter-add in i32 onto `acc`, [cout][N][oh][ow].
    let acc_i: &mut [i32] = bytemuck::cast_slice_mut(&mut *acc);
    acc_i.fill(0);
    let flat: &[i32] = bytemuck::cast_slice(&*flat);
    let plane = oh * ow;
    for co in 0..cout {
        for i in 0..kh {
            for j in 0..kw {
                let src = &flat[((co * kh + i) * kw + j) * cols..][..cols];
                for b in 0..n {
                    for y in 0..h {
                        let Some(oy) = (y * sh + i).checked_sub(ph).filter(|&v| v < oh) else { continue };
                        let dst = &mut acc_i[(co * n + b) * plane + oy * ow..][..ow];
                        for (x, &v) in src[(b * h + y) * w..][..w].iter().enumerate() {
                            if let Some(ox) = (x * sw + j).checked_sub(pw).filter(|&v| v < ow) {
                                dst[ox] = dst[ox].wrapping_add(v);
                            }
                        }
                    }
                }
            }
        }
    }
    // The epilogue of every tier: scale·f32(acc) + bias, no fused multiply-add.
    let epi = |co: usize, a: i32| input.scale[co] * a as f32 + bias.map_or(0.0, |b| b[co]);
    match out {
        QOutput::F32(y) => {
            for co in 0..cout {
                for b in 0..n {
                    let src = &acc_i[(co * n + b) * plane..][..plane];
                    for (d, &a) in y[(b * cout + co) * plane..][..plane].iter_mut().zip(src) {
                        *d = epi(co, a);
                    }
                }
            }
        }
        QOutput::F32Add(y, add) => {
            for co in 0..cout {
                for b in 0..n {
                    let at = (b * cout + co) * plane;
                    let src = &acc_i[(co * n + b) * plane..][..plane];
                    for (i, (d, &a)) in y[at..at + plane].iter_mut().zip(src).enumerate() {
                        let z = match add {
                            Addend::Full(t) => t[at + i],
                            Addend::PerChannel(t) => t[b * cout + co],
                        };
                        *d = epi(co, a) + z;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::act::Activation;
    use crate::ops::quant::{ActQ, quantize, quantize_c4};
    use crate::testing::data;

    /// A transposed convolution by its definition, then the shared epilogue.
    fn naive_transpose(
        n: usize,
        g: &ConvTransposeGeom,
        xq: &[u8],
        zp: u8,
        w: &[i8],
        scale: &[f32],
        bias: &[f32],
    ) -> Vec<f32> {
        let [oh, ow] = g.out_hw().unwrap();
        let [kh, kw] = g.kernel;
        let mut acc = vec![0i64; n * g.cout * oh * ow];
        for b in 0..n {
            for ci in 0..g.cin {
                for y in 0..g.h {
                    for x in 0..g.w {
                        let qv = i64::from(xq[((b * g.cin + ci) * g.h + y) * g.w + x]) - i64::from(zp);
                        for co in 0..g.cout {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let (oy, ox) = (
                                        (y * g.stride[0] + i) as isize - g.padding[0] as isize,
                                        (x * g.stride[1] + j) as isize - g.padding[1] as isize,
                                    );
                                    if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                        acc[((b * g.cout + co) * oh + oy as usize) * ow + ox as usize] +=
                                            qv * i64::from(w[((ci * g.cout + co) * kh + i) * kw + j]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        acc.iter()
            .enumerate()
            .map(|(e, &a)| {
                let co = e / (oh * ow) % g.cout;
                let t = crate::qgemm::QTile { scale: [scale[co]; 16], corr: [0; 16], bias: [bias[co]; 16], raw: false };
                crate::reference::qgemm_epilogue(a as i32, 0, &t, None)
            })
            .collect()
    }

    crate::testing::tier_test! {
        fn integer_transposed_convolutions_match_the_definition_bit_for_bit(k) {
            let g = |n, cin, cout, h, w, kk: usize, s: usize, p: usize, op: usize| {
                let geom = ConvTransposeGeom {
                    cin,
                    cout,
                    h,
                    w,
                    kernel: [kk, kk],
                    stride: [s, s],
                    padding: [p, p],
                    output_padding: [op, op],
                };
                (n, geom)
            };
            for (ci, (n, geom)) in [
                g(2, 10, 7, 3, 5, 2, 2, 0, 0), // mnist upsampling: kernel = stride
                g(1, 5, 9, 4, 4, 3, 2, 1, 1),  // overlapping taps, output padding
                g(3, 4, 3, 2, 3, 4, 2, 1, 0),  // 4×4 stride 2
                g(1, 1, 1, 1, 1, 1, 1, 0, 0),  // 1×1
            ]
            .into_iter()
            .enumerate()
            {
                let seed = 40 + ci as u64;
                let q = ActQ { delta: 0.013, zero_point: 111, bits: 8 };
                let x: Vec<f32> = data(n * geom.cin * geom.h * geom.w, seed).iter().map(|v| v * 2.0).collect();
                let xq: Vec<u8> = x.iter().map(|&v| quantize(v, q.delta, f32::from(q.zero_point), q.qmax())).collect();
                // Odd cases with 7-bit weights (the tier's `vpmaddubsw` kernel where it has one).
                let wm = if ci % 2 == 1 { 64.0 } else { 128.0 };
                let w: Vec<i8> = data(geom.cin * geom.cout * geom.kernel[0] * geom.kernel[1], seed + 1)
                    .iter()
                    .map(|v| (v * wm).clamp(-wm, wm - 1.0) as i8)
                    .collect();
                let scale: Vec<f32> = (0..geom.cout).map(|c| 3e-5 * (1 + c % 3) as f32).collect();
                let bias = data(geom.cout, seed + 2);
                let want = naive_transpose(n, &geom, &xq, q.zero_point, &w, &scale, &bias);
                let plan = QConvTranspose2dPlan::new(k, n, geom, &w).unwrap();
                let mut buf = vec![0u8; plan.input_layout().len()];
                quantize_c4(k, &x, geom.cin, 0, Activation::None, q, plan.input_layout(), &mut buf);
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; plan.scratch_len(k)];
                let input = QInput { data: &buf, zero_point: q.zero_point, scale: &scale };
                qconv_transpose2d(k, &plan, input, Some(&bias), QOutput::F32(&mut y), &mut scratch);
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(a.to_bits() == b.to_bits(), "{} {geom:?}: element {i}: {a} vs {b}", plan.kernel().name);
                }
                let [oh, ow] = plan.out_hw();
                // Residual and per-channel additions in the output pass.
                let (full, per) = (data(want.len(), seed + 3), data(n * geom.cout, seed + 4));
                for add in [Addend::Full(&full), Addend::PerChannel(&per)] {
                    let mut ya = vec![f32::NAN; want.len()];
                    qconv_transpose2d(k, &plan, input, Some(&bias), QOutput::F32Add(&mut ya, add), &mut scratch);
                    let ok = ya.iter().enumerate().all(|(i, a)| {
                        let z = match add {
                            Addend::Full(t) => t[i],
                            Addend::PerChannel(t) => t[i / (oh * ow)],
                        };
                        a.to_bits() == (want[i] + z).to_bits()
                    });
                    assert!(ok, "{} {geom:?}: the added output differs", plan.kernel().name);
                }
            }
            assert!(
                QConvTranspose2dPlan::new(k, 1, g(1, 1, 1, 2, 2, 2, 2, 0, 2).1, &[0; 4]).is_none(),
                "output padding ≥ stride"
            );
        }
    }
}
