//! Binary element-wise ops with the graph's broadcasting rule, data movement (concat, pad,
//! upsample, pool) and the timestep embedding.

/// A binary element-wise op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `a + b`.
    Add,
    /// `a · b`.
    Mul,
}

crate::simd::multiversion! {
    /// `y = a ∘ b` where `b` has the same length as `a`, or is `[n, c]` broadcast over the `inner`
    /// positions of each channel of `a = [n, c, inner]`.
    pub fn binary(op: Binary, a: &[f32], b: &[f32], n: usize, c: usize, inner: usize, y: &mut [f32]) => binary_generic
}

/// [`binary`] on the threads of `par`, split by `[n, c]` rows.
#[allow(clippy::too_many_arguments)]
pub fn binary_par(
    k: &crate::Kernels,
    op: Binary,
    a: &[f32],
    b: &[f32],
    n: usize,
    c: usize,
    inner: usize,
    y: &mut [f32],
    par: &dyn crate::pool::Parallel,
) {
    assert!(a.len() == n * c * inner && y.len() == a.len(), "binary op shapes");
    let full = b.len() == a.len();
    assert!(full || b.len() == n * c, "broadcast operand must be [N, C]");
    let threads = par.threads();
    let ys = crate::pool::SharedMut::new(y);
    par.run(&|t| {
        let (r0, r1) = crate::pool::split(n * c, threads, t, 1);
        if r0 == r1 {
            return;
        }
        let bs = if full { &b[r0 * inner..r1 * inner] } else { &b[r0..r1] };
        // SAFETY: row ranges are disjoint between threads.
        let dst = unsafe { ys.part(r0 * inner, r1 * inner) };
        binary(k, op, &a[r0 * inner..r1 * inner], bs, 1, r1 - r0, inner, dst);
    });
}

#[inline(always)]
fn binary_generic(op: Binary, a: &[f32], b: &[f32], n: usize, c: usize, inner: usize, y: &mut [f32]) {
    assert!(a.len() == n * c * inner && y.len() == a.len(), "binary op shapes");
    let f = |x: f32, z: f32| match op {
        Binary::Add => x + z,
        Binary::Mul => x * z,
    };
    if b.len() == a.len() {
        for ((d, &x), &z) in y.iter_mut().zip(a).zip(b) {
            *d = f(x, z);
        }
    } else {
        assert_eq!(b.len(), n * c, "broadcast operand must be [N, C]");
        for (blk, (ys, xs)) in y.chunks_exact_mut(inner).zip(a.chunks_exact(inner)).enumerate() {
            let z = b[blk];
            for (d, &x) in ys.iter_mut().zip(xs) {
                *d = f(x, z);
            }
        }
    }
}

/// One input of a concatenation along an axis: `y` is `outer` blocks of `total` elements;
/// `x` contributes `inner` elements per block, placed at `offset` within each block.
pub fn concat_part(x: &[f32], inner: usize, offset: usize, total: usize, outer: usize, y: &mut [f32]) {
    assert!(x.len() == outer * inner && y.len() == outer * total && offset + inner <= total, "concat shapes");
    for o in 0..outer {
        y[o * total + offset..o * total + offset + inner].copy_from_slice(&x[o * inner..(o + 1) * inner]);
    }
}

