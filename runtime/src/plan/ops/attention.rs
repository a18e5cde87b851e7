//! Attention lowered to steps: f32 (`Step::Attention`) and integer (`Step::QAttention`, q, k, v
//! and the probabilities quantized per time-step group), and its multiply-accumulates.

use super::super::*;
use super::kqs;
use super::{Cx, Lowered};

/// The node's attributes and its q shape `[N, C, H, W]`, checked: spatial layout (token
/// sequences are not lowered yet), the declared channels, the same shape for q, k and v.
fn spatial<'m>(cx: &Cx<'_, 'm>) -> Result<(&'m edadm_format::graph::Attention, [usize; 4])> {
    let Cx { node, ins, .. } = *cx;
    let Op::Attention(a) = &node.op else { unreachable!("{} is not attention", node.op.name()) };
    if a.layout != AttentionLayout::Spatial {
        return Err(unsupported(node, "attention over token sequences"));
    }
    let [n, c, h, w] = rank4(node, ins[0], "Attention q")?;
    check_channels(node, c, a.channels)?;
    if ins[1] != ins[0] || ins[2] != ins[0] {
        return Err(shape_err(node, format!("q, k, v shapes differ: {:?} {:?} {:?}", ins[0], ins[1], ins[2])));
    }
    Ok((a, [n, c, h, w]))
}

/// The f32 attention step, its output shape and its scratch floats.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { k, ins, threads, .. } = *cx;
    let (a, [n, c, h, w]) = spatial(cx)?;
    let shape = AttentionShape { n, channels: c, heads: a.heads as usize, tokens: h * w, scale: a.scale };
    let scratch = shape.scratch_len_threads(k, threads);
    Ok((Step::Attention { q: cx.v(0), k: cx.v(1), v: cx.v(2), shape }, ins[0].clone(), scratch))
}

/// The integer attention step of node `ni` with quantization record `aq`.
pub(super) fn build_quant<'m>(cx: &Cx<'_, 'm>, aq: &AttentionQuant) -> Lowered<'m> {
    let Cx { model, k, ni, node, ins, threads, .. } = *cx;
    let (a, [n, c, h, w]) = spatial(cx)?;
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
    let per_group = (0..qs.len()).map(|sg| QAttention { q: qs[sg], k: ks[sg], v: vs[sg], p: ps[sg], ..qa }).collect();
    Ok((Step::QAttention { q: cx.v(0), k: cx.v(1), v: cx.v(2), a: per_group }, ins[0].clone(), scratch))
}

/// Multiply-accumulates of Q·Kᵀ and P·V: 2 · N · queries · keys · channels; spatial
/// `[N, C, H, W]` or tokens `[N, T, D]`.
pub(super) fn macs(shapes: &[Vec<usize>], inputs: &[u32]) -> u64 {
    let (q, k) = (&shapes[inputs[0] as usize], &shapes[inputs[1] as usize]);
    let (n, qt, kt, c) = match (q.as_slice(), k.as_slice()) {
        ([n, c, h, w], [_, _, kh, kw]) => (*n, h * w, kh * kw, *c),
        ([n, t, d], [_, kt, _]) => (*n, *t, *kt, *d),
        _ => return 0,
    };
    2 * (n * qt * kt * c) as u64
}
