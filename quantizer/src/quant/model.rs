//! The quantized model's state (METHOD.md §2): per weighted node its integer weights, its
//! per-output-channel weight steps (one set per input-channel group) and its input quantizers;
//! per attention node the q/k/v/probability quantizers. Plus the initialisation: the weight
//! search per channel and the activation EMA over batches on the weight-quantized model.

use std::collections::HashMap;

use candle_core::Tensor;
use edadm_format::graph::{Graph, InputKind, Op, ValueId};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::grid::{ActRange, Grid, search_weights};
use crate::net::{Env, Net, to_vec};

/// An activation quantizer: step, zero-point and bits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActQ {
    /// Step Δ (learned during reconstruction).
    pub delta: f32,
    /// Zero-point (fixed).
    pub zero_point: f32,
    /// Bits.
    pub bits: u32,
}

impl ActQ {
    /// From an initialisation grid.
    pub fn from_grid(g: Grid, bits: u32) -> ActQ {
        ActQ { delta: g.delta, zero_point: g.zero_point, bits }
    }

    /// Largest level.
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// The format's record.
    pub fn to_format(self) -> edadm_format::graph::ActQuant {
        edadm_format::graph::ActQuant { delta: self.delta, zero_point: self.zero_point as u8, bits: self.bits as u8 }
    }
}

/// One input-channel group of a weighted node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WGroup {
    /// First input channel.
    pub start: usize,
    /// One past the last input channel.
    pub end: usize,
    /// Per-output-channel weight step.
    pub scales: Vec<f32>,
    /// The input quantizer; `None` for the network's output conv (FP input).
    pub input: Option<ActQ>,
}

/// A quantized conv / transposed conv / linear node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WNode {
    /// 4 or 8.
    pub bits: u32,
    /// Output channels.
    pub out: usize,
    /// Input channels (per conv group).
    pub inp: usize,
    /// Elements per input channel in a weight row (`kh·kw`, 1 for linear).
    pub kernel: usize,
    /// The op's weight shape; a transposed conv's `[in, out, kh, kw]` is held here in the
    /// row layout `[out, in, kh, kw]`.
    pub shape: Vec<usize>,
    /// Transposed convolution (weight stored `[in, out, kh, kw]` by the op).
    pub transposed: bool,
    /// The input-channel groups.
    pub groups: Vec<WGroup>,
    /// Whether the integers came from AdaRound (else nearest rounding).
    pub adaround: bool,
    /// Bias correction: the bias that replaces the op's (`b − (Ŵ − W)·E[x]` per output
    /// channel), when corrected.
    #[serde(default)]
    pub bias: Option<Vec<f32>>,
    /// Integer weights in the row layout `[out, in, kernel]`.
    #[serde(skip)]
    pub ints: Vec<i8>,
}

impl WNode {
    /// Elements of one output row.
    pub fn row(&self) -> usize {
        self.inp * self.kernel
    }

    /// Zero-point of the signed weight grid.
    pub fn zero_point(&self) -> f32 {
        (1u32 << (self.bits - 1)) as f32
    }

    /// The grid of output channel `c` in group `g`.
    pub fn grid(&self, g: usize, c: usize) -> Grid {
        Grid { delta: self.groups[g].scales[c], zero_point: self.zero_point(), levels: 1 << self.bits }
    }

    /// The grids of group `g`, one per output channel.
    pub fn grids(&self, g: usize) -> Vec<Grid> {
        (0..self.out).map(|c| self.grid(g, c)).collect()
    }

    /// The group slice `[out, (end − start)·kernel]` of a row-layout array.
    pub fn slice<T: Copy>(&self, g: usize, rows: &[T]) -> Vec<T> {
        let (s, e) = (self.groups[g].start * self.kernel, self.groups[g].end * self.kernel);
        rows.chunks_exact(self.row()).flat_map(|r| r[s..e].iter().copied()).collect()
    }

