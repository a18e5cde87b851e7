//! The interpreter's nodes computed by the runtime's kernels (norms, activations, quantized
//! attention), so that the fake-quant forward shares their exact rounding.

use candle_core::Tensor;
use edadm_format::graph::{AttentionLayout, LayerNormAxes, Op};

use super::{Env, Hooks, Net, to_vec};
use crate::error::Result;

impl Net {
    /// Norms, activations and quantized attention computed by the runtime's kernels; `None`
    /// for every other op.
    pub(super) fn node_by_kernels(
        &self,
        ni: usize,
        x: &Tensor,
        env: &Env,
        k: &edadm_kernels::Kernels,
        hooks: &dyn Hooks,
    ) -> Result<Option<Tensor>> {
        use edadm_kernels::ops::{act::Activation, norm};
        let node = &self.graph.nodes[ni];
        let p = &self.params[ni];
        let vecs = |t: &Option<Tensor>| t.as_ref().map(to_vec).transpose();
        let xs = to_vec(x)?;
        let mut y = vec![0f32; xs.len()];
        match &node.op {
            Op::GroupNorm(gn) => {
                let (n, c, h, w) = x.dims4()?;
                let (g, b) = (vecs(&p.weight)?, vecs(&p.bias)?);
                let a = Activation::None;
                norm::group_norm(
                    k,
                    &xs,
                    n,
                    c,
                    h * w,
                    gn.groups as usize,
                    gn.eps,
                    g.as_deref(),
                    b.as_deref(),
                    a,
                    &mut y,
                );
            }
            Op::LayerNorm(ln) if ln.axes == LayerNormAxes::ChannelSpatial => {
                let n = x.dim(0)?;
                let (g, b) = (vecs(&p.weight)?, vecs(&p.bias)?);
                let len = xs.len() / n.max(1);
                norm::layer_norm_chw(k, &xs, n, len, ln.eps, g.as_deref(), b.as_deref(), Activation::None, &mut y);
            }
            Op::Silu | Op::Relu | Op::Sigmoid | Op::Gelu(_) => {
                let a = edadm_runtime::convert::activation(&node.op).expect("an activation op");
                edadm_kernels::ops::act::apply_to(k, a, &xs, &mut y);
            }
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
                let kv = to_vec(&self.get(env, node.inputs[1], ni)?)?;
                let vv = to_vec(&self.get(env, node.inputs[2], ni)?)?;
                let mut scratch = vec![0f32; qa.scratch_len(k)];
                edadm_kernels::ops::qattention::qattention(k, &qa, &xs, &kv, &vv, &mut y, &mut scratch);
            }
            _ => return Ok(None),
        }
        Ok(Some(Tensor::from_vec(y, x.shape(), x.device())?))
    }
}
