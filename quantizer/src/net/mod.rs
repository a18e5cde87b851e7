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
use edadm_format::graph::{Graph, InputKind, Op, OpFamily, TensorId, TimestepEmbedding, ValueId};
use edadm_runtime::Model;

use crate::error::{QuantError, Result};

mod ops;

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
        let x = self.get(env, node.inputs[0], ni)?;
        if let Some(k) = hooks.runtime_kernels() {
            let y = match node.op.family() {
                OpFamily::Norm => ops::norm::by_kernels(self, ni, &x, k)?,
                OpFamily::Pointwise => ops::pointwise::by_kernels(self, ni, &x, k)?,
                OpFamily::Attention => ops::attention::by_kernels(self, ni, &x, env, k, hooks)?,
                _ => None,
            };
            if let Some(y) = y {
                return Ok(y);
            }
        }
        match node.op.family() {
            OpFamily::Weighted => ops::weighted::forward(self, ni, x, hooks),
            _ if hooks.integer(ni).is_some() => {
                Err(QuantError::Invalid(format!("{}: integer form of a {}", node.name, node.op.name())))
            }
            OpFamily::Norm => ops::norm::forward(self, ni, x),
            OpFamily::Pointwise => ops::pointwise::forward(self, ni, x, env),
            OpFamily::Shape => ops::shape::forward(self, ni, x, env),
            OpFamily::Embed => ops::embed::forward(self, ni, x),
            OpFamily::Attention => ops::attention::forward(self, ni, x, env, hooks),
        }
    }
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