    /// Writes a group slice back into a row-layout array.
    pub fn unslice<T: Copy>(&self, g: usize, part: &[T], rows: &mut [T]) {
        let (s, e) = (self.groups[g].start * self.kernel, self.groups[g].end * self.kernel);
        let row = self.row();
        for (o, p) in part.chunks_exact(e - s).enumerate() {
            rows[o * row + s..o * row + e].copy_from_slice(p);
        }
    }

    /// The dequantized weight in the row layout.
    pub fn dequant_rows(&self) -> Vec<f32> {
        let row = self.row();
        let mut w = vec![0f32; self.ints.len()];
        for grp in &self.groups {
            let (s, e) = (grp.start * self.kernel, grp.end * self.kernel);
            for o in 0..self.out {
                let d = grp.scales[o];
                for i in s..e {
                    w[o * row + i] = f32::from(self.ints[o * row + i]) * d;
                }
            }
        }
        w
    }

    /// A row-layout tensor `[out, in, ...]` to the op's layout.
    pub fn to_op_layout(&self, t: Tensor) -> Result<Tensor> {
        let t = t.reshape(self.shape.clone())?;
        Ok(if self.transposed { t.transpose(0, 1)?.contiguous()? } else { t })
    }
}

/// The quantization state of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeQ {
    /// A weighted node.
    Weight(WNode),
    /// An attention node: quantizers of q, k, v and the probabilities.
    Attention([ActQ; 4]),
}

/// Options that decide the quantized model's structure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Structure {
    /// Weight bits (4 to 8; 4-bit weights are stored as nibbles, 5–8 as bytes).
    pub wbits: u32,
    /// Activation bits (8).
    pub abits: u32,
    /// Q-Diffusion's split skip convolution (METHOD.md §2.7).
    pub split: bool,
    /// The output layer (the last conv or linear, whose input stays f32) keeps f32 weights
    /// instead of 8-bit ones: no integer work is lost, it runs in f32 either way.
    #[serde(default)]
    pub fp_last: bool,
    /// Convs and linears that read the network's sample input x_t (or x_t plus an embedding)
    /// keep it f32 (their weights stay quantized): one (Δ, zp) for all steps cannot fit both
    /// pure noise and a clean image.
    #[serde(default)]
    pub fp_input: bool,
    /// Convs and linears named here keep an f32 input (weights quantized): the measured most
    /// sensitive activation quantizers (`--sensitivity`) left out, at the cost of running those
    /// layers in f32.
    #[serde(default)]
    pub fp_layers: Vec<String>,
    /// Convs, transposed convs and linears named here keep 8-bit weights whatever `wbits` is
    /// (mixed precision: the layers whose low-bit weights the sensitivity analysis measures as
    /// costing the most).
    #[serde(default)]
    pub w8_layers: Vec<String>,
}

/// The whole quantized model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QModel {
    /// The structure options.
    pub structure: Structure,
    /// Per graph node.
    pub nodes: Vec<Option<NodeQ>>,
    /// Time-step-aware activation quantizers: the nodes hold group 0's.
    #[serde(default)]
    pub steps: Option<StepActs>,
}

/// The activation quantizers of time-step groups `1..G` (the format's table, `docs/FORMAT.md`
/// §5.5a): a network evaluation at timestep `t` uses group `#{e ∈ edges : e ≤ t}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepActs {
    /// The `G − 1` increasing edges.
    pub edges: Vec<f32>,
    /// Per group `1..G`, every activation quantizer by key `(node, group)`.
    pub groups: Vec<Vec<((usize, usize), ActQ)>>,
}

/// The time-step group of `t` for `edges` (the format's rule; group 0 for NaN).
pub fn group_of(edges: &[f32], t: f32) -> usize {
    edges.partition_point(|&e| e <= t)
}

