//! Convolutions on the packed GEMM: `Conv2d` as implicit im2col, `ConvTranspose2d` as GEMM
//! followed by col2im.

use crate::gemm::{BSrc, ConvGeom, MatMut, MatRef, pack_a, sgemm, sgemm_rows};
use crate::{AlignedF32, Kernels};

/// How a [`Conv2dPlan`] computes.
#[derive(Clone, Debug, PartialEq)]
enum ConvMode {
    /// Stride 1: the input is copied once into a zero-padded image (not at all when there is no
    /// padding) and the GEMM reads its B rows in place at `offs[k]`; outputs are computed over
    /// the padded width (`n_flat` positions, `wp − ow` extra columns per row) and compacted.
    Direct { hp: usize, wp: usize, n_flat: usize, offs: Vec<usize> },
    /// Any stride: implicit im2col, packed panel by panel.
    Im2col,
}

/// A convolution prepared at plan time: weights packed for the kernel tier, the computation
/// chosen from the geometry.
#[derive(Clone, Debug)]
pub struct Conv2dPlan {
    geom: ConvGeom,
    groups: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    packed: AlignedF32,
    mode: ConvMode,
}

impl Conv2dPlan {
    /// Plans a convolution of one image group `geom` (`geom.c` input channels per group) with
    /// weights `[cout, geom.c, kh, kw]`. `None` if the kernel does not fit the input.
    pub fn new(k: &Kernels, geom: ConvGeom, groups: usize, cout: usize, w: &[f32]) -> Option<Conv2dPlan> {
        let (oh, ow) = (geom.out_h()?, geom.out_w()?);
        let rows = cout / groups;
        let kk = geom.k();
        assert_eq!(w.len(), cout * kk, "conv weights");
        let per = k.sgemm().packed_a_len(rows, kk);
        let mut packed = AlignedF32::zeros(per * groups);
        for g in 0..groups {
            let src = &w[g * rows * kk..(g + 1) * rows * kk];
            pack_a(MatRef::row_major(src, rows, kk), k.sgemm().mr, &mut packed[g * per..(g + 1) * per]);
        }
        let mode = if geom.stride == [1, 1] {
            let (hp, wp) = (geom.h + geom.pad[0] + geom.pad[1], geom.w + geom.pad[2] + geom.pad[3]);
            let mut offs = Vec::with_capacity(kk);
            for c in 0..geom.c {
                for i in 0..geom.kernel[0] {
                    for j in 0..geom.kernel[1] {
                        offs.push(c * hp * wp + i * geom.dilation[0] * wp + j * geom.dilation[1]);
                    }
                }
            }
            ConvMode::Direct { hp, wp, n_flat: (oh - 1) * wp + ow, offs }
        } else {
            ConvMode::Im2col
        };
        Some(Conv2dPlan { geom, groups, cout, oh, ow, packed, mode })
    }

    /// Output `[h, w]`.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * 4
    }

    fn padded(&self) -> bool {
        self.geom.pad != [0; 4]
    }

    /// Scratch floats [`conv2d`] needs.
    pub fn scratch_len(&self, k: &Kernels) -> usize {
        let gemm = k.sgemm().scratch_len();
        match &self.mode {
            ConvMode::Im2col => gemm,
            ConvMode::Direct { hp, wp, n_flat, .. } => {
                let pad = if self.padded() { self.groups * self.geom.c * hp * wp } else { 0 };
                let flat = if *wp == self.ow { 0 } else { self.cout / self.groups * n_flat };
                gemm + pad + flat
            }
        }
    }
}

