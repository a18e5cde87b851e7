//! The weighted ops (`Conv2d`, `ConvTranspose2d`, `Linear`) lowered to steps: f32 on the file's
//! weights, f32 on dequantized weights (a quantized node whose input stays f32), and integer
//! (`Step::QConv`, `Step::QConvT`: every input-channel group quantized, then one exact u8×i8
//! product); weights are packed here, once. And their multiply-accumulates.

use super::super::*;
use super::kqs;
use super::{Cx, Lowered};

/// The f32 step of a weighted node on the file's weights.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { model, k, node, ins, .. } = *cx;
    match &node.op {
        Op::Conv2d(c) => build_f32_weights(cx, &floats(model, c.weight)),
        Op::Linear(l) => build_f32_weights(cx, &floats(model, l.weight)),
        Op::ConvTranspose2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "ConvTranspose2d input")?;
            check_channels(node, ci, c.in_channels)?;
            let geom = convt_geom(c, ci, h, w);
            let [oh, ow] = geom.out_hw().ok_or_else(|| shape_err(node, "the padding removes the whole output"))?;
            let wf = floats(model, c.weight);
            let w = conv::pack_conv_transpose2d_weights(k, &wf, &geom);
            let scratch = conv::conv_transpose2d_scratch_len(k, &geom);
            Ok((Step::ConvT { x: cx.v(0), n, geom, w, bias: cx.opt(c.bias) }, vec![n, geom.cout, oh, ow], scratch))
        }
        _ => unreachable!("{} is not a weighted op", node.op.name()),
    }
}

/// A conv or linear node run in f32 with the weights `wf` (the file's, or dequantized ones for a
/// quantized node whose input stays f32).
pub(super) fn build_f32_weights<'m>(cx: &Cx<'_, 'm>, wf: &[f32]) -> Lowered<'m> {
    let Cx { k, node, ins, threads, .. } = *cx;
    match &node.op {
        Op::Conv2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "Conv2d input")?;
            check_channels(node, ci, c.in_channels)?;
            let geom = ConvGeom {
                c: (c.in_channels / c.groups) as usize,
                h,
                w,
                kernel: c.kernel.map(|x| x as usize),
                stride: c.stride.map(|x| x as usize),
                dilation: c.dilation.map(|x| x as usize),
                pad: [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right].map(|x| x as usize),
                pad_value: 0.0,
            };
            let (cout, groups) = (c.out_channels as usize, c.groups as usize);
            // One part per thread, in whole GEMM row panels (one part for grouped convs).
            let nparts = if groups == 1 { threads.min(cout.div_ceil(k.sgemm().mr)).max(1) } else { 1 };
            let per_row = wf.len() / cout;
            let mut parts = Vec::with_capacity(nparts);
            let mut scratch = 0;
            for t in 0..nparts {
                let (r0, r1) = edadm_kernels::pool::split(cout, nparts, t, k.sgemm().mr);
                let rows = if groups == 1 { r1 - r0 } else { cout };
                let Some(plan) = conv::Conv2dPlan::new(k, geom, groups, rows, &wf[r0 * per_row..(r0 + rows) * per_row])
                else {
                    return Err(shape_err(node, format!("a {:?} kernel does not fit a {h}x{w} input", c.kernel)));
                };
                let len = plan.scratch_len(k).next_multiple_of(16);
                parts.push(ConvPart { r0, r1: r0 + rows, plan, scratch });
                scratch += len;
            }
            let [oh, ow] = parts[0].plan.out_hw();
            Ok((Step::Conv { x: cx.v(0), n, cout, parts, bias: cx.opt(c.bias) }, vec![n, cout, oh, ow], scratch))
        }
        Op::Linear(l) => {
            let s = ins[0];
            let (&last, lead) = s.split_last().ok_or_else(|| shape_err(node, "Linear of a scalar"))?;
            if lead.is_empty() || last != l.in_features as usize {
                return Err(shape_err(node, format!("Linear expects [.., {}], got {s:?}", l.in_features)));
            }
            let rows: usize = lead.iter().product();
            let (inf, outf) = (l.in_features as usize, l.out_features as usize);
            let mut wbuf = edadm_kernels::AlignedF32::zeros(k.sgemm().packed_a_len(outf, inf));
            edadm_kernels::gemm::pack_a(edadm_kernels::gemm::MatRef::row_major(wf, outf, inf), k.sgemm().mr, &mut wbuf);
            let mut out = lead.to_vec();
            out.push(outf);
            Ok((
                Step::Linear { x: cx.v(0), rows, inf, outf, w: wbuf, bias: cx.opt(l.bias) },
                out,
                k.sgemm().scratch_len(),
            ))
        }
        _ => Err(unsupported(node, "an unquantized input on this op")),
    }
}

