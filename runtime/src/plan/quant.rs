//! Quantized steps (METHOD.md §4.3): integer convolutions, linears and transposed
//! convolutions with their per-time-step-group quantizers and scales, and the integer attention.

use super::*;

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

/// Activation quantizer `slot` of node `ni`, one per time-step group.
fn kqs(model: &Model, ni: usize, slot: u32) -> Vec<ActQ> {
    model
        .graph()
        .act_quants(ni, slot)
        .expect("validated: every quantizer has its groups")
        .iter()
        .map(crate::convert::act_q)
        .collect()
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

/// A quantized node's step (METHOD.md §4.3). A weighted node whose input stays f32 (the output
/// conv) runs in f32 on its dequantized weights.
pub(super) fn build_quant_step<'m>(
    model: &'m Model,
    k: &Kernels,
    ni: usize,
    q: &NodeQuant,
    ins: &[&Vec<usize>],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let node = &model.graph().nodes[ni];
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
    match (q, &node.op) {
        (NodeQuant::Attention(aq), Op::Attention(a)) => {
            if a.layout != AttentionLayout::Spatial {
                return Err(unsupported(node, "quantized attention over token sequences"));
            }
            let [n, c, h, w] = rank4(node, ins[0], "Attention q")?;
            check_channels(node, c, a.channels)?;
            if ins[1] != ins[0] || ins[2] != ins[0] {
                return Err(shape_err(node, format!("q, k, v shapes differ: {:?} {:?} {:?}", ins[0], ins[1], ins[2])));
            }
            if [aq.q, aq.k, aq.v, aq.prob].iter().any(|x| x.bits != 8) {
                return Err(unsupported(node, "attention quantizers other than 8-bit"));
            }
            let qa = QAttention {
                n,
                channels: c,
                heads: a.heads as usize,
                tokens: h * w,
                scale: a.scale,
                scale_before: a.scale_placement == edadm_format::graph::ScalePlacement::BeforeQuantization,
                q: crate::convert::act_q(&aq.q),
                k: crate::convert::act_q(&aq.k),
                v: crate::convert::act_q(&aq.v),
                p: crate::convert::act_q(&aq.prob),
                key_tile: 256,
            };
            let scratch = qa.scratch_len_threads(k, threads);
            let [qs, ks, vs, ps] = [0, 1, 2, 3].map(|slot| kqs(model, ni, slot));
            let per_group =
                (0..qs.len()).map(|sg| QAttention { q: qs[sg], k: ks[sg], v: vs[sg], p: ps[sg], ..qa }).collect();
            Ok((Step::QAttention { q: v(0), k: v(1), v: v(2), a: per_group }, ins[0].clone(), scratch))
        }
        (NodeQuant::Weight(wq), op) => {
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
                return float::build_f32_weighted(model, k, node, ins, &wf, threads);
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
                    qconv_step(k, ni, v(0), geom, &ints, model, wq, opt(c.bias), threads)
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
                    let (step, _, scratch) = qconv_step(k, ni, v(0), geom, &ints, model, wq, opt(l.bias), threads)?;
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
                    let step = Step::QConvT { x: v(0), plan, q: aq, scale, bias: opt(c.bias) };
                    Ok((step, vec![n, geom.cout, oh, ow], scratch))
                }
                _ => unreachable!("weighted op"),
            }
        }
        (NodeQuant::Attention(_), _) => Err(unsupported(node, "a quantization record that does not fit the op")),
    }
}

#[allow(clippy::too_many_arguments)]
fn qconv_step<'m>(
    k: &Kernels,
    ni: usize,
    x: u32,
    geom: QConvGeom,
    ints: &[i8],
    model: &'m Model,
    wq: &WeightQuant,
    bias: Option<Floats<'m>>,
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let node = &model.graph().nodes[ni];
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
