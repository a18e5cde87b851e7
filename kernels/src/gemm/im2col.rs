//! Implicit im2col: packs panels of the im2col matrix of an NCHW image straight from the image,
//! so a convolution is a GEMM without an im2col buffer.

/// A copy of a few dozen floats in fixed 16-float blocks: inline vector moves instead of a call
/// to `memmove`, which dominates for copies this short.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (a, b) in (&mut d).zip(&mut s) {
        let b: &[f32; 16] = b.try_into().expect("16 floats");
        a.copy_from_slice(b);
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// Geometry of a 2-D convolution over one `[C, H, W]` image. The im2col matrix has
/// `K = C·kh·kw` rows (`k = (c·kh + i)·kw + j`) and `N = oh·ow` columns; positions outside the
/// image read `pad_value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvGeom {
    /// Input channels (of this group).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Padding `[top, bottom, left, right]`.
    pub pad: [usize; 4],
    /// Value read outside the image (0 for f32 convolutions).
    pub pad_value: f32,
}

impl ConvGeom {
    /// Output height, or `None` if the kernel does not fit.
    pub fn out_h(&self) -> Option<usize> {
        let span = self.dilation[0] * (self.kernel[0] - 1) + 1;
        (self.h + self.pad[0] + self.pad[1]).checked_sub(span).map(|d| d / self.stride[0] + 1)
    }

    /// Output width, or `None` if the kernel does not fit.
    pub fn out_w(&self) -> Option<usize> {
        let span = self.dilation[1] * (self.kernel[1] - 1) + 1;
        (self.w + self.pad[2] + self.pad[3]).checked_sub(span).map(|d| d / self.stride[1] + 1)
    }

    /// Rows of the im2col matrix.
    pub fn k(&self) -> usize {
        self.c * self.kernel[0] * self.kernel[1]
    }

    /// Columns of the im2col matrix (output positions).
    pub fn n(&self) -> usize {
        self.out_h().unwrap_or(0) * self.out_w().unwrap_or(0)
    }

    /// Elements of the input image.
    pub fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Packs rows `k0..k0+kc`, columns `j0..j0+nc` as `out[kk·nr + j]`, zero past `nc`.
    pub(crate) fn pack(&self, x: &[f32], k0: usize, kc: usize, j0: usize, nc: usize, nr: usize, out: &mut [f32]) {
        let ow = self.out_w().unwrap_or(0);
        let (kh, kw) = (self.kernel[0], self.kernel[1]);
        let (h, w) = (self.h as isize, self.w as isize);
        for kk in 0..kc {
            let k = k0 + kk;
            let (ci, r) = (k / (kh * kw), k % (kh * kw));
            let (ki, kj) = (r / kw, r % kw);
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let row = &mut out[kk * nr..kk * nr + nr];
            row[nc..].fill(0.0);
            let mut j = 0;
            while j < nc {
                let col = j0 + j;
                let (oy, ox) = (col / ow, col % ow);
                let run = (ow - ox).min(nc - j);
                let iy = (oy * self.stride[0] + ki * self.dilation[0]) as isize - self.pad[0] as isize;
                let dst = &mut row[j..j + run];
                if iy < 0 || iy >= h {
                    dst.fill(self.pad_value);
                } else {
                    let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                    let ix0 = (ox * self.stride[1] + kj * self.dilation[1]) as isize - self.pad[2] as isize;
                    if self.stride[1] == 1 {
                        // Contiguous: pad value before the image, a copy, pad value after.
                        let lo = (-ix0).clamp(0, run as isize) as usize;
                        let hi = (w - ix0).clamp(lo as isize, run as isize) as usize;
                        dst[..lo].fill(self.pad_value);
                        let s = (ix0 + lo as isize) as usize;
                        copy_short(&mut dst[lo..hi], &src[s..s + (hi - lo)]);
                        dst[hi..].fill(self.pad_value);
                    } else {
                        let s = self.stride[1] as isize;
                        for (t, d) in dst.iter_mut().enumerate() {
                            let ix = ix0 + t as isize * s;
                            *d = if ix >= 0 && ix < w { src[ix as usize] } else { self.pad_value };
                        }
                    }
                }
                j += run;
            }
        }
    }
}
