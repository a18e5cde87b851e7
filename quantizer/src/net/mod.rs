//! The graph IR interpreted on candle tensors: the differentiable twin of the runtime's f32
//! engine. Every op has the runtime's semantics (`docs/FORMAT.md` §5.4); parameters are
//! converted to f32 once. Any node range can be run on its own over a value environment, which
//! is how reconstruction runs one unit at a time.
//!
//! Quantization is not in here: [`Hooks`] lets a caller replace the weight a node uses and
//! transform the inputs it reads (fake quantization, AdaRound, QDrop), so the same interpreter
//! serves the FP model, the fake-quantized model and the reconstruction passes.

use std::ops::Range;

use candle_core::{D, DType as CDType, Device, Tensor};
use edadm_format::graph::{
    AttentionLayout, GeluApprox, Graph, InputKind, LayerNormAxes, Op, Pad, TensorId, TimestepEmbedding, ValueId,
};
use edadm_runtime::Model;

use crate::error::{QuantError, Result};

mod kernels;

impl From<candle_core::Error> for QuantError {
    fn from(e: candle_core::Error) -> Self {
        QuantError::Invalid(format!("tensor computation failed: {e}"))
    }
}

/// Reads a f32 or f16 tensor of the model as f32.
pub fn read_f32(model: &Model, t: TensorId) -> Result<Vec<f32>> {
    let v = model.file().tensor(t).ok_or_else(|| QuantError::Invalid(format!("tensor {} missing", t.0)))?;
    v.to_f32_vec().ok_or_else(|| {
        QuantError::Invalid(format!(
            "tensor `{}` is {}: only f32/f16 models can be quantized (is this file already quantized?)",
            v.name, v.dtype
        ))
    })
}

/// A node's parameters as tensors.
#[derive(Clone, Debug)]
pub struct NodeParams {
    /// Weight (conv, transposed conv, linear), norm scale γ, or the timestep table.
    pub weight: Option<Tensor>,
    /// Bias, or norm shift β.
    pub bias: Option<Tensor>,
}

