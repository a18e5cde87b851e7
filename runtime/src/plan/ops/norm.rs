//! Normalisations (`GroupNorm`, `LayerNorm`) lowered to steps. A GroupNorm whose reader is an
//! integer conv becomes `GroupNormQ` later, in `fuse::norm_quantize`.

use super::super::*;
use super::{Cx, Lowered};

/// The step of a normalisation node, its output shape and its scratch floats.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { model, node, ins, .. } = *cx;
    Ok(match &node.op {
        Op::GroupNorm(gn) => {
            let [n, c, h, w] = rank4(node, ins[0], "GroupNorm input")?;
            check_channels(node, c, gn.channels)?;
            let step = Step::GroupNorm {
                x: cx.v(0),
                n,
                c,
                hw: h * w,
                groups: gn.groups as usize,
                eps: gn.eps,
                gamma: cx.opt(gn.weight),
                beta: cx.opt(gn.bias),
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
                    x: cx.v(0),
                    n,
                    len: c * h * w,
                    eps: ln.eps,
                    gamma: cx.opt(ln.weight),
                    beta: cx.opt(ln.bias),
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
                    x: cx.v(0),
                    n,
                    c,
                    positions,
                    channels_last,
                    eps: ln.eps,
                    gamma: cx.opt(ln.weight),
                    beta: cx.opt(ln.bias),
                };
                (step, s.clone(), 0)
            }
        },
        _ => unreachable!("{} is not a normalisation", node.op.name()),
    })
}
