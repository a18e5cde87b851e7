//! f32 matrix multiplication `C (+)= A·B (+ bias per row)`, BLIS-style: `A` packed into
//! panels of `MR` rows (once, at plan time, for weights), `B` packed panel by panel (`NR`
//! columns × `KC` rows) into caller-provided scratch, and an `MR×NR` register-blocked
//! microkernel per instruction set. Nothing here allocates.
//!
//! `B` can be a strided matrix or the implicit im2col matrix of a convolution input
//! ([`BSrc::Im2col`]), so convolutions never materialise their im2col buffer.

mod im2col;

pub use im2col::ConvGeom;

/// A microkernel: for `i < MR`, `j < NR`,
/// `c[i·ldc + j] = (Σ_{kk<k} a[kk·MR + i]·b[b_offs[kk] + j] + (bias ? bias[i] : 0)) + (acc ? c[i·ldc + j] : 0)`.
/// Row `kk` of B is `NR` contiguous floats at `b + b_offs[kk]`: a packed panel (`b_offs[kk] =
/// kk·NR`) or rows read in place from a padded image.
///
/// # Safety
/// `a` must be readable for `k·MR` floats, `b_offs` for `k` offsets, `b + b_offs[kk]` for `NR`
/// floats each, `bias` null or readable for `MR`, and `c` readable and writable at every
/// `i·ldc + j`.
pub type SgemmUkr = unsafe fn(
    k: usize,
    a: *const f32,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    acc: bool,
);

/// `[0, NR, 2·NR, …]`: the offsets of the rows of a packed panel.
pub const fn panel_offsets<const NR: usize, const KC: usize>() -> [usize; KC] {
    let mut t = [0; KC];
    let mut i = 0;
    while i < KC {
        t[i] = i * NR;
        i += 1;
    }
    t
}

/// An f32 GEMM microkernel with its tile shape.
#[derive(Clone, Copy, Debug)]
pub struct SgemmKernel {
    /// Name for reports, e.g. `avx512_sgemm_12x32`.
    pub name: &'static str,
    /// Rows of the register tile (rows of packed `A` panels).
    pub mr: usize,
    /// Columns of the register tile (columns of packed `B` panels).
    pub nr: usize,
    /// Rows of `B` packed at a time; `KC·NR` floats should fit in L1.
    pub kc: usize,
    /// The microkernel.
    pub ukr: SgemmUkr,
    /// Row offsets of a packed `KC×NR` panel (`kk·NR`).
    pub panel_offsets: &'static [usize],
}

impl SgemmKernel {
    /// Scratch (in floats) [`sgemm`] needs: one packed `B` panel and one edge tile.
    pub fn scratch_len(&self) -> usize {
        self.kc * self.nr + self.mr * self.nr
    }

    /// Length of a packed `A` of `m×k`.
    pub fn packed_a_len(&self, m: usize, k: usize) -> usize {
        m.div_ceil(self.mr) * self.mr * k
    }
}

/// A strided read-only matrix: element `(r, c)` at `data[r·rs + c·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `cols×rows` matrix.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: 1, cs: rows }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }

    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// Packs `a` (m×k) into `out` as panels of `mr` rows: `out[p·mr·k + kk·mr + i] = a[p·mr + i, kk]`,
/// zero for rows past `m`. `out.len()` must be `ceil(m/mr)·mr·k`.
pub fn pack_a(a: MatRef<'_>, mr: usize, out: &mut [f32]) {
    a.check();
    let (m, k) = (a.rows, a.cols);
    assert_eq!(out.len(), m.div_ceil(mr) * mr * k, "packed A length");
    for (p, panel) in out.chunks_exact_mut(mr * k.max(1)).enumerate().take(m.div_ceil(mr)) {
        let rows = (m - p * mr).min(mr);
        for kk in 0..k {
            let dst = &mut panel[kk * mr..kk * mr + mr];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if i < rows { a.at(p * mr + i, kk) } else { 0.0 };
            }
        }
    }
}

/// The `B` operand of [`sgemm`].
#[derive(Clone, Copy, Debug)]
pub enum BSrc<'a> {
    /// A strided matrix `k×n`.
    Mat(MatRef<'a>),
    /// The im2col matrix of one image `[C, H, W]` for a convolution: row `(c, kh, kw)`,
    /// column `(oh, ow)`.
    Im2col {
        /// The image.
        x: &'a [f32],
        /// The convolution geometry.
        geom: ConvGeom,
    },
}