/// `y[n] = conv(x[n]) + bias` for `n` images; `x` holds `n·groups·geom.c·H·W` floats, `y`
/// `n·cout·oh·ow`.
pub fn conv2d(
    k: &Kernels,
    plan: &Conv2dPlan,
    x: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let geom = plan.geom;
    let (groups, cout, oh, ow) = (plan.groups, plan.cout, plan.oh, plan.ow);
    let cg = geom.c;
    let in_img = groups * geom.input_len();
    let out_img = cout * oh * ow;
    assert!(x.len() >= n * in_img && y.len() >= n * out_img, "conv2d buffers too short");
    assert!(scratch.len() >= plan.scratch_len(k), "conv2d scratch too short");
    let rows = cout / groups;
    let per = k.sgemm().packed_a_len(rows, geom.k());
    let (gemm_scratch, rest) = scratch.split_at_mut(k.sgemm().scratch_len());
    for img in 0..n {
        let xi = &x[img * in_img..(img + 1) * in_img];
        let yi = &mut y[img * out_img..(img + 1) * out_img];
        match &plan.mode {
            ConvMode::Im2col => {
                for g in 0..groups {
                    sgemm(
                        k.sgemm(),
                        rows,
                        &plan.packed[g * per..(g + 1) * per],
                        BSrc::Im2col { x: &xi[g * geom.input_len()..(g + 1) * geom.input_len()], geom },
                        MatMut { data: &mut yi[g * rows * oh * ow..(g + 1) * rows * oh * ow], rs: oh * ow, cs: 1 },
                        bias.map(|b| &b[g * rows..(g + 1) * rows]),
                        false,
                        gemm_scratch,
                    );
                }
            }
            ConvMode::Direct { hp, wp, n_flat, offs } => {
                let (hp, wp, n_flat) = (*hp, *wp, *n_flat);
                let plane = hp * wp;
                let (padded, flat) = rest.split_at_mut(if plan.padded() { groups * cg * plane } else { 0 });
                let src: &[f32] = if plan.padded() {
                    for (c, dst) in padded.chunks_exact_mut(plane).enumerate() {
                        let s = &xi[c * geom.h * geom.w..(c + 1) * geom.h * geom.w];
                        dst.fill(geom.pad_value);
                        for r in 0..geom.h {
                            let o = (r + geom.pad[0]) * wp + geom.pad[2];
                            dst[o..o + geom.w].copy_from_slice(&s[r * geom.w..(r + 1) * geom.w]);
                        }
                    }
                    padded
                } else {
                    xi
                };
                for g in 0..groups {
                    let b = &src[g * cg * plane..(g + 1) * cg * plane];
                    let a = &plan.packed[g * per..(g + 1) * per];
                    let bias = bias.map(|b| &b[g * rows..(g + 1) * rows]);
                    let yg = &mut yi[g * rows * oh * ow..(g + 1) * rows * oh * ow];
                    if wp == ow {
                        // No width padding: the flat positions are exactly the outputs.
                        sgemm_rows(
                            k.sgemm(),
                            rows,
                            a,
                            b,
                            offs,
                            n_flat,
                            MatMut { data: yg, rs: oh * ow, cs: 1 },
                            bias,
                            false,
                            gemm_scratch,
                        );
                    } else {
                        let f = &mut flat[..rows * n_flat];
                        sgemm_rows(
                            k.sgemm(),
                            rows,
                            a,
                            b,
                            offs,
                            n_flat,
                            MatMut { data: f, rs: n_flat, cs: 1 },
                            bias,
                            false,
                            gemm_scratch,
                        );
                        for co in 0..rows {
                            for r in 0..oh {
                                yg[(co * oh + r) * ow..(co * oh + r + 1) * ow]
                                    .copy_from_slice(&f[co * n_flat + r * wp..co * n_flat + r * wp + ow]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Geometry of a transposed convolution over one `[cin, h, w]` image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvTransposeGeom {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Padding removed from each side `[h, w]`.
    pub padding: [usize; 2],
    /// Extra bottom/right rows/columns `[h, w]`.
    pub output_padding: [usize; 2],
}

impl ConvTransposeGeom {
    /// Output `[h, w]`, or `None` when the padding removes everything.
    pub fn out_hw(&self) -> Option<[usize; 2]> {
        let d = |i: usize, x: usize| {
            (x.checked_sub(1)? * self.stride[i] + self.kernel[i] + self.output_padding[i])
                .checked_sub(2 * self.padding[i])
        };
        match (d(0, self.h), d(1, self.w)) {
            (Some(a), Some(b)) if a > 0 && b > 0 => Some([a, b]),
            _ => None,
        }
    }

    fn m(&self) -> usize {
        self.cout * self.kernel[0] * self.kernel[1]
    }
}

/// Packs transposed-conv weights `[cin, cout, kh, kw]` as `A[(co, i, j), ci]`. Plan time.
pub fn pack_conv_transpose2d_weights(k: &Kernels, w: &[f32], g: &ConvTransposeGeom) -> AlignedF32 {
    let m = g.m();
    let mut out = AlignedF32::zeros(k.sgemm().packed_a_len(m, g.cin));
    pack_a(MatRef::transposed(w, m, g.cin), k.sgemm().mr, &mut out);
    out
}

/// Scratch floats [`conv_transpose2d`] needs.
pub fn conv_transpose2d_scratch_len(k: &Kernels, g: &ConvTransposeGeom) -> usize {
    g.m() * g.h * g.w + k.sgemm().scratch_len()
}

/// `y[n] = conv_transpose(x[n]) + bias` for `n` images.
pub fn conv_transpose2d(
    k: &Kernels,
    x: &[f32],
    n: usize,
    g: &ConvTransposeGeom,
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let [oh, ow] = g.out_hw().expect("valid transposed-conv geometry");
    let (hw, m) = (g.h * g.w, g.m());
    let (in_img, out_img) = (g.cin * hw, g.cout * oh * ow);
    assert!(x.len() >= n * in_img && y.len() >= n * out_img, "conv_transpose2d buffers too short");
    let (cols, rest) = scratch.split_at_mut(m * hw);
    let [kh, kw] = g.kernel;
    for img in 0..n {
        let xs = &x[img * in_img..(img + 1) * in_img];
        sgemm(
            k.sgemm(),
            m,
            packed,
            BSrc::Mat(MatRef::row_major(xs, g.cin, hw)),
            MatMut { data: cols, rs: hw, cs: 1 },
            None,
            false,
            rest,
        );
        let ys = &mut y[img * out_img..(img + 1) * out_img];
        for co in 0..g.cout {
            ys[co * oh * ow..(co + 1) * oh * ow].fill(bias.map_or(0.0, |b| b[co]));
        }
        // col2im: scatter-add every (co, i, j) row into the output.
        for co in 0..g.cout {
            let plane = &mut ys[co * oh * ow..(co + 1) * oh * ow];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &cols[((co * kh + i) * kw + j) * hw..][..hw];
                    for iy in 0..g.h {
                        let oy = (iy * g.stride[0] + i) as isize - g.padding[0] as isize;
                        if oy < 0 || oy >= oh as isize {
                            continue;
                        }
                        for ix in 0..g.w {
                            let ox = (ix * g.stride[1] + j) as isize - g.padding[1] as isize;
                            if ox >= 0 && ox < ow as isize {
                                plane[oy as usize * ow + ox as usize] += row[iy * g.w + ix];
                            }
                        }
                    }
                }
            }
        }
    }
}
