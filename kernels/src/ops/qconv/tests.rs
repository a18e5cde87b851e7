//! Every integer convolution mode against the definition, bit for bit, per tier and thread count.

use super::*;
use crate::ops::act::Activation;
use crate::ops::quant::{ActQ, quantize, quantize_c4};
use crate::testing::data;

/// The definition: quantize x, then Σ (q − zp)·w exactly, then the shared epilogue.
fn naive(
    g: &QConvGeom,
    x: &[f32],
    w: &[i8],
    splits: &[usize],
    qs: &[ActQ],
    scales: &[Vec<f32>],
    bias: &[f32],
) -> Vec<f32> {
    let [oh, ow] = g.out_hw().unwrap();
    let mut y = vec![0f32; g.n * g.cout * oh * ow];
    for b in 0..g.n {
        for co in 0..g.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut v = 0f32;
                    for (gi, &c0) in splits.iter().enumerate() {
                        let c1 = splits.get(gi + 1).copied().unwrap_or(g.cin);
                        let q = qs[gi];
                        let mut acc = 0i64;
                        for ci in c0..c1 {
                            for i in 0..g.kernel[0] {
                                for j in 0..g.kernel[1] {
                                    let iy = (oy * g.stride[0] + i) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + j) as isize - g.pad[2] as isize;
                                    let qv = if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                        q.zero_point
                                    } else {
                                        let xv = x[((b * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize];
                                        quantize(xv, q.delta, f32::from(q.zero_point), q.qmax())
                                    };
                                    let wv = w[((co * g.cin + ci) * g.kernel[0] + i) * g.kernel[1] + j];
                                    acc += (i64::from(qv) - i64::from(q.zero_point)) * i64::from(wv);
                                }
                            }
                        }
                        let t = crate::qgemm::QTile {
                            scale: [scales[gi][co]; 16],
                            corr: [0; 16],
                            bias: [if gi == 0 { bias[co] } else { 0.0 }; 16],
                            raw: false,
                        };
                        v = crate::reference::qgemm_epilogue(acc as i32, 0, &t, (gi > 0).then_some(v));
                    }
                    y[((b * g.cout + co) * oh + oy) * ow + ox] = v;
                }
            }
        }
    }
    y
}

/// One convolution with weights in `[−wmax, wmax − 1]` (128: 8-bit, 64: 7-bit, which takes
/// the tier's `vpmaddubsw` kernel where it has one).
fn case(k: &Kernels, g: QConvGeom, splits: &[usize], seed: u64, wmax: f32) {
    let x: Vec<f32> = data(g.n * g.cin * g.h * g.w, seed).iter().map(|v| v * 2.0).collect();
    let w: Vec<i8> = data(g.cout * g.cin * g.kernel[0] * g.kernel[1], seed + 1)
        .iter()
        .map(|v| (v * wmax).clamp(-wmax, wmax - 1.0) as i8)
        .collect();
    let bias = data(g.cout, seed + 2);
    let qs: Vec<ActQ> = splits
        .iter()
        .enumerate()
        .map(|(i, _)| ActQ { delta: 0.011 + 0.003 * i as f32, zero_point: 128 - 9 * i as u8, bits: 8 })
        .collect();
    let scales: Vec<Vec<f32>> =
        qs.iter().map(|q| (0..g.cout).map(|c| q.delta * 0.002 * (1 + c % 5) as f32).collect()).collect();
    let want = naive(&g, &x, &w, splits, &qs, &scales, &bias);
    let plan = QConv2dPlan::new(k, g, &w, splits).unwrap();
    assert_eq!(plan.kernel().name, k.qgemm_for(&w).name);
    let bufs: Vec<Vec<u8>> = plan
        .input_layouts()
        .zip(splits)
        .zip(&qs)
        .map(|((l, &c0), &q)| {
            let mut b = vec![0u8; l.len()];
            quantize_c4(k, &x, g.cin, c0, Activation::None, q, l, &mut b);
            b
        })
        .collect();
    let inputs: Vec<QInput<'_>> = bufs
        .iter()
        .zip(&qs)
        .zip(&scales)
        .map(|((d, q), s)| QInput { data: d, zero_point: q.zero_point, scale: s })
        .collect();
    let mut y = vec![f32::NAN; want.len()];
    let mut scratch = vec![f32::NAN; plan.scratch_len(k)];
    qconv2d(k, &plan, &inputs, Some(&bias), QOutput::F32(&mut y), &mut scratch);
    for (i, (a, b)) in y.iter().zip(&want).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{} {g:?} splits {splits:?}: element {i}: {a} vs {b}", plan.kernel().name);
    }
    // On 2 and 3 threads: the same bits.
    for threads in [2, 3] {
        let pool = crate::pool::Pool::new(threads).unwrap();
        let mut yt = vec![f32::NAN; want.len()];
        let mut st = vec![f32::NAN; plan.scratch_len_threads(k, threads)];
        qconv2d_par(k, &plan, &inputs, Some(&bias), QOutput::F32(&mut yt), &mut st, &pool);
        assert!(yt.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads: {g:?} differs");
    }
    // A residual tensor and per-image channel values added in the output pass: the f32 sums
    // of the separate addition, on 1 and 2 threads.
    let [oh, ow] = plan.out_hw();
    let full = data(want.len(), seed + 3);
    let per_channel = data(g.n * g.cout, seed + 4);
    let pool = crate::pool::Pool::new(2).unwrap();
    for (name, add) in [("residual", Addend::Full(&full)), ("per-channel", Addend::PerChannel(&per_channel))] {
        let want_add: Vec<f32> = want
            .iter()
            .enumerate()
            .map(|(i, &v)| match add {
                Addend::Full(a) => v + a[i],
                Addend::PerChannel(a) => v + a[i / (oh * ow)],
            })
            .collect();
        for threads in [1, 2] {
            let mut ya = vec![f32::NAN; want.len()];
            let mut st = vec![f32::NAN; plan.scratch_len_threads(k, threads)];
            let out = QOutput::F32Add(&mut ya, add);
            if threads == 1 {
                qconv2d(k, &plan, &inputs, Some(&bias), out, &mut st);
            } else {
                qconv2d_par(k, &plan, &inputs, Some(&bias), out, &mut st, &pool);
            }
            assert!(
                ya.iter().zip(&want_add).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {g:?}: {name} added on {threads} threads differs",
                plan.kernel().name
            );
        }
    }
}