/// The integer weights of a quantized node, unpacked to one i8 per element.
fn int_weights<'m>(model: &'m Model, t: TensorId) -> Cow<'m, [i8]> {
    let v = model.file().tensor(t).expect("validated tensor reference");
    match v.dtype {
        DType::I8 => Cow::Borrowed(v.as_i8().expect("validated i8")),
        DType::I4 => {
            let mut out = vec![0i8; v.numel() as usize];
            edadm_kernels::qgemm::unpack_i4(v.data, &mut out);
            Cow::Owned(out)
        }
        other => unreachable!("quantized weight with dtype {other}"),
    }
}

/// Per group `[start, end)`, its weight scales (normal numbers: the file's `verify`, which every
/// [`Model`] passes when it is opened, refuses any other; `docs/FORMAT.md` §5.5).
fn quant_groups<'m>(model: &'m Model, w: &WeightQuant, cin: usize) -> Vec<(usize, usize, Floats<'m>)> {
    (0..w.groups.len())
        .map(|g| {
            let end = w.groups.get(g + 1).map_or(cin, |n| n.channel_start as usize);
            (w.groups[g].channel_start as usize, end, floats(model, w.groups[g].weight_scales))
        })
        .collect()
}

/// The step of a quantized weighted node (METHOD.md §4.3). A node whose input stays f32 (the
/// output conv) runs in f32 on its dequantized weights.
pub(super) fn build_quant<'m>(cx: &Cx<'_, 'm>, wq: &WeightQuant) -> Lowered<'m> {
    let Cx { model, k, ni, node, ins, .. } = *cx;
    let op = &node.op;
    let weight = op.weight().expect("validated: weighted op");
    let ints = int_weights(model, weight);
    if wq.groups[0].input.is_none() {
        // f32 input × dequantized weights.
        let (out_ch, per) = match op {
            Op::Conv2d(c) => (c.out_channels as usize, ints.len() / c.out_channels as usize),
            Op::Linear(l) => (l.out_features as usize, l.in_features as usize),
            Op::ConvTranspose2d(_) => {
                return Err(unsupported(node, "a transposed convolution with an unquantized input"));
            }
            _ => unreachable!("weighted op"),
        };
        let cin_row = match op {
            Op::Conv2d(c) => (c.in_channels / c.groups) as usize,
            _ => per,
        };
        let kk = per / cin_row.max(1);
        let groups = quant_groups(model, wq, cin_row);
        let mut wf = vec![0f32; ints.len()];
        for o in 0..out_ch {
            for (s0, e0, sc) in &groups {
                for i in s0 * kk..e0 * kk {
                    wf[o * per + i] = f32::from(ints[o * per + i]) * sc[o];
                }
            }
        }
        return build_f32_weights(cx, &wf);
    }
    if wq.groups.iter().any(|g| g.input.is_some_and(|a| a.bits != 8)) {
        return Err(unsupported(node, "input quantizers other than 8-bit"));
    }
    match op {
        Op::Conv2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "Conv2d input")?;
            check_channels(node, ci, c.in_channels)?;
            if c.groups != 1 || c.dilation != [1, 1] {
                return Err(unsupported(node, "a quantized grouped or dilated convolution"));
            }
            let geom = QConvGeom {
                n,
                cin: ci,
                cout: c.out_channels as usize,
                h,
                w,
                kernel: c.kernel.map(|x| x as usize),
                stride: c.stride.map(|x| x as usize),
                pad: [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right].map(|x| x as usize),
            };
            qconv_step(cx, geom, &ints, wq, cx.opt(c.bias))
        }
        Op::Linear(l) => {
            let s = ins[0];
            if s.len() != 2 || s[1] != l.in_features as usize {
                return Err(unsupported(
                    node,
                    format!("a quantized Linear over {s:?} (only [N, {}] is supported)", l.in_features),
                ));
            }
            let geom = QConvGeom {
                n: s[0],
                cin: s[1],
                cout: l.out_features as usize,
                h: 1,
                w: 1,
                kernel: [1, 1],
                stride: [1, 1],
                pad: [0; 4],
            };
            let (step, _, scratch) = qconv_step(cx, geom, &ints, wq, cx.opt(l.bias))?;
            Ok((step, vec![s[0], l.out_features as usize], scratch))
        }
        Op::ConvTranspose2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "ConvTranspose2d input")?;
            check_channels(node, ci, c.in_channels)?;
            if wq.groups.len() != 1 {
                return Err(unsupported(node, "a split transposed convolution"));
            }
            let geom = convt_geom(c, ci, h, w);
            let plan = qconv::QConvTranspose2dPlan::new(k, n, geom, &ints)
                .ok_or_else(|| shape_err(node, "the transposed convolution has no output"))?;
            let [oh, ow] = plan.out_hw();
            let aq = kqs(model, ni, 0);
            let sc = floats(model, wq.groups[0].weight_scales);
            let scale = aq.iter().map(|a| sc.iter().map(|&d| d * a.delta).collect()).collect();
            let scratch = plan.scratch_len(k) + plan.input_layout().len().div_ceil(4);
            let step = Step::QConvT { x: cx.v(0), plan, q: aq, scale, bias: cx.opt(c.bias) };
            Ok((step, vec![n, geom.cout, oh, ow], scratch))
        }
        _ => unreachable!("weighted op"),
    }
}

