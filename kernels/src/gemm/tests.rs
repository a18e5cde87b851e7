//! Every sgemm tier against the naive product over awkward shapes, and convolutions and
//! attention built on it against their definitions.

use super::*;
use crate::ops::attention::{AttentionShape, attention_spatial};
use crate::ops::conv::*;
use crate::testing::{self, assert_close, data};

fn run_gemm(k: &crate::Kernels, m: usize, kk: usize, n: usize, bias: bool, acc: bool, cs_trans: bool, misalign: usize) {
    let kern = k.sgemm();
    let a = data(m * kk, 1);
    let b = data(kk * n, 2);
    let bias_v = data(m, 3);
    let mut packed = vec![0f32; kern.packed_a_len(m, kk)];
    pack_a(MatRef::row_major(&a, m, kk), kern.mr, &mut packed);
    let mut want = testing::matmul(&a, &b, m, kk, n);
    let init = data(m * n, 4);
    for i in 0..m {
        for j in 0..n {
            let w = &mut want[i * n + j];
            if bias {
                *w += bias_v[i];
            }
            if acc {
                *w += init[i * n + j];
            }
        }
    }
    // C stored row-major, or column-major (a transposed view); offset to misalign the slices.
    let mut cbuf = vec![0f32; m * n + misalign];
    let (rs, cs) = if cs_trans { (1, m) } else { (n, 1) };
    for i in 0..m {
        for j in 0..n {
            cbuf[misalign + i * rs + j * cs] = init[i * n + j];
        }
    }
    let mut bbuf = vec![0f32; misalign];
    bbuf.extend_from_slice(&b);
    let mut scratch = vec![f32::NAN; kern.scratch_len()];
    sgemm(
        kern,
        m,
        &packed,
        BSrc::Mat(MatRef::row_major(&bbuf[misalign..], kk, n)),
        MatMut { data: &mut cbuf[misalign..], rs, cs },
        bias.then_some(&bias_v[..]),
        acc,
        &mut scratch,
    );
    let got: Vec<f32> = (0..m * n).map(|e| cbuf[misalign + (e / n) * rs + (e % n) * cs]).collect();
    assert_close(&got, &want, 2e-6 * (kk as f32).sqrt().max(1.0), &format!("{} m{m} k{kk} n{n}", kern.name));
}

crate::testing::tier_test! {
    fn sgemm_matches_the_naive_product_on_every_tier(k) {
        let (mr, nr, kc) = (k.sgemm().mr, k.sgemm().nr, k.sgemm().kc);
        for m in [1, mr - 1, mr, mr + 1, 2 * mr + 3] {
            for n in [1, nr - 1, nr, nr + 1, 3 * nr + 2] {
                for kk in [0, 1, 7, kc + 3] {
                    run_gemm(k, m, kk, n, false, false, false, 0);
                }
            }
        }
        run_gemm(k, 2 * mr + 1, 2 * kc + 5, 2 * nr + 3, true, false, false, 1);
        run_gemm(k, mr + 2, 33, nr * 2, true, true, false, 3);
        run_gemm(k, mr + 2, 33, nr + 5, false, true, true, 2);
        run_gemm(k, 3, 1152, 64, true, false, false, 0);
    }
}

fn conv_case(
    k: &crate::Kernels,
    n: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    hw: [usize; 2],
    geom_k: [usize; 2],
    stride: [usize; 2],
    dil: [usize; 2],
    pad: [usize; 4],
) {
    let geom =
        ConvGeom { c: cin / groups, h: hw[0], w: hw[1], kernel: geom_k, stride, dilation: dil, pad, pad_value: 0.0 };
    let x = data(n * cin * hw[0] * hw[1], 11);
    let w = data(cout * geom.k(), 12);
    let bias = data(cout, 13);
    let want = testing::conv2d(&x, n, &geom, groups, &w, cout, Some(&bias));
    let plan = Conv2dPlan::new(k, geom, groups, cout, &w).unwrap();
    let mut y = vec![f32::NAN; want.len()];
    let mut scratch = vec![f32::NAN; plan.scratch_len(k)];
    conv2d(k, &plan, &x, n, Some(&bias), &mut y, &mut scratch);
    assert_close(&y, &want, 1e-5, &format!("{} conv {geom:?}", k.sgemm().name));
}