/// The FP weight of a node in the row layout `[out, in, ...]`, with that shape.
pub fn fp_rows(net: &Net, ni: usize) -> Result<(Vec<f32>, Vec<usize>, bool)> {
    let w = net.params[ni].weight.as_ref().expect("weighted node");
    let transposed = matches!(net.graph.nodes[ni].op, Op::ConvTranspose2d(_));
    let w = if transposed { w.transpose(0, 1)?.contiguous()? } else { w.clone() };
    Ok((to_vec(&w)?, w.dims().to_vec(), transposed))
}

impl QModel {
    /// The quantized structure of `net` with weights initialised (METHOD.md §2.1, §2.3): every
    /// conv, transposed conv and linear node is quantized; the first weighted node (the first
    /// time-embedding linear) and the last (the output conv) get 8-bit weights; the last has no
    /// input quantizer; with `split`, a 1×1 conv reading a channel concatenation gets two groups
    /// at the concatenation's first part. `channels` gives the channel count of values (from
    /// one FP forward). Activation quantizers are placeholders until [`QModel::init_acts`].
    pub fn new(net: &Net, s: Structure, channels: &HashMap<ValueId, usize>) -> Result<QModel> {
        if !(4..=8).contains(&s.wbits) {
            return Err(QuantError::Invalid(format!("--wbits {}: 4 to 8 are supported", s.wbits)));
        }
        if s.abits != 8 {
            return Err(QuantError::Invalid(format!(
                "--abits {}: only 8-bit activations are supported (the integer kernels take u8 inputs)",
                s.abits
            )));
        }
        let g = &net.graph;
        let weighted: Vec<usize> = (0..g.nodes.len()).filter(|&i| g.nodes[i].op.is_weighted()).collect();
        let (first, last) = match (weighted.first(), weighted.last()) {
            (Some(&f), Some(&l)) => (f, l),
            _ => return Err(QuantError::Invalid("the model has no conv or linear layer to quantize".into())),
        };
        for name in &s.fp_layers {
            match g.nodes.iter().find(|n| &n.name == name) {
                None => return Err(QuantError::Invalid(format!("--fp-layers: no layer named {name:?}"))),
                Some(n) if !matches!(n.op, Op::Conv2d(_) | Op::Linear(_)) => {
                    return Err(QuantError::Invalid(format!(
                        "--fp-layers: {name:?} is not a convolution or linear layer (transposed convolutions need a quantized input)"
                    )));
                }
                Some(_) => {}
            }
        }
        for name in &s.w8_layers {
            match g.nodes.iter().find(|n| &n.name == name) {
                None => return Err(QuantError::Invalid(format!("--w8-layers: no layer named {name:?}"))),
                Some(n) if !n.op.is_weighted() => {
                    return Err(QuantError::Invalid(format!(
                        "--w8-layers: {name:?} is not a convolution, transposed convolution or linear layer"
                    )));
                }
                Some(_) => {}
            }
        }
        let producer = producers(g);
        let sample = g.inputs.iter().find(|i| matches!(i.kind, InputKind::Sample { .. })).map(|i| i.value);
        let placeholder = ActQ { delta: 1.0, zero_point: 0.0, bits: s.abits };
        let mut nodes = vec![None; g.nodes.len()];
        for &ni in &weighted {
            if ni == last && s.fp_last {
                continue;
            }
            let node = &g.nodes[ni];
            let (w, shape, transposed) = fp_rows(net, ni)?;
            let out = shape[0];
            let inp = shape[1];
            let kernel = shape[2..].iter().product::<usize>();
            let bits = if ni == first || ni == last || s.w8_layers.contains(&node.name) { 8 } else { s.wbits };
            let mut bounds = vec![(0, inp)];
            if s.split
                && let Op::Conv2d(c) = &node.op
                && c.kernel == [1, 1]
                && c.groups == 1
                && let Some(&pi) = producer.get(&node.inputs[0])
                && let Op::Concat { axis: 1 } = g.nodes[pi].op
            {
                let ch = *channels.get(&g.nodes[pi].inputs[0]).ok_or_else(|| {
                    QuantError::Invalid(format!("{}: channel count of the concatenation unknown", node.name))
                })?;
                if ch > 0 && ch < inp {
                    bounds = vec![(0, ch), (ch, inp)];
                }
            }
            // x_t itself, or x_t plus a broadcast embedding (mnist-unet adds its time
            // embedding to the image before the first block).
            let reads_sample = s.fp_input && {
                let mut v = node.inputs[0];
                loop {
                    if sample == Some(v) {
                        break true;
                    }
                    match producer.get(&v) {
                        Some(&pi) if g.nodes[pi].op == Op::Add => v = g.nodes[pi].inputs[0],
                        _ => break false,
                    }
                }
            };
            let fp_layer = s.fp_layers.contains(&node.name);
            let input = if ni == last || reads_sample || fp_layer { None } else { Some(placeholder) };
            let mut wn = WNode {
                bits,
                out,
                inp,
                kernel,
                shape,
                transposed,
                groups: bounds.iter().map(|&(start, end)| WGroup { start, end, scales: Vec::new(), input }).collect(),
                adaround: false,
                bias: None,
                ints: vec![0; w.len()],
            };
            for gi in 0..wn.groups.len() {
                let part = wn.slice(gi, &w);
                let grids = search_weights(&part, out, bits);
                wn.groups[gi].scales = grids.iter().map(|g| g.delta).collect();
                let ints: Vec<i8> = part
                    .chunks_exact(part.len() / out)
                    .zip(&grids)
                    .flat_map(|(r, g)| r.iter().map(move |&v| g.int(v) as i8))
                    .collect();
                let mut all = std::mem::take(&mut wn.ints);
                wn.unslice(gi, &ints, &mut all);
                wn.ints = all;
            }
            nodes[ni] = Some(NodeQ::Weight(wn));
        }
        for (ni, node) in g.nodes.iter().enumerate() {
            if let Op::Attention(_) = node.op {
                nodes[ni] = Some(NodeQ::Attention([placeholder; 4]));
            }
        }
        Ok(QModel { structure: s, nodes, steps: None })
    }