crate::testing::tier_test! {
    fn integer_convolutions_match_the_definition_bit_for_bit(k) {
        let g = |n, cin, cout, h, w, kk: usize, s: usize, pad| QConvGeom {
            n,
            cin,
            cout,
            h,
            w,
            kernel: [kk, kk],
            stride: [s, s],
            pad,
        };
        for wm in [128.0, 64.0] {
            case(k, g(2, 6, 9, 7, 11, 3, 1, [1, 1, 1, 1]), &[0], 1, wm); // 3×3 pad 1, odd sizes, channel padding
            case(k, g(3, 8, 16, 4, 4, 3, 1, [1, 1, 1, 1]), &[0], 2, wm); // small images, batch in the columns
            case(k, g(1, 13, 5, 6, 6, 1, 1, [0, 0, 0, 0]), &[0, 7], 3, wm); // split 1×1 skip conv
            case(k, g(2, 8, 7, 9, 8, 3, 2, [0, 1, 0, 1]), &[0], 4, wm); // DDPM downsample
            case(k, g(1, 10, 10, 7, 7, 2, 2, [0, 0, 0, 0]), &[0], 5, wm); // mnist 2×2 stride 2
            case(k, g(1, 3, 33, 5, 40, 3, 1, [2, 0, 1, 3]), &[0], 6, wm); // asymmetric padding, wide rows
            case(k, g(2, 1, 4, 28, 28, 3, 1, [1, 1, 1, 1]), &[0], 7, wm); // one input channel
            // Gathered into several packed column blocks (1152 columns), two input groups.
            case(k, g(2, 64, 8, 48, 48, 3, 2, [0, 1, 0, 1]), &[0, 24], 8, wm);
            // Whole-row tiles (`ConvMode::Rows`): widths that are multiples of every tier's
            // NR (48), of most (24), and two input groups at 16.
            case(k, g(2, 5, 7, 6, 48, 3, 1, [1, 1, 1, 1]), &[0], 9, wm);
            case(k, g(1, 9, 6, 5, 24, 3, 1, [0, 2, 1, 1]), &[0], 10, wm);
            case(k, g(2, 12, 5, 4, 16, 3, 1, [1, 1, 1, 1]), &[0, 5], 11, wm);
            // Row tiles over several column blocks (K = 576: a block ends mid-row and
            // mid-image).
            case(k, g(2, 64, 6, 10, 48, 3, 1, [1, 1, 1, 1]), &[0], 12, wm);
        }
    }
}