crate::testing::tier_test! {
    fn conv2d_matches_the_direct_convolution_on_every_tier(k) {
        conv_case(k, 2, 5, 7, 1, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]); // 3×3 pad 1
        conv_case(k, 1, 4, 6, 1, [8, 8], [3, 3], [2, 2], [1, 1], [0, 1, 0, 1]); // DDPM downsample
        conv_case(k, 2, 3, 5, 1, [7, 5], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]); // 1×1
        conv_case(k, 1, 6, 4, 1, [7, 7], [2, 2], [2, 2], [1, 1], [0, 0, 0, 0]); // 2×2 stride 2, odd size
        conv_case(k, 1, 4, 4, 2, [6, 9], [3, 2], [1, 2], [2, 1], [2, 0, 1, 3]); // groups, dilation, odd pads
        conv_case(k, 1, 1, 20, 1, [28, 28], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]); // single channel
        conv_case(k, 2, 6, 4, 2, [7, 9], [3, 2], [1, 1], [2, 1], [2, 0, 1, 3]); // stride 1: groups, dilation, odd pads
        conv_case(k, 1, 5, 7, 1, [6, 40], [1, 3], [1, 1], [1, 1], [0, 0, 1, 1]); // wide rows, padding in width only
        conv_case(k, 1, 40, 33, 1, [3, 3], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]); // tiny image, many channels
        conv_case(k, 3, 16, 16, 1, [16, 16], [3, 3], [1, 1], [1, 1], [0, 0, 0, 0]); // valid convolution
    }
}

crate::testing::tier_test! {
    fn conv_transpose2d_matches_its_definition(k) {
        for (cin, cout, hw, ks, st, pad, opad) in [
            (3usize, 5usize, [3usize, 4usize], [2usize, 2usize], [2usize, 2usize], [0usize, 0usize], [0usize, 0usize]),
            (4, 2, [5, 5], [3, 3], [2, 2], [1, 1], [1, 0]),
            (2, 3, [2, 3], [4, 3], [1, 3], [0, 1], [0, 2]),
        ] {
            let g = ConvTransposeGeom {
                cin,
                cout,
                h: hw[0],
                w: hw[1],
                kernel: ks,
                stride: st,
                padding: pad,
                output_padding: opad,
            };
            let [oh, ow] = g.out_hw().unwrap();
            let n = 2;
            let x = data(n * cin * hw[0] * hw[1], 21);
            let w = data(cin * cout * ks[0] * ks[1], 22);
            let bias = data(cout, 23);
            // Definition: y[co, oy, ox] = b[co] + Σ x[ci, iy, ix]·w[ci, co, i, j] with oy = iy·s − p + i.
            let mut want = vec![0f64; n * cout * oh * ow];
            for img in 0..n {
                for co in 0..cout {
                    for o in 0..oh * ow {
                        want[(img * cout + co) * oh * ow + o] = f64::from(bias[co]);
                    }
                }
                for ci in 0..cin {
                    for iy in 0..hw[0] {
                        for ix in 0..hw[1] {
                            for co in 0..cout {
                                for i in 0..ks[0] {
                                    for j in 0..ks[1] {
                                        let oy = (iy * st[0] + i) as isize - pad[0] as isize;
                                        let ox = (ix * st[1] + j) as isize - pad[1] as isize;
                                        if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                            want[((img * cout + co) * oh + oy as usize) * ow + ox as usize] +=
                                                f64::from(x[((img * cin + ci) * hw[0] + iy) * hw[1] + ix])
                                                    * f64::from(w[((ci * cout + co) * ks[0] + i) * ks[1] + j]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let packed = pack_conv_transpose2d_weights(k, &w, &g);
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; conv_transpose2d_scratch_len(k, &g)];
            conv_transpose2d(k, &x, n, &g, &packed, Some(&bias), &mut y, &mut scratch);
            assert_close(&y, &want, 1e-5, &format!("{} convT {g:?}", k.sgemm().name));
        }
    }
}

crate::testing::tier_test! {
    fn attention_matches_its_definition(k) {
        // (1, 4, 1, 300): one pair, several query tiles, split between the threads.
        for (n, channels, heads, l) in
            [(2usize, 8usize, 1usize, 16usize), (1, 12, 3, 70), (1, 4, 2, 130), (1, 4, 1, 300)]
        {
            let len = n * channels * l;
            let (q, kk, v) = (data(len, 31), data(len, 32), data(len, 33));
            let scale = 1.0 / ((channels / heads) as f32).sqrt();
            let want = testing::attention(&q, &kk, &v, n, channels, heads, l, scale);
            let s = AttentionShape { n, channels, heads, tokens: l, scale };
            let mut out = vec![f32::NAN; len];
            let mut scratch = vec![f32::NAN; s.scratch_len(k)];
            attention_spatial(k, &s, &q, &kk, &v, &mut out, &mut scratch);
            assert_close(&out, &want, 1e-5, &format!("{} attention {s:?}", k.sgemm().name));
            // Split by pairs or by query tiles on 2 and 3 threads: the same bits.
            for threads in [2, 3] {
                let pool = crate::pool::Pool::new(threads).unwrap();
                let mut o = vec![f32::NAN; len];
                let mut sc = vec![f32::NAN; s.scratch_len_threads(k, threads)];
                crate::ops::attention::attention_spatial_par(k, &s, &q, &kk, &v, &mut o, &mut sc, &pool);
                assert!(o.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads: {s:?}");
            }
        }
    }
}