    /// Number of time-step groups (1 without a table).
    pub fn num_groups(&self) -> usize {
        self.steps.as_ref().map_or(1, |s| s.edges.len() + 1)
    }

    /// The time-step group of `t`.
    pub fn group_of(&self, t: f32) -> usize {
        self.steps.as_ref().map_or(0, |s| group_of(&s.edges, t))
    }

    /// The model as it runs in time-step group `g`: that group's activation quantizers, no table.
    pub fn at_group(&self, g: usize) -> QModel {
        let mut q = QModel { structure: self.structure.clone(), nodes: self.nodes.clone(), steps: None };
        if let Some(s) = &self.steps
            && g > 0
        {
            for &((ni, slot), a) in &s.groups[g - 1] {
                q.set_act(ni, slot, a);
            }
        }
        q
    }

    /// The weighted node `ni`.
    pub fn weight(&self, ni: usize) -> Option<&WNode> {
        match &self.nodes[ni] {
            Some(NodeQ::Weight(w)) => Some(w),
            _ => None,
        }
    }

    /// The weighted node `ni`, mutable.
    pub fn weight_mut(&mut self, ni: usize) -> Option<&mut WNode> {
        match &mut self.nodes[ni] {
            Some(NodeQ::Weight(w)) => Some(w),
            _ => None,
        }
    }

    /// The activation quantizer `(ni, g)`: group `g`'s input of a weighted node, or for an
    /// attention node q/k/v (0/1/2) and the probabilities (3).
    pub fn act(&self, ni: usize, g: usize) -> Option<ActQ> {
        match &self.nodes[ni] {
            Some(NodeQ::Weight(w)) => w.groups.get(g).and_then(|grp| grp.input),
            Some(NodeQ::Attention(a)) => a.get(g).copied(),
            None => None,
        }
    }

