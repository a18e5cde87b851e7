//! Data movement (`Concat`, `Pad`, `UpsampleNearest`, `AvgPool2d`) lowered to steps. An upsampling
//! read only by an integer conv is folded into that conv's quantization (`fuse::upsample_quantize`).

use super::super::*;
use super::{Cx, Lowered};

/// The step of a data-movement node, its output shape and its scratch floats.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { node, ins, .. } = *cx;
    Ok(match &node.op {
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
                parts.push((cx.v(i), inner, off));
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
            (Step::Pad { x: cx.v(0), planes: n * c, h, w, pad, value }, vec![n, c, oh, ow], 0)
        }
        Op::UpsampleNearest { scale } => {
            let [n, c, h, w] = rank4(node, ins[0], "UpsampleNearest input")?;
            let s = *scale as usize;
            (Step::Upsample { x: cx.v(0), planes: n * c, h, w, s }, vec![n, c, h * s, w * s], 0)
        }
        Op::AvgPool2d(p) => {
            let [n, c, h, w] = rank4(node, ins[0], "AvgPool2d input")?;
            let (kernel, stride) = (p.kernel.map(|x| x as usize), p.stride.map(|x| x as usize));
            if kernel[0] > h || kernel[1] > w {
                return Err(shape_err(node, format!("a {kernel:?} window does not fit a {h}x{w} input")));
            }
            let (oh, ow) = ((h - kernel[0]) / stride[0] + 1, (w - kernel[1]) / stride[1] + 1);
            (Step::AvgPool { x: cx.v(0), planes: n * c, h, w, kernel, stride }, vec![n, c, oh, ow], 0)
        }
        _ => unreachable!("{} is not a shape op", node.op.name()),
    })
}