impl BSrc<'_> {
    fn dims(&self) -> (usize, usize) {
        match self {
            BSrc::Mat(m) => (m.rows, m.cols),
            BSrc::Im2col { geom, .. } => (geom.k(), geom.n()),
        }
    }

    /// Packs rows `k0..k0+kc` and columns `j0..j0+nc` (`nc ≤ nr`) as `out[kk·nr + j]`, zero
    /// beyond `nc`.
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, nr: usize, out: &mut [f32]) {
        match self {
            BSrc::Mat(m) => {
                for kk in 0..kc {
                    let row = &mut out[kk * nr..kk * nr + nr];
                    if m.cs == 1 {
                        let s = (k0 + kk) * m.rs + j0;
                        row[..nc].copy_from_slice(&m.data[s..s + nc]);
                    } else {
                        for (j, d) in row[..nc].iter_mut().enumerate() {
                            *d = m.at(k0 + kk, j0 + j);
                        }
                    }
                    row[nc..].fill(0.0);
                }
            }
            BSrc::Im2col { x, geom } => geom.pack(x, k0, kc, j0, nc, nr, out),
        }
    }

    fn check(&self) {
        match self {
            BSrc::Mat(m) => m.check(),
            BSrc::Im2col { x, geom } => assert!(x.len() >= geom.input_len(), "convolution input too short"),
        }
    }
}

/// Where [`sgemm`] writes: `c[i·rs + j·cs]` for row `i < m`, column `j < n`.
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The elements.
    pub data: &'a mut [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// `C = A·B + bias` (or `C += A·B + bias` with `accumulate`), `A` packed by [`pack_a`] for
/// this kernel's `MR`, `m×k`; `B` `k×n`; `bias` per row of `C`. `scratch` holds at least
/// [`SgemmKernel::scratch_len`] floats.
pub fn sgemm(
    kern: &SgemmKernel,
    m: usize,
    a: &[f32],
    b: BSrc<'_>,
    c: MatMut<'_>,
    bias: Option<&[f32]>,
    accumulate: bool,
    scratch: &mut [f32],
) {
    let (k, n) = b.dims();
    let (mr, nr, kc) = (kern.mr, kern.nr, kern.kc);
    assert_eq!(a.len(), kern.packed_a_len(m, k), "packed A does not match m×k for this kernel");
    assert!(scratch.len() >= kern.scratch_len(), "sgemm scratch too small");
    if let Some(bias) = bias {
        assert!(bias.len() >= m, "bias shorter than m");
    }
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    let last = (m - 1) * c.rs + (n - 1) * c.cs;
    assert!(last < c.data.len(), "C view out of bounds");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let v = bias.map_or(0.0, |b| b[i]);
                let d = &mut c.data[i * c.rs + j * c.cs];
                *d = if accumulate { *d + v } else { v };
            }
        }
        return;
    }
    let (bpack, rest) = scratch.split_at_mut(kc * nr);
    let tile = &mut rest[..mr * nr];
    let mut bias_tile = [0f32; 64];
    assert!(mr <= bias_tile.len());

    for j0 in (0..n).step_by(nr) {
        let nc = (n - j0).min(nr);
        for k0 in (0..k).step_by(kc) {
            let kcur = (k - k0).min(kc);
            b.pack(k0, kcur, j0, nc, nr, bpack);
            let first = k0 == 0;
            let acc = accumulate || !first;
            for (p, i0) in (0..m).step_by(mr).enumerate() {
                let mc = (m - i0).min(mr);
                let ap = &a[p * mr * k + k0 * mr..p * mr * k + (k0 + kcur) * mr];
                let bias_ptr = match (first, bias) {
                    (true, Some(bv)) => {
                        bias_tile[..mc].copy_from_slice(&bv[i0..i0 + mc]);
                        bias_tile[mc..mr].fill(0.0);
                        bias_tile.as_ptr()
                    }
                    _ => std::ptr::null(),
                };
                if mc == mr && nc == nr && c.cs == 1 {
                    let off = i0 * c.rs + j0;
                    debug_assert!(off + (mr - 1) * c.rs + nr <= c.data.len());
                    // SAFETY: the packed panels hold kcur·MR and kcur·NR floats; the bias tile
                    // holds MR floats; rows i0..i0+MR and columns j0..j0+NR of C are inside
                    // `c.data` (checked above: the last element of C is in bounds and the tile is
                    // full).
                    unsafe {
                        (kern.ukr)(
                            kcur,
                            ap.as_ptr(),
                            bpack.as_ptr(),
                            kern.panel_offsets.as_ptr(),
                            c.data.as_mut_ptr().add(off),
                            c.rs,
                            bias_ptr,
                            acc,
                        )
                    };
                } else {
                    // Edge or strided tile: compute into the local tile, then copy the valid part.
                    for i in 0..mc {
                        for j in 0..nc {
                            tile[i * nr + j] = if acc { c.data[(i0 + i) * c.rs + (j0 + j) * c.cs] } else { 0.0 };
                        }
                    }
                    // SAFETY: as above; the tile holds MR·NR floats with row stride NR.
                    unsafe {
                        (kern.ukr)(
                            kcur,
                            ap.as_ptr(),
                            bpack.as_ptr(),
                            kern.panel_offsets.as_ptr(),
                            tile.as_mut_ptr(),
                            nr,
                            bias_ptr,
                            acc,
                        )
                    };
                    for i in 0..mc {
                        for j in 0..nc {
                            c.data[(i0 + i) * c.rs + (j0 + j) * c.cs] = tile[i * nr + j];
                        }
                    }
                }
            }
        }
    }
}