/// The integer convolution step of `cx`'s node over `geom` (a linear layer as a 1×1 conv).
fn qconv_step<'m>(
    cx: &Cx<'_, 'm>,
    geom: QConvGeom,
    ints: &[i8],
    wq: &WeightQuant,
    bias: Option<Floats<'m>>,
) -> Lowered<'m> {
    let Cx { model, k, ni, node, threads, .. } = *cx;
    let x = cx.v(0);
    let groups = quant_groups(model, wq, geom.cin);
    let splits: Vec<usize> = groups.iter().map(|g| g.0).collect();
    let plan = qconv::QConv2dPlan::new(k, geom, ints, &splits).ok_or_else(|| {
        shape_err(node, format!("a {:?} kernel does not fit a {}x{} input", geom.kernel, geom.h, geom.w))
    })?;
    let [oh, ow] = plan.out_hw();
    let layouts: Vec<C4> = plan.input_layouts().copied().collect();
    let steps: Vec<QGroupStep> = groups
        .iter()
        .zip(layouts)
        .enumerate()
        .map(|(gi, ((s0, _, sc), layout))| {
            let q = kqs(model, ni, gi as u32);
            let scale = q.iter().map(|a| sc.iter().map(|&d| d * a.delta).collect()).collect();
            QGroupStep { ch0: *s0, q, scale, layout }
        })
        .collect();
    let scratch =
        plan.scratch_len_threads(k, threads) + steps.iter().map(|g| g.layout.len().div_ceil(4)).sum::<usize>();
    let step = Step::QConv { x, pre: false, cin: geom.cin, plan, groups: steps, bias, add: None, upsample: 1 };
    Ok((step, vec![geom.n, geom.cout, oh, ow], scratch))
}

/// The kernels' geometry of a transposed convolution over a `ci × h × w` input (f32 and integer).
fn convt_geom(c: &edadm_format::graph::ConvTranspose2d, ci: usize, h: usize, w: usize) -> ConvTransposeGeom {
    ConvTransposeGeom {
        cin: ci,
        cout: c.out_channels as usize,
        h,
        w,
        kernel: c.kernel.map(|x| x as usize),
        stride: c.stride.map(|x| x as usize),
        padding: c.padding.map(|x| x as usize),
        output_padding: c.output_padding.map(|x| x as usize),
    }
}

/// Multiply-accumulates of a weighted node with input `input` and output `out`.
pub(super) fn macs(op: &Op, numel: impl Fn(u32) -> u64, input: u32, out: u32) -> u64 {
    match op {
        Op::Conv2d(c) => {
            numel(out) * u64::from(c.in_channels / c.groups) * u64::from(c.kernel[0]) * u64::from(c.kernel[1])
        }
        Op::ConvTranspose2d(c) => {
            numel(input) * u64::from(c.out_channels) * u64::from(c.kernel[0]) * u64::from(c.kernel[1])
        }
        Op::Linear(l) => numel(out) * u64::from(l.in_features),
        _ => 0,
    }
}