/// A whole concatenation on the threads of `par`, each thread writing one contiguous range of
/// `y` (so a single block is split too): `part(i)` is input `i`'s `(x, inner, offset)` as for
/// [`concat_part`].
pub fn concat_par<'a>(
    parts: usize,
    part: &(dyn Fn(usize) -> (&'a [f32], usize, usize) + Sync),
    total: usize,
    outer: usize,
    y: &mut [f32],
    par: &dyn crate::pool::Parallel,
) {
    assert_eq!(y.len(), outer * total, "concat shapes");
    for i in 0..parts {
        let (x, inner, offset) = part(i);
        assert!(x.len() == outer * inner && offset + inner <= total, "concat shapes");
    }
    let threads = par.threads();
    let ys = crate::pool::SharedMut::new(y);
    par.run(&|t| {
        let (e0, e1) = crate::pool::split(outer * total, threads, t, 16);
        if e0 == e1 {
            return;
        }
        // SAFETY: element ranges are disjoint between threads.
        let dst = unsafe { ys.part(e0, e1) };
        for o in e0 / total..e1.div_ceil(total) {
            for i in 0..parts {
                let (x, inner, offset) = part(i);
                // The part's run in block o, clipped to this thread's range.
                let (a, b) = ((o * total + offset).max(e0), (o * total + offset + inner).min(e1));
                if a < b {
                    let src = o * inner + (a - o * total - offset);
                    dst[a - e0..b - e0].copy_from_slice(&x[src..src + (b - a)]);
                }
            }
        }
    });
}

/// Constant padding of `planes` planes `[h, w]`: `pad = [top, bottom, left, right]`.
pub fn pad(x: &[f32], planes: usize, h: usize, w: usize, pad: [usize; 4], value: f32, y: &mut [f32]) {
    let (oh, ow) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
    assert!(x.len() == planes * h * w && y.len() == planes * oh * ow, "pad shapes");
    for p in 0..planes {
        let dst = &mut y[p * oh * ow..(p + 1) * oh * ow];
        dst.fill(value);
        for r in 0..h {
            let o = (r + pad[0]) * ow + pad[2];
            dst[o..o + w].copy_from_slice(&x[(p * h + r) * w..(p * h + r + 1) * w]);
        }
    }
}

/// Nearest-neighbour upsampling of `planes` planes `[h, w]` by `s`.
pub fn upsample_nearest(x: &[f32], planes: usize, h: usize, w: usize, s: usize, y: &mut [f32]) {
    let ow = w * s;
    assert!(x.len() == planes * h * w && y.len() == planes * h * s * ow, "upsample shapes");
    for p in 0..planes {
        for r in 0..h {
            let src = &x[(p * h + r) * w..(p * h + r + 1) * w];
            let base = (p * h * s + r * s) * ow;
            let first = &mut y[base..base + ow];
            for (c, &v) in src.iter().enumerate() {
                first[c * s..(c + 1) * s].fill(v);
            }
            for k in 1..s {
                let (done, rest) = y[base..].split_at_mut(k * ow);
                rest[..ow].copy_from_slice(&done[..ow]);
            }
        }
    }
}

/// Average pooling without padding of `planes` planes `[h, w]`.
pub fn avg_pool2d(x: &[f32], planes: usize, h: usize, w: usize, kernel: [usize; 2], stride: [usize; 2], y: &mut [f32]) {
    let (oh, ow) = ((h - kernel[0]) / stride[0] + 1, (w - kernel[1]) / stride[1] + 1);
    assert!(x.len() == planes * h * w && y.len() == planes * oh * ow, "avg_pool shapes");
    let inv = 1.0 / (kernel[0] * kernel[1]) as f32;
    for p in 0..planes {
        let src = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0.0;
                for i in 0..kernel[0] {
                    let row = &src[(oy * stride[0] + i) * w + ox * stride[1]..][..kernel[1]];
                    s += row.iter().sum::<f32>();
                }
                y[(p * oh + oy) * ow + ox] = s * inv;
            }
        }
    }
}

/// Order of the halves of a sinusoidal embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinusoidOrder {
    /// `[sin, cos]`.
    SinCos,
    /// `[cos, sin]`.
    CosSin,
}

/// Sinusoidal timestep embedding, computed in f32 the way PyTorch implementations do:
/// `f_i = exp(i · (−ln(max_period)/d))` with the scalar `−ln(max_period)/d` rounded to f32,
/// `arg = t·f_i`, then `sin`/`cos`; `d` is `half − 1` or `half`; odd `dim` gets a zero column.
pub fn timestep_sinusoid(
    t: &[f32],
    dim: usize,
    order: SinusoidOrder,
    half_minus_one: bool,
    max_period: f32,
    y: &mut [f32],
) {
    let half = dim / 2;
    assert!(y.len() == t.len() * dim, "timestep embedding shapes");
    let d = if half_minus_one { half - 1 } else { half } as f64;
    let step = (-(f64::from(max_period)).ln() / d) as f32;
    for (row, &tv) in y.chunks_exact_mut(dim).zip(t) {
        for i in 0..half {
            let arg = tv * (i as f32 * step).exp();
            let (s, c) = (arg.sin(), arg.cos());
            let (first, second) = match order {
                SinusoidOrder::SinCos => (s, c),
                SinusoidOrder::CosSin => (c, s),
            };
            row[i] = first;
            row[half + i] = second;
        }
        if dim % 2 == 1 {
            row[dim - 1] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    #[test]
    fn parallel_concat_writes_what_the_parts_write() {
        let pools: Vec<crate::pool::Pool> = [2, 3].iter().map(|&t| crate::pool::Pool::new(t).unwrap()).collect();
        // (outer, inner of each part): one block split between threads, several blocks, odd sizes.
        for (outer, inners) in [(1usize, vec![37usize, 5, 64]), (3, vec![16, 16]), (5, vec![1, 7]), (2, vec![40])] {
            let total: usize = inners.iter().sum();
            let xs: Vec<Vec<f32>> = inners.iter().enumerate().map(|(i, &n)| data(outer * n, i as u64)).collect();
            let offs: Vec<usize> = inners.iter().scan(0, |o, &n| Some(std::mem::replace(o, *o + n))).collect();
            let mut want = vec![f32::NAN; outer * total];
            for ((x, &inner), &off) in xs.iter().zip(&inners).zip(&offs) {
                concat_part(x, inner, off, total, outer, &mut want);
            }
            let part = |i: usize| (&xs[i][..], inners[i], offs[i]);
            let mut got = vec![f32::NAN; want.len()];
            concat_par(inners.len(), &part, total, outer, &mut got, &crate::pool::Serial);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "serial {outer} {inners:?}");
            for pool in &pools {
                got.fill(f32::NAN);
                concat_par(inners.len(), &part, total, outer, &mut got, pool);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "threads {outer} {inners:?}");
            }
        }
    }
}