/// `C = A·B + bias` (or `+=`) where row `k` of `B` (`n` columns) is read in place at
/// `b[offs[k]..offs[k] + n]`: no packing, except of the last, partial panel of columns, which is
/// copied into `scratch` so that no read runs past a row. `A` packed by [`pack_a`] (`m×k`, `k =
/// offs.len()`); `C` row-major with row stride `c.rs` (`c.cs` must be 1); `scratch` as for
/// [`sgemm`].
pub fn sgemm_rows(
    kern: &SgemmKernel,
    m: usize,
    a: &[f32],
    b: &[f32],
    offs: &[usize],
    n: usize,
    c: MatMut<'_>,
    bias: Option<&[f32]>,
    accumulate: bool,
    scratch: &mut [f32],
) {
    let (k, mr, nr, kc) = (offs.len(), kern.mr, kern.nr, kern.kc);
    assert_eq!(a.len(), kern.packed_a_len(m, k), "packed A does not match m×k for this kernel");
    assert!(scratch.len() >= kern.scratch_len(), "sgemm scratch too small");
    assert_eq!(c.cs, 1, "sgemm_rows writes row-major C");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        let rows = MatRef { data: &[], rows: 0, cols: n, rs: 0, cs: 0 };
        return sgemm(kern, m, a, BSrc::Mat(rows), c, bias, accumulate, scratch);
    }
    assert!(offs.iter().all(|&o| o + n <= b.len()), "a row of B runs past its buffer");
    assert!((m - 1) * c.rs + n <= c.data.len(), "C view out of bounds");
    if let Some(bias) = bias {
        assert!(bias.len() >= m, "bias shorter than m");
    }
    let full = n / nr * nr;
    let (bpack, rest) = scratch.split_at_mut(kc * nr);
    let tile = &mut rest[..mr * nr];
    let mut bias_tile = [0f32; 64];
    assert!(mr <= bias_tile.len());
    for j0 in (0..n).step_by(nr) {
        let nc = (n - j0).min(nr);
        for k0 in (0..k).step_by(kc) {
            let kcur = (k - k0).min(kc);
            let first = k0 == 0;
            let acc = accumulate || !first;
            // Full panels are read in place; the last partial one is packed with zeros.
            let (bptr, optr) = if j0 < full {
                (b[j0..].as_ptr(), offs[k0..].as_ptr())
            } else {
                for (kk, &o) in offs[k0..k0 + kcur].iter().enumerate() {
                    let row = &mut bpack[kk * nr..kk * nr + nr];
                    row[..nc].copy_from_slice(&b[o + j0..o + j0 + nc]);
                    row[nc..].fill(0.0);
                }
                (bpack.as_ptr(), kern.panel_offsets.as_ptr())
            };
            for (p, i0) in (0..m).step_by(mr).enumerate() {
                let mc = (m - i0).min(mr);
                let ap = &a[p * mr * k + k0 * mr..p * mr * k + (k0 + kcur) * mr];
                let bias_ptr = match (first, bias) {
                    (true, Some(bv)) => {
                        bias_tile[..mc].copy_from_slice(&bv[i0..i0 + mc]);
                        bias_tile[mc..mr].fill(0.0);
                        bias_tile.as_ptr()
                    }
                    _ => std::ptr::null(),
                };
                if mc == mr && nc == nr {
                    let off = i0 * c.rs + j0;
                    // SAFETY: A holds kcur·MR floats; rows k0..k0+kcur of B are NR floats each at
                    // `bptr + offs[k]` (full panels: `j0 + NR ≤ n` and every `offs[k] + n ≤ b.len()`,
                    // checked above; packed panels: NR floats per row); the tile of C is in bounds.
                    unsafe {
                        (kern.ukr)(kcur, ap.as_ptr(), bptr, optr, c.data.as_mut_ptr().add(off), c.rs, bias_ptr, acc)
                    };
                } else {
                    for i in 0..mc {
                        for j in 0..nc {
                            tile[i * nr + j] = if acc { c.data[(i0 + i) * c.rs + j0 + j] } else { 0.0 };
                        }
                    }
                    // SAFETY: as above, into the local MR×NR tile.
                    unsafe { (kern.ukr)(kcur, ap.as_ptr(), bptr, optr, tile.as_mut_ptr(), nr, bias_ptr, acc) };
                    for i in 0..mc {
                        c.data[(i0 + i) * c.rs + j0..(i0 + i) * c.rs + j0 + nc]
                            .copy_from_slice(&tile[i * nr..i * nr + nc]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
