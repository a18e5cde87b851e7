//! f32 steps: every op that runs in floats, and conv/linear nodes on f32 (or dequantized)
//! weights.

use super::*;

/// One node's step, output shape and scratch need.
pub(super) fn build_step<'m>(
    model: &'m Model,
    k: &Kernels,
    node: &Node,
    ins: &[&Vec<usize>],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
    Ok(match &node.op {
        Op::Conv2d(c) => return build_f32_weighted(model, k, node, ins, &floats(model, c.weight), threads),
        Op::ConvTranspose2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "ConvTranspose2d input")?;
            check_channels(node, ci, c.in_channels)?;
            let geom = convt_geom(c, ci, h, w);
            let [oh, ow] = geom.out_hw().ok_or_else(|| shape_err(node, "the padding removes the whole output"))?;
            let wf = floats(model, c.weight);
            let w = conv::pack_conv_transpose2d_weights(k, &wf, &geom);
            let scratch = conv::conv_transpose2d_scratch_len(k, &geom);
            (Step::ConvT { x: v(0), n, geom, w, bias: opt(c.bias) }, vec![n, geom.cout, oh, ow], scratch)
        }
        Op::Linear(l) => return build_f32_weighted(model, k, node, ins, &floats(model, l.weight), threads),
        Op::GroupNorm(gn) => {
            let [n, c, h, w] = rank4(node, ins[0], "GroupNorm input")?;
            check_channels(node, c, gn.channels)?;
            let step = Step::GroupNorm {
                x: v(0),
                n,
                c,
                hw: h * w,
                groups: gn.groups as usize,
                eps: gn.eps,
                gamma: opt(gn.weight),
                beta: opt(gn.bias),
                act: Activation::None,
            };
            (step, ins[0].clone(), 0)
        }
        Op::LayerNorm(ln) => match ln.axes {
            LayerNormAxes::ChannelSpatial => {
                let [n, c, h, w] = rank4(node, ins[0], "LayerNorm input")?;
                check_channels(node, c, ln.channels)?;
                if let Some(t) = ln.weight.or(ln.bias) {
                    let want = model.file().tensor(t).expect("validated").shape;
                    if want != [c as u64, h as u64, w as u64] {
                        return Err(shape_err(
                            node,
                            format!(
                                "LayerNorm over (C, H, W) has parameters {want:?}, the input is [{c}, {h}, {w}]: this model runs at one size only"
                            ),
                        ));
                    }
                }
                let step = Step::LayerNormChw {
                    x: v(0),
                    n,
                    len: c * h * w,
                    eps: ln.eps,
                    gamma: opt(ln.weight),
                    beta: opt(ln.bias),
                };
                (step, ins[0].clone(), 0)
            }
            LayerNormAxes::Channel => {
                let s = ins[0];
                let (n, c, positions, channels_last) = match s.as_slice() {
                    [n, c, h, w] => (*n, *c, h * w, false),
                    [n, l, c] => (*n, *c, *l, true),
                    [n, c] => (*n, *c, 1, true),
                    _ => return Err(shape_err(node, format!("LayerNorm of shape {s:?}"))),
                };
                check_channels(node, c, ln.channels)?;
                let step = Step::LayerNormChannel {
                    x: v(0),
                    n,
                    c,
                    positions,
                    channels_last,
                    eps: ln.eps,
                    gamma: opt(ln.weight),
                    beta: opt(ln.bias),
                };
                (step, s.clone(), 0)
            }
        },
        Op::Silu | Op::Relu | Op::Sigmoid | Op::Gelu(_) => {
            let act = crate::convert::activation(&node.op).expect("activation op");
            (Step::Act { x: v(0), act }, ins[0].clone(), 0)
        }
        Op::Add | Op::Mul => {
            let (a, b) = (ins[0], ins[1]);
            let op = if matches!(node.op, Op::Add) { Binary::Add } else { Binary::Mul };
            let total: usize = a.iter().product();
            let (n, c, inner) = if a == b {
                (1, 1, total)
            } else if a.len() >= 3 && b.len() == 2 && a[..2] == b[..] {
                (a[0], a[1], a[2..].iter().product())
            } else {
                return Err(shape_err(node, format!("cannot combine shapes {a:?} and {b:?}")));
            };
            (Step::Binary { op, a: v(0), b: v(1), n, c, inner }, a.clone(), 0)
        }
        Op::Concat { axis } => {
            let axis = *axis as usize;
            let first = ins[0];
            if axis >= first.len() {
                return Err(shape_err(node, format!("concat axis {axis} of a rank-{} tensor", first.len())));
            }
            let mut out = first.clone();
            out[axis] = 0;
            let outer: usize = first[..axis].iter().product();
            let mut parts = Vec::new();
            let mut off = 0;
            for (i, s) in ins.iter().enumerate() {
                if s.len() != first.len() || s.iter().enumerate().any(|(d, &x)| d != axis && x != first[d]) {
                    return Err(shape_err(node, format!("cannot concatenate {first:?} and {s:?} along axis {axis}")));
                }
                let inner: usize = s[axis..].iter().product();
                parts.push((v(i), inner, off));
                off += inner;
                out[axis] += s[axis];
            }
            (Step::Concat { parts, total: off, outer }, out, 0)
        }
        Op::Pad(p) => {
            let [n, c, h, w] = rank4(node, ins[0], "Pad input")?;
            let (pad, value) = match p {
                Pad::Fixed { padding, value } => {
                    ([padding.top, padding.bottom, padding.left, padding.right].map(|x| x as usize), *value)
                }
                Pad::MatchSpatial => {
                    let [_, _, rh, rw] = rank4(node, ins[1], "Pad reference")?;
                    if rh < h || rw < w {
                        return Err(shape_err(node, format!("cannot pad {h}x{w} down to {rh}x{rw}")));
                    }
                    let (dh, dw) = (rh - h, rw - w);
                    ([dh / 2, dh - dh / 2, dw / 2, dw - dw / 2], 0.0)
                }
            };
            let (oh, ow) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
            (Step::Pad { x: v(0), planes: n * c, h, w, pad, value }, vec![n, c, oh, ow], 0)
        }
        Op::UpsampleNearest { scale } => {
            let [n, c, h, w] = rank4(node, ins[0], "UpsampleNearest input")?;
            let s = *scale as usize;
            (Step::Upsample { x: v(0), planes: n * c, h, w, s }, vec![n, c, h * s, w * s], 0)
        }
        Op::AvgPool2d(p) => {
            let [n, c, h, w] = rank4(node, ins[0], "AvgPool2d input")?;
            let (kernel, stride) = (p.kernel.map(|x| x as usize), p.stride.map(|x| x as usize));
            if kernel[0] > h || kernel[1] > w {
                return Err(shape_err(node, format!("a {kernel:?} window does not fit a {h}x{w} input")));
            }
            let (oh, ow) = ((h - kernel[0]) / stride[0] + 1, (w - kernel[1]) / stride[1] + 1);
            (Step::AvgPool { x: v(0), planes: n * c, h, w, kernel, stride }, vec![n, c, oh, ow], 0)
        }
        Op::TimestepEmbedding(te) => {
            let [n] = <[usize; 1]>::try_from(ins[0].as_slice())
                .map_err(|_| shape_err(node, format!("the timestep must be [N], got {:?}", ins[0])))?;
            let dim = te.dim() as usize;
            let step = match *te {
                TimestepEmbedding::Sinusoidal { order, denominator, max_period, .. } => {
                    let (order, half_minus_one) = crate::convert::sinusoid(order, denominator);
                    Step::Sinusoid { t: v(0), dim, order, half_minus_one, max_period }
                }
                TimestepEmbedding::Table { table, .. } => {
                    let rows = model.file().tensor(table).expect("validated").shape[0] as usize;
                    Step::Table { t: v(0), dim, rows, table: floats(model, table) }
                }
            };
            (step, vec![n, dim], 0)
        }
        Op::Attention(a) => {
            if a.layout != AttentionLayout::Spatial {
                return Err(unsupported(node, "attention over token sequences"));
            }
            let [n, c, h, w] = rank4(node, ins[0], "Attention q")?;
            check_channels(node, c, a.channels)?;
            if ins[1] != ins[0] || ins[2] != ins[0] {
                return Err(shape_err(node, format!("q, k, v shapes differ: {:?} {:?} {:?}", ins[0], ins[1], ins[2])));
            }
            let shape = AttentionShape { n, channels: c, heads: a.heads as usize, tokens: h * w, scale: a.scale };
            let scratch = shape.scratch_len_threads(k, threads);
            (Step::Attention { q: v(0), k: v(1), v: v(2), shape }, ins[0].clone(), scratch)
        }
    })
}

/// A conv or linear node run in f32 with the weights `wf` (the file's, or dequantized ones for a
/// quantized node whose input stays f32).
pub(super) fn build_f32_weighted<'m>(
    model: &'m Model,
    k: &Kernels,
    node: &Node,
    ins: &[&Vec<usize>],
    wf: &[f32],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
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
            Ok((Step::Conv { x: v(0), n, cout, parts, bias: opt(c.bias) }, vec![n, cout, oh, ow], scratch))
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
            Ok((Step::Linear { x: v(0), rows, inf, outf, w: wbuf, bias: opt(l.bias) }, out, k.sgemm().scratch_len()))
        }
        _ => Err(unsupported(node, "an unquantized input on this op")),
    }
}
