//! Test helpers: deterministic data, tolerant comparison, naive reference implementations of
//! the composite ops (straight from their definitions, no blocking), and one test per kernel
//! tier (the crate-internal `tier_test!`: `cargo test avx2` runs one tier).

use crate::gemm::ConvGeom;
use crate::{Kernels, Tier};

/// Deterministic pseudo-random floats in `[-1, 1)` (xorshift64*).
pub fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Asserts `|got − want| ≤ tol · max(1, max|want|)` element-wise.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: element {i}: got {g}, want {w} (tolerance {})", tol * scale);
    }
}

/// Runs `f` with the table of `tier`, or prints a `skipped:` line when this CPU (or an
/// `EDADM_KERNELS` override's CPU) cannot run it.
pub fn on_tier(tier: Tier, f: impl FnOnce(&Kernels)) {
    match Kernels::for_tier(tier) {
        Some(k) => f(&k),
        None => println!("skipped: {} (this CPU lacks it)", tier.name()),
    }
}

/// One test per kernel tier, tract-style: `tier_test! { fn name(k) { … } }` becomes a module
/// `name` with a `#[test]` per tier compiled for this architecture (`name::avx2`,
/// `name::neon`, …), each running the body with that tier's [`Kernels`] as `k` — so
/// `cargo test avx512vnni` runs one tier, and a failure names its tier. Tiers the CPU lacks print
/// `skipped:`.
#[allow(unused_macros)]
macro_rules! tier_test {
    ($(#[$attr:meta])* fn $name:ident($k:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn tier_body($k: &$crate::Kernels) $body

            #[test]
            fn reference() {
                $crate::testing::on_tier($crate::Tier::Reference, tier_body)
            }
            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx2() {
                $crate::testing::on_tier($crate::Tier::Avx2, tier_body)
            }
            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avxvnni() {
                $crate::testing::on_tier($crate::Tier::AvxVnni, tier_body)
            }
            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx512() {
                $crate::testing::on_tier($crate::Tier::Avx512, tier_body)
            }
            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx512vnni() {
                $crate::testing::on_tier($crate::Tier::Avx512Vnni, tier_body)
            }
            #[cfg(target_arch = "aarch64")]
            #[test]
            fn neon() {
                $crate::testing::on_tier($crate::Tier::Neon, tier_body)
            }
            #[cfg(target_arch = "aarch64")]
            #[test]
            fn dotprod() {
                $crate::testing::on_tier($crate::Tier::Dotprod, tier_body)
            }
            #[cfg(target_arch = "aarch64")]
            #[test]
            fn i8mm() {
                $crate::testing::on_tier($crate::Tier::I8mm, tier_body)
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use tier_test;

/// Naive `C = A·B` for row-major `A (m×k)`, `B (k×n)`, accumulated in f64.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|kk| f64::from(a[i * k + kk]) * f64::from(b[kk * n + j])).sum::<f64>() as f32;
        }
    }
    c
}

/// Naive direct convolution of `n` images with `groups` groups; `w` is
/// `[cout, geom.c, kh, kw]`.
pub fn conv2d(
    x: &[f32],
    n: usize,
    geom: &ConvGeom,
    groups: usize,
    w: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (oh, ow) = (geom.out_h().unwrap(), geom.out_w().unwrap());
    let cin = geom.c * groups;
    let rows = cout / groups;
    let mut y = vec![0f32; n * cout * oh * ow];
    for img in 0..n {
        for co in 0..cout {
            let g = co / rows;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias.map_or(0.0, |b| f64::from(b[co]));
                    for ci in 0..geom.c {
                        for i in 0..geom.kernel[0] {
                            for j in 0..geom.kernel[1] {
                                let iy = (oy * geom.stride[0] + i * geom.dilation[0]) as isize - geom.pad[0] as isize;
                                let ix = (ox * geom.stride[1] + j * geom.dilation[1]) as isize - geom.pad[2] as isize;
                                let v = if iy >= 0 && ix >= 0 && (iy as usize) < geom.h && (ix as usize) < geom.w {
                                    x[((img * cin + g * geom.c + ci) * geom.h + iy as usize) * geom.w + ix as usize]
                                } else {
                                    geom.pad_value
                                };
                                let wv = w[((co * geom.c + ci) * geom.kernel[0] + i) * geom.kernel[1] + j];
                                s += f64::from(v) * f64::from(wv);
                            }
                        }
                    }
                    y[((img * cout + co) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    y
}

/// Naive attention: `out[c, i] = Σ_j softmax_j(scale·Σ_c' q[c', i]·k[c', j])·v[c, j]` per
/// image and head, in f64.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    channels: usize,
    heads: usize,
    l: usize,
    scale: f32,
) -> Vec<f32> {
    let d = channels / heads;
    let mut out = vec![0f32; q.len()];
    for img in 0..n {
        for h in 0..heads {
            let base = (img * channels + h * d) * l;
            for i in 0..l {
                let logits: Vec<f64> = (0..l)
                    .map(|j| {
                        f64::from(scale)
                            * (0..d)
                                .map(|c| f64::from(q[base + c * l + i]) * f64::from(k[base + c * l + j]))
                                .sum::<f64>()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[base + c * l + i] =
                        ((0..l).map(|j| e[j] * f64::from(v[base + c * l + j])).sum::<f64>() / z) as f32;
                }
            }
        }
    }
    out
}