#[cfg(test)]
mod reference {
    use super::*;
    use crate::testing::data;

    crate::testing::tier_test! {
        fn binary_ops_are_exactly_their_definition(k) {
            let (n, c, inner) = (2usize, 5usize, 37usize);
            let a = data(n * c * inner, 1);
            let full = data(n * c * inner, 2);
            let row = data(n * c, 3);
            for op in [Binary::Add, Binary::Mul] {
                let f = |x: f32, z: f32| if op == Binary::Add { x + z } else { x * z };
                let mut y = vec![f32::NAN; a.len()];
                binary(k, op, &a, &full, n, c, inner, &mut y);
                assert!(y.iter().enumerate().all(|(i, v)| v.to_bits() == f(a[i], full[i]).to_bits()), "{op:?} {:?}", k.tier());
                binary(k, op, &a, &row, n, c, inner, &mut y);
                assert!(
                    y.iter().enumerate().all(|(i, v)| v.to_bits() == f(a[i], row[i / inner]).to_bits()),
                    "{op:?} broadcast {:?}",
                    k.tier()
                );
                let pool = crate::pool::Pool::new(3).unwrap();
                let mut yp = vec![f32::NAN; a.len()];
                binary_par(k, op, &a, &row, n, c, inner, &mut yp, &pool);
                assert_eq!(yp, y, "{op:?} threaded {:?}", k.tier());
            }
        }
    }

    #[test]
    fn pad_upsample_and_pool_match_their_definitions() {
        let (planes, h, w) = (3usize, 4usize, 5usize);
        let x = data(planes * h * w, 4);
        let at = |p: usize, r: usize, c: usize| x[(p * h + r) * w + c];
        // pad [top, bottom, left, right] with a value.
        let pad = [1usize, 2, 3, 0];
        let (hp, wp) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
        let mut y = vec![f32::NAN; planes * hp * wp];
        super::pad(&x, planes, h, w, pad, -7.0, &mut y);
        for p in 0..planes {
            for r in 0..hp {
                for c in 0..wp {
                    let inside = r >= pad[0] && r < pad[0] + h && c >= pad[2] && c < pad[2] + w;
                    let want = if inside { at(p, r - pad[0], c - pad[2]) } else { -7.0 };
                    assert_eq!(y[(p * hp + r) * wp + c], want, "pad ({p}, {r}, {c})");
                }
            }
        }
        // Nearest upsampling by 3.
        let s = 3;
        let mut y = vec![f32::NAN; planes * h * s * w * s];
        upsample_nearest(&x, planes, h, w, s, &mut y);
        for (i, v) in y.iter().enumerate() {
            let (p, r, c) = (i / (h * s * w * s), i / (w * s) % (h * s), i % (w * s));
            assert_eq!(*v, at(p, r / s, c / s), "upsample {i}");
        }
        // 2×2 average pooling with stride 2 (the last odd column dropped, as PyTorch does).
        let (ho, wo) = ((h - 2) / 2 + 1, (w - 2) / 2 + 1);
        let mut y = vec![f32::NAN; planes * ho * wo];
        avg_pool2d(&x, planes, h, w, [2, 2], [2, 2], &mut y);
        for p in 0..planes {
            for r in 0..ho {
                for c in 0..wo {
                    let want = (at(p, 2 * r, 2 * c)
                        + at(p, 2 * r, 2 * c + 1)
                        + at(p, 2 * r + 1, 2 * c)
                        + at(p, 2 * r + 1, 2 * c + 1))
                        / 4.0;
                    let got = y[(p * ho + r) * wo + c];
                    assert!((got - want).abs() <= 1e-6, "pool ({p}, {r}, {c}): {got} vs {want}");
                }
            }
        }
    }
}