    /// Sets the activation quantizer `(ni, g)` (which must exist).
    pub fn set_act(&mut self, ni: usize, g: usize, q: ActQ) {
        match &mut self.nodes[ni] {
            Some(NodeQ::Weight(w)) => w.groups[g].input = Some(q),
            Some(NodeQ::Attention(a)) => a[g] = q,
            None => unreachable!("node {ni} has no quantizers"),
        }
    }

    /// Every activation quantizer key `(node, group)` of the nodes in `nodes`.
    pub fn act_keys(&self, nodes: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
        let mut keys = Vec::new();
        for ni in nodes {
            match &self.nodes[ni] {
                Some(NodeQ::Weight(w)) => {
                    keys.extend(w.groups.iter().enumerate().filter(|(_, g)| g.input.is_some()).map(|(g, _)| (ni, g)))
                }
                Some(NodeQ::Attention(_)) => keys.extend((0..4).map(|g| (ni, g))),
                None => {}
            }
        }
        keys
    }

    /// The dequantized weight of every weighted node, in the op layout.
    pub fn weight_tensors(&self, net: &Net) -> Result<Vec<Option<Tensor>>> {
        self.nodes
            .iter()
            .map(|n| match n {
                Some(NodeQ::Weight(w)) => {
                    let t = Tensor::from_vec(w.dequant_rows(), w.ints.len(), &net.device)?;
                    Ok(Some(w.to_op_layout(t)?))
                }
                _ => Ok(None),
            })
            .collect()
    }

    /// Per weighted node with quantized inputs, its integer form for
    /// [`super::QHooks::integer`]: per group the integer weights (f32-valued, op layout, the
    /// group's input channels) and `Δw[c]·Δa` as the runtime computes it.
    pub fn int_tensors(&self, net: &Net) -> Result<Vec<Option<IntForm>>> {
        self.nodes
            .iter()
            .map(|n| {
                let Some(NodeQ::Weight(w)) = n else { return Ok(None) };
                if w.groups.iter().any(|g| g.input.is_none()) {
                    return Ok(None);
                }
                let all: Vec<f32> = w.ints.iter().map(|&v| f32::from(v)).collect();
                let mut out = Vec::with_capacity(w.groups.len());
                for (g, grp) in w.groups.iter().enumerate() {
                    let part = w.slice(g, &all);
                    let mut shape = w.shape.clone();
                    shape[1] = grp.end - grp.start;
                    let t = Tensor::from_vec(part, shape, &net.device)?;
                    let t = if w.transposed { t.transpose(0, 1)?.contiguous()? } else { t };
                    let a = grp.input.expect("checked").delta;
                    let scale: Vec<f32> = grp.scales.iter().map(|&d| d * a).collect();
                    out.push((t, Tensor::from_vec(scale, w.out, &net.device)?));
                }
                Ok(Some(out))
            })
            .collect()
    }
}

/// The node defining each value.
pub fn producers(g: &Graph) -> HashMap<ValueId, usize> {
    g.nodes.iter().enumerate().map(|(i, n)| (n.output, i)).collect()
}

/// The channel count (axis 1) of every value of a fully evaluated environment.
pub fn channel_counts(env: &Env) -> HashMap<ValueId, usize> {
    env.iter()
        .enumerate()
        .filter_map(|(v, t)| t.as_ref().and_then(|t| t.dims().get(1).map(|&c| (ValueId(v as u32), c))))
        .collect()
}

/// The integer form of one node: per input group, integer weights and `Δw·Δa` per channel.
pub type IntForm = Vec<(Tensor, Tensor)>;

/// Activation ranges being averaged during initialisation.
pub type Ranges = HashMap<(usize, usize), ActRange>;