/// What a caller may change about a weighted node's computation.
pub trait Hooks {
    /// The weight node `node` uses; `None` keeps its FP weight.
    fn weight(&self, _node: usize) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The bias a weighted node `node` uses; `None` keeps its own (bias correction).
    fn bias(&self, _node: usize) -> Option<Tensor> {
        None
    }
    /// The input node `node` reads, over input channels `channels` (one call per quantization
    /// group of a weighted node, and one per operand of an attention node with `group` =
    /// 0/1/2 for q/k/v); the default passes it through.
    fn input(&self, _node: usize, _group: usize, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
    /// The softmax probabilities of an attention node.
    fn probs(&self, _node: usize, p: Tensor) -> Result<Tensor> {
        Ok(p)
    }
    /// Called with every node's output.
    fn output(&self, _node: usize, _y: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Input-channel groups of a weighted node: the start of each group (`[0]` for one group).
    fn groups(&self, _node: usize) -> Vec<usize> {
        vec![0]
    }
    /// The integer form of a weighted node, when the node should compute exactly what the
    /// integer runtime computes: per input group its integer weights (f32-valued, op layout,
    /// the group's input channels) and `Δw[c]·Δa` per output channel. The node then computes
    /// `Σ_g conv(levels_g, w_int_g)·scale_g (+ bias on the first group)`, each integer sum exact
    /// in f32. Not differentiable; `None` keeps the float form.
    fn integer(&self, _node: usize) -> Option<&[(Tensor, Tensor)]> {
        None
    }
    /// The integer levels `q − zp` of input group `group` (integer form only).
    fn levels(&self, node: usize, _group: usize, _x: Tensor) -> Result<Tensor> {
        Err(QuantError::Invalid(format!("node {node}: no integer form")))
    }
    /// The runtime's kernels, when the f32 ops between quantizers (norms, activations) and the
    /// quantized attention should be computed by them, bit-identically to the runtime on the
    /// same kernel tier (so no activation lands on the other side of a rounding boundary).
    /// Not differentiable.
    fn runtime_kernels(&self) -> Option<&edadm_kernels::Kernels> {
        None
    }
    /// The quantizers `(Δ, zp, qmax)` of an attention node's q, k, v and probabilities, when it
    /// should compute as the integer runtime does (through [`Hooks::runtime_kernels`]).
    fn attention_integer(&self, _node: usize) -> Option<[edadm_kernels::ops::quant::ActQ; 4]> {
        None
    }
}

/// `Σ_g op(levels_g)·scale_g + bias` of the integer form.
fn integer_sum(
    hooks: &dyn Hooks,
    ni: usize,
    x: &Tensor,
    axis: usize,
    groups: &[(Tensor, Tensor)],
    bias: Option<&Tensor>,
    op: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let starts = hooks.groups(ni);
    let c = x.dim(axis)?;
    let mut y: Option<Tensor> = None;
    for (g, (w, scale)) in groups.iter().enumerate() {
        let s0 = starts[g];
        let e0 = starts.get(g + 1).copied().unwrap_or(c);
        let lv = hooks.levels(ni, g, x.narrow(axis, s0, e0 - s0)?)?;
        let acc = op(&lv, w)?;
        let mut shape = vec![1; acc.rank()];
        shape[if axis == acc.rank() - 1 { axis } else { 1 }] = scale.dim(0)?;
        let t = acc.broadcast_mul(&scale.reshape(shape.clone())?)?;
        y = Some(match y {
            Some(prev) => (t + prev)?,
            None => match bias {
                Some(b) => t.broadcast_add(&b.reshape(shape)?)?,
                None => t,
            },
        });
    }
    y.ok_or_else(|| QuantError::Invalid(format!("node {ni}: integer form without groups")))
}

/// No hooks: the FP model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fp;

impl Hooks for Fp {}

/// The graph with its parameters on a candle device.
#[derive(Debug)]
pub struct Net {
    /// The graph.
    pub graph: Graph,
    /// Per node, its parameters.
    pub params: Vec<NodeParams>,
    /// Where the tensors live.
    pub device: Device,
    sample_shape: [usize; 3],
}

/// Values by id; `None` where not computed (or not needed).
pub type Env = Vec<Option<Tensor>>;

impl Net {
    /// Loads the graph and its f32/f16 parameters.
    pub fn from_model(model: &Model, device: &Device) -> Result<Net> {
        let g = model.graph().clone();
        let file = model.file();
        let tensor = |t: TensorId| -> Result<Tensor> {
            let shape: Vec<usize> =
                file.tensor(t).expect("validated reference").shape.iter().map(|&d| d as usize).collect();
            Ok(Tensor::from_vec(read_f32(model, t)?, shape, device)?)
        };
        let opt = |t: Option<TensorId>| t.map(tensor).transpose();
        let mut params = Vec::with_capacity(g.nodes.len());
        for node in &g.nodes {
            let (weight, bias) = match &node.op {
                Op::Conv2d(c) => (Some(tensor(c.weight)?), opt(c.bias)?),
                Op::ConvTranspose2d(c) => (Some(tensor(c.weight)?), opt(c.bias)?),
                Op::Linear(l) => (Some(tensor(l.weight)?), opt(l.bias)?),
                Op::GroupNorm(n) => (opt(n.weight)?, opt(n.bias)?),
                Op::LayerNorm(n) => (opt(n.weight)?, opt(n.bias)?),
                Op::TimestepEmbedding(TimestepEmbedding::Table { table, .. }) => (Some(tensor(*table)?), None),
                _ => (None, None),
            };
            params.push(NodeParams { weight, bias });
        }
        Ok(Net { graph: g, params, device: device.clone(), sample_shape: model.sample_shape() })
    }

    /// `[C, H, W]` of one sample.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.sample_shape
    }

    /// An environment with the graph inputs `x` (`[N, C, H, W]`) and `t` (`[N]`) set.
    pub fn inputs(&self, x: Tensor, t: &[f32]) -> Result<Env> {
        let mut env: Env = vec![None; self.graph.num_values as usize];
        for i in &self.graph.inputs {
            env[i.value.0 as usize] = Some(match i.kind {
                InputKind::Sample { .. } => x.clone(),
                InputKind::Timestep => Tensor::from_vec(t.to_vec(), t.len(), &self.device)?,
                InputKind::Context { .. } => {
                    return Err(QuantError::Invalid(
                        "conditional models are not supported by the quantizer yet".into(),
                    ));
                }
            });
        }
        Ok(env)
    }

    /// Runs the whole graph; returns the output.
    pub fn forward(&self, x: Tensor, t: &[f32], hooks: &dyn Hooks) -> Result<Tensor> {
        let mut env = self.inputs(x, t)?;
        self.run(0..self.graph.nodes.len(), &mut env, hooks)?;
        self.output(&env)
    }

    /// The graph output of a fully evaluated environment.
    pub fn output(&self, env: &Env) -> Result<Tensor> {
        let v = self.graph.outputs[0].value;
        env[v.0 as usize].clone().ok_or_else(|| QuantError::Invalid("the output was not computed".into()))
    }

    /// Evaluates the nodes `range` in order, reading and writing `env`.
    pub fn run(&self, range: Range<usize>, env: &mut Env, hooks: &dyn Hooks) -> Result<()> {
        for ni in range {
            let y = self.node(ni, env, hooks)?;
            hooks.output(ni, &y)?;
            env[self.graph.nodes[ni].output.0 as usize] = Some(y);
        }
        Ok(())
    }

    fn get(&self, env: &Env, v: ValueId, ni: usize) -> Result<Tensor> {
        env[v.0 as usize].clone().ok_or_else(|| {
            QuantError::Invalid(format!(
                "node `{}` reads value {} before it is computed",
                self.graph.nodes[ni].name, v.0
            ))
        })
    }

    /// One node's output.
    pub fn node(&self, ni: usize, env: &Env, hooks: &dyn Hooks) -> Result<Tensor> {
        let node = &self.graph.nodes[ni];
        let p = &self.params[ni];
        let x = self.get(env, node.inputs[0], ni)?;
        let wbias = if node.op.is_weighted() { hooks.bias(ni).or_else(|| p.bias.clone()) } else { None };
        let weight = || -> Result<Tensor> {
            match hooks.weight(ni)? {
                Some(w) => Ok(w),
                None => Ok(p.weight.clone().expect("weighted node has a weight")),
            }
        };
        // The input after the hooks, group by group along channel axis `axis`.
        let grouped_input = |x: Tensor, axis: usize| -> Result<Tensor> {
            let starts = hooks.groups(ni);
            if starts.len() <= 1 {
                return hooks.input(ni, 0, x);
            }
            let c = x.dim(axis)?;
            let mut parts = Vec::with_capacity(starts.len());
            for (g, &s) in starts.iter().enumerate() {
                let e = starts.get(g + 1).copied().unwrap_or(c);
                parts.push(hooks.input(ni, g, x.narrow(axis, s, e - s)?)?);
            }
            Ok(Tensor::cat(&parts, axis)?)
        };
        if let Some(k) = hooks.runtime_kernels()
            && let Some(y) = self.node_by_kernels(ni, &x, env, k, hooks)?
        {
            return Ok(y);
        }
        if let Some(groups) = hooks.integer(ni) {
            return match &node.op {
                Op::Conv2d(c) => {
                    let pd = c.padding;
                    if c.stride[0] != c.stride[1] || c.groups != 1 {
                        return Err(QuantError::Invalid(format!("{}: integer form of this convolution", node.name)));
                    }
                    let pads = [pd.top, pd.bottom, pd.left, pd.right].map(|v| v as usize);
                    if c.stride == [1, 1]
                        && c.dilation == [1, 1]
                        && crate::conv_op::supported(1, 1, 1, c.kernel.map(|v| v as usize), pads)
                    {
                        let conv =
                            |lv: &Tensor, w: &Tensor| -> Result<Tensor> { Ok(crate::conv_op::conv2d(lv, w, pads)?) };
                        return integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv);
                    }
                    let conv = |lv: &Tensor, w: &Tensor| -> Result<Tensor> {
                        let lv = lv.pad_with_zeros(2, pd.top as usize, pd.bottom as usize)?;
                        let lv = lv.pad_with_zeros(3, pd.left as usize, pd.right as usize)?;
                        Ok(lv.conv2d(w, 0, c.stride[0] as usize, c.dilation[0] as usize, 1)?)
                    };
                    integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv)
                }
                Op::ConvTranspose2d(c) => {
                    let conv = |lv: &Tensor, w: &Tensor| -> Result<Tensor> {
                        Ok(lv.conv_transpose2d(
                            w,
                            c.padding[0] as usize,
                            c.output_padding[0] as usize,
                            c.stride[0] as usize,
                            1,
                        )?)
                    };
                    integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv)
                }
                Op::Linear(_) => {
                    let lin = |lv: &Tensor, w: &Tensor| -> Result<Tensor> { Ok(lv.broadcast_matmul(&w.t()?)?) };
                    let last = x.rank() - 1;
                    integer_sum(hooks, ni, &x, last, groups, wbias.as_ref(), &lin)
                }
                _ => Err(QuantError::Invalid(format!("{}: integer form of a {}", node.name, node.op.name()))),
            };
        }
        let y = match &node.op {
            Op::Conv2d(c) => {
                let x = grouped_input(x, 1)?;
                let pd = c.padding;
                let pads = [pd.top, pd.bottom, pd.left, pd.right].map(|v| v as usize);
                let kernel = c.kernel.map(|v| v as usize);
                if c.stride == [1, 1]
                    && crate::conv_op::supported(1, c.dilation[0] as usize, c.groups as usize, kernel, pads)
                    && c.dilation == [1, 1]
                {
                    let y = crate::conv_op::conv2d(&x, &weight()?, pads)?;
                    return add_channel_bias(y, wbias.as_ref());
                }
                let (x, pad) = if pd.top == pd.bottom && pd.left == pd.right && pd.top == pd.left {
                    (x, pd.top as usize)
                } else {
                    let x = x.pad_with_zeros(2, pd.top as usize, pd.bottom as usize)?;
                    (x.pad_with_zeros(3, pd.left as usize, pd.right as usize)?, 0)
                };
                if c.stride[0] != c.stride[1] || c.dilation[0] != c.dilation[1] {
                    return Err(QuantError::Invalid(format!("{}: anisotropic stride/dilation", node.name)));
                }
                let y = x.conv2d(&weight()?, pad, c.stride[0] as usize, c.dilation[0] as usize, c.groups as usize)?;
                add_channel_bias(y, wbias.as_ref())?
            }
            Op::ConvTranspose2d(c) => {
                let x = grouped_input(x, 1)?;
                if c.stride[0] != c.stride[1]
                    || c.padding[0] != c.padding[1]
                    || c.output_padding[0] != c.output_padding[1]
                {
                    return Err(QuantError::Invalid(format!("{}: anisotropic transposed convolution", node.name)));
                }
                let y = x.conv_transpose2d(
                    &weight()?,
                    c.padding[0] as usize,
                    c.output_padding[0] as usize,
                    c.stride[0] as usize,
                    1,
                )?;
                add_channel_bias(y, wbias.as_ref())?
            }
            Op::Linear(_) => {
                let last = x.rank() - 1;
                let x = grouped_input(x, last)?;
                let w = weight()?;
                let y = x.broadcast_matmul(&w.t()?)?;
                match &wbias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Op::GroupNorm(gn) if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 => {
                let c = x.dim(1)?;
                let ones = || Tensor::ones(c, candle_core::DType::F32, x.device());
                let zeros = || Tensor::zeros(c, candle_core::DType::F32, x.device());
                let gamma = match &p.weight {
                    Some(t) => t.clone(),
                    None => ones()?,
                };
                let beta = match &p.bias {
                    Some(t) => t.clone(),
                    None => zeros()?,
                };
                crate::norm_op::group_norm(&x, gn.groups as usize, gn.eps, &gamma, &beta)?
            }
            Op::GroupNorm(gn) => {
                let (n, c, h, w) = x.dims4()?;
                let g = gn.groups as usize;
                let xr = x.reshape((n, g, c / g * h * w))?;
                let y = normalise(&xr, 2, gn.eps)?.reshape((n, c, h, w))?;
                affine(y, p, &[1, c, 1, 1])?
            }
            Op::LayerNorm(ln) => match ln.axes {
                LayerNormAxes::ChannelSpatial => {
                    let (n, c, h, w) = x.dims4()?;
                    let y = normalise(&x.reshape((n, c * h * w))?, 1, ln.eps)?.reshape((n, c, h, w))?;
                    affine(y, p, &[1, c, h, w])?
                }
                LayerNormAxes::Channel => match x.rank() {
                    4 => {
                        let c = x.dim(1)?;
                        affine(normalise(&x, 1, ln.eps)?, p, &[1, c, 1, 1])?
                    }
                    _ => {
                        let c = x.dim(D::Minus1)?;
                        let mut shape = vec![1; x.rank()];
                        shape[x.rank() - 1] = c;
                        affine(normalise(&x, x.rank() - 1, ln.eps)?, p, &shape)?
                    }
                },
            },
            Op::Silu => x.silu()?,
            Op::Relu => x.relu()?,
            Op::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip()?,
            Op::Gelu(GeluApprox::Erf) => x.gelu_erf()?,
            Op::Gelu(GeluApprox::Tanh) => x.gelu()?,
            Op::Add | Op::Mul => {
                let b = self.get(env, node.inputs[1], ni)?;
                let b = if b.dims() == x.dims() {
                    b
                } else {
                    let mut shape = b.dims().to_vec();
                    shape.resize(x.rank(), 1);
                    b.reshape(shape)?
                };
                if matches!(node.op, Op::Add) { x.broadcast_add(&b)? } else { x.broadcast_mul(&b)? }
            }
            Op::Concat { axis } => {
                let parts: Vec<Tensor> = node.inputs.iter().map(|&v| self.get(env, v, ni)).collect::<Result<_>>()?;
                Tensor::cat(&parts, *axis as usize)?
            }
            Op::Pad(pad) => {
                let (_, _, h, w) = x.dims4()?;
                let (pd, value) = match pad {
                    Pad::Fixed { padding, value } => {
                        ([padding.top, padding.bottom, padding.left, padding.right].map(|v| v as usize), *value)
                    }
                    Pad::MatchSpatial => {
                        let (_, _, rh, rw) = self.get(env, node.inputs[1], ni)?.dims4()?;
                        let (dh, dw) = (rh.saturating_sub(h), rw.saturating_sub(w));
                        ([dh / 2, dh - dh / 2, dw / 2, dw - dw / 2], 0.0)
                    }
                };
                let shifted = if value == 0.0 { x } else { (x - f64::from(value))? };
                let y = shifted.pad_with_zeros(2, pd[0], pd[1])?.pad_with_zeros(3, pd[2], pd[3])?;
                if value == 0.0 { y } else { (y + f64::from(value))? }
            }
            Op::UpsampleNearest { scale } => {
                let (_, _, h, w) = x.dims4()?;
                let s = *scale as usize;
                x.upsample_nearest2d(h * s, w * s)?
            }
            Op::AvgPool2d(a) => x.avg_pool2d_with_stride(
                (a.kernel[0] as usize, a.kernel[1] as usize),
                (a.stride[0] as usize, a.stride[1] as usize),
            )?,
            Op::TimestepEmbedding(te) => {
                let t: Vec<f32> = x.to_vec1()?;
                let dim = te.dim() as usize;
                match *te {
                    TimestepEmbedding::Sinusoidal { order, denominator, max_period, .. } => {
                        let mut y = vec![0f32; t.len() * dim];
                        let (order, half_minus_one) = edadm_runtime::convert::sinusoid(order, denominator);
                        edadm_kernels::ops::elementwise::timestep_sinusoid(
                            &t,
                            dim,
                            order,
                            half_minus_one,
                            max_period,
                            &mut y,
                        );
                        Tensor::from_vec(y, (t.len(), dim), &self.device)?
                    }
                    TimestepEmbedding::Table { .. } => {
                        let table = p.weight.as_ref().expect("table");
                        let rows = table.dim(0)?;
                        let idx: Vec<u32> =
                            t.iter().map(|&v| (v.round().max(0.0) as usize).min(rows - 1) as u32).collect();
                        table.index_select(&Tensor::from_vec(idx, t.len(), &self.device)?, 0)?
                    }
                }
            }
            Op::Attention(a) => {
                if a.layout != AttentionLayout::Spatial {
                    return Err(QuantError::Invalid(format!("{}: attention over token sequences", node.name)));
                }
                let k = self.get(env, node.inputs[1], ni)?;
                let v = self.get(env, node.inputs[2], ni)?;
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
        };
        Ok(y)
    }
}

fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) if y.device().is_cpu() && y.dtype() == candle_core::DType::F32 && y.rank() == 4 => {
            crate::norm_op::add_channel_bias(&y, b)?
        }
        Some(b) => {
            let c = b.dim(0)?;
            y.broadcast_add(&b.reshape((1, c, 1, 1))?)?
        }
        None => y,
    })
}

/// `(x − mean) / sqrt(var + eps)` over `dim` (biased variance).
fn normalise(x: &Tensor, dim: usize, eps: f32) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let diff = x.broadcast_sub(&mean)?;
    let var = diff.sqr()?.mean_keepdim(dim)?;
    Ok(diff.broadcast_div(&(var + f64::from(eps))?.sqrt()?)?)
}

fn affine(y: Tensor, p: &NodeParams, shape: &[usize]) -> Result<Tensor> {
    let y = match &p.weight {
        Some(g) => y.broadcast_mul(&g.reshape(shape)?)?,
        None => y,
    };
    Ok(match &p.bias {
        Some(b) => y.broadcast_add(&b.reshape(shape)?)?,
        None => y,
    })
}

/// Softmax over the last axis (max subtracted, detached).
pub fn softmax_last(s: &Tensor) -> Result<Tensor> {
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&z)?)
}

/// A `[N, C, H, W]` tensor from a slice.
pub fn tensor4(data: &[f32], shape: [usize; 4], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(data, (shape[0], shape[1], shape[2], shape[3]), device)?)
}

/// The contents of a tensor as a flat f32 vector.
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(CDType::F32)?.flatten_all()?.to_vec1()?)
}
