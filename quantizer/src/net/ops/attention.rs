//! Attention on candle tensors (the hooks quantize q, k, v and the probabilities), and the
//! integer attention by the runtime's kernel.

use candle_core::Tensor;
use edadm_format::graph::{AttentionLayout, Op};

use super::super::{Env, Hooks, Net, softmax_last, to_vec};
use super::kernel_output;
use crate::error::{QuantError, Result};

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor, env: &Env, hooks: &dyn Hooks) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    Ok(match &node.op {
        Op::Attention(a) => {
            if a.layout != AttentionLayout::Spatial {
                return Err(QuantError::Invalid(format!("{}: attention over token sequences", node.name)));
            }
            let k = net.get(env, node.inputs[1], ni)?;
            let v = net.get(env, node.inputs[2], ni)?;
            let (n, c, h, w) = x.dims4()?;
            let heads = a.heads as usize;
            let (d, l) = (c / heads, h * w);
            let q = hooks.input(ni, 0, x)?.reshape((n, heads, d, l))?;
            let k = hooks.input(ni, 1, k)?.reshape((n, heads, d, l))?;
            let v = hooks.input(ni, 2, v)?.reshape((n, heads, d, l))?;
            let s = (q.transpose(2, 3)?.contiguous()?.matmul(&k.contiguous()?)? * f64::from(a.scale))?;
            let p = hooks.probs(ni, softmax_last(&s)?)?;
            v.contiguous()?.matmul(&p.transpose(2, 3)?.contiguous()?)?.reshape((n, c, h, w))?
        }
        _ => unreachable!("{} is not attention", node.op.name()),
    })
}

/// Computed by the runtime's kernels, so that the fake-quant forward shares their rounding;
/// `None` where this op has no kernel form here.
pub(in crate::net) fn by_kernels(
    net: &Net,
    ni: usize,
    x: &Tensor,
    env: &Env,
    k: &edadm_kernels::Kernels,
    hooks: &dyn Hooks,
) -> Result<Option<Tensor>> {
    let node = &net.graph.nodes[ni];
    match &node.op {
        Op::Attention(a) if a.layout == AttentionLayout::Spatial => {
            let Some(qs) = hooks.attention_integer(ni) else { return Ok(None) };
            let (n, c, h, w) = x.dims4()?;
            let qa = edadm_kernels::ops::qattention::QAttention {
                n,
                channels: c,
                heads: a.heads as usize,
                tokens: h * w,
                scale: a.scale,
                scale_before: a.scale_placement == edadm_format::graph::ScalePlacement::BeforeQuantization,
                q: qs[0],
                k: qs[1],
                v: qs[2],
                p: qs[3],
                key_tile: 256,
            };
            let kv = to_vec(&net.get(env, node.inputs[1], ni)?)?;
            let vv = to_vec(&net.get(env, node.inputs[2], ni)?)?;
            let mut scratch = vec![0f32; qa.scratch_len(k)];
            let y = kernel_output(x, |xs, y| {
                edadm_kernels::ops::qattention::qattention(k, &qa, xs, &kv, &vv, y, &mut scratch)
            })?;
            Ok(Some(y))
        }
        _ => Ok(None),
    }
}
