//! The fake-quantized forward as [`Hooks`] on the graph interpreter: fixed integer weights (or
//! AdaRound's soft rounding for the unit being reconstructed), activation quantizers on the
//! inputs of weighted nodes and on attention operands, QDrop inside the trained quantizers,
//! the activation-range observation of the initialisation, and recording of layer outputs.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use candle_core::{Tensor, Var};

use super::model::{IntForm, QModel, Ranges};

/// Recorded node outputs.
type Recorded<'a> = Option<(&'a HashSet<usize>, RefCell<HashMap<usize, Tensor>>)>;
use crate::error::Result;
use crate::fq::{ActFq, AdaRound};
use crate::grid::{ActInit, ActRange};
use crate::net::{Hooks, to_vec};

/// The learnable parameters of the unit being reconstructed.
#[derive(Debug, Default)]
pub struct Trainable {
    /// Per weighted node, per group: AdaRound's α (`[out, group row]`) and its rounding state.
    pub alphas: HashMap<usize, Vec<(Var, AdaRound)>>,
    /// Learned activation steps by quantizer key `(node, group)`.
    pub deltas: HashMap<(usize, usize), Var>,
}

/// The fake-quantized model as hooks.
#[derive(Debug)]
pub struct QHooks<'a> {
    q: &'a QModel,
    weights: &'a [Option<Tensor>],
    train: Option<&'a Trainable>,
    /// QDrop: the next mask seed, when trained quantizers drop.
    drop: Option<Cell<u64>>,
    /// Initialisation: ranges observed per quantizer.
    ranges: Option<RefCell<Ranges>>,
    init: ActInit,
    record: Recorded<'a>,
    ints: Option<&'a [Option<IntForm>]>,
    kernels: Option<edadm_kernels::Kernels>,
    /// Only these activation quantizers and weighted nodes are quantized (the rest stay FP).
    only: Option<&'a Only>,
    /// Corrected biases by node.
    biases: Vec<Option<Tensor>>,
    /// One activation quantizer with these parameters instead of the model's.
    act_override: Option<((usize, usize), super::model::ActQ)>,
}

/// A subset of the quantized model: activation quantizers by key `(node, group)` and weighted
/// nodes whose weights are quantized. Everything else runs in FP.
#[derive(Clone, Debug, Default)]
pub struct Only {
    /// Activation quantizers that quantize.
    pub acts: HashSet<(usize, usize)>,
    /// Weighted nodes with quantized weights.
    pub weights: HashSet<usize>,
}

impl<'a> QHooks<'a> {
    /// The quantized model with fixed weights `weights` (dequantized, op layout).
    pub fn new(q: &'a QModel, weights: &'a [Option<Tensor>]) -> Self {
        QHooks {
            q,
            weights,
            train: None,
            drop: None,
            ranges: None,
            init: ActInit::Mse,
            record: None,
            ints: None,
            kernels: None,
            only: None,
            act_override: None,
            biases: q
                .nodes
                .iter()
                .map(|n| match n {
                    Some(super::model::NodeQ::Weight(w)) => w
                        .bias
                        .as_ref()
                        .and_then(|b| Tensor::from_vec(b.clone(), b.len(), &candle_core::Device::Cpu).ok()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Reconstruction: the unit's α and Δ are variables; with `drop_seed`, trained quantizers
    /// keep each element FP with probability 1/2 (fresh masks per call).
    pub fn training(mut self, t: &'a Trainable, drop_seed: Option<u64>) -> Self {
        self.train = Some(t);
        self.drop = drop_seed.map(Cell::new);
        self
    }

    /// Initialisation: every quantizer first folds its input into its range (as `init` says),
    /// then quantizes with the range so far.
    pub fn observing(mut self, ranges: Ranges, init: ActInit) -> Self {
        self.ranges = Some(RefCell::new(ranges));
        self.init = init;
        self
    }

    /// Computes quantized nodes in the runtime's integer form ([`QModel::int_tensors`]): the
    /// outputs are then what the integer runtime computes, up to f32 rounding of the epilogue
    /// and the softmax. Ignored while training or observing.
    pub fn integer(mut self, ints: &'a [Option<IntForm>]) -> Self {
        self.ints = Some(ints);
        self.kernels = edadm_kernels::select().ok();
        self
    }

    /// Quantizes only `only` (in the float form: the integer form needs every quantizer).
    pub fn only(mut self, only: &'a Only) -> Self {
        self.only = Some(only);
        self.ints = None;
        self.kernels = None;
        self
    }

    /// Quantizer `key` uses `a` instead of the model's parameters.
    pub fn with_act(mut self, key: (usize, usize), a: super::model::ActQ) -> Self {
        self.act_override = Some((key, a));
        self
    }

    /// Records the outputs of the nodes in `nodes`.
    pub fn recording(mut self, nodes: &'a HashSet<usize>) -> Self {
        self.record = Some((nodes, RefCell::new(HashMap::new())));
        self
    }

    /// The observed ranges (initialisation).
    pub fn into_ranges(self) -> Ranges {
        self.ranges.map(RefCell::into_inner).unwrap_or_default()
    }

    /// The recorded outputs.
    pub fn take_recorded(&self) -> HashMap<usize, Tensor> {
        self.record.as_ref().map(|(_, r)| std::mem::take(&mut *r.borrow_mut())).unwrap_or_default()
    }

    fn quantize(&self, ni: usize, g: usize, x: Tensor) -> Result<Tensor> {
        let Some(aq) = self.q.act(ni, g) else {
            return Ok(x);
        };
        let aq = match self.act_override {
            Some((k, a)) if k == (ni, g) => a,
            _ => aq,
        };
        if self.only.is_some_and(|o| !o.acts.contains(&(ni, g))) {
            return Ok(x);
        }
        if let Some(ranges) = &self.ranges {
            let mut ranges = ranges.borrow_mut();
            let r = ranges.entry((ni, g)).or_insert_with(|| ActRange::with_init(aq.bits, self.init));
            r.observe(&to_vec(&x)?);
            let grid = r.grid().expect("observed");
            let op = ActFq { zero_point: grid.zero_point, qmax: aq.qmax(), drop_seed: None };
            return op.apply(&x, &Tensor::new(&[grid.delta], x.device())?);
        }
        let var = self.train.and_then(|t| t.deltas.get(&(ni, g)));
        let delta = match var {
            Some(v) => v.as_tensor().clone(),
            None => Tensor::new(&[aq.delta], x.device())?,
        };
        let drop_seed = match (&self.drop, var) {
            (Some(c), Some(_)) => {
                let s = c.get();
                c.set(s.wrapping_add(0x9E37_79B9_7F4A_7C15));
                Some(s)
            }
            _ => None,
        };
        ActFq { zero_point: aq.zero_point, qmax: aq.qmax(), drop_seed }.apply(&x, &delta)
    }
}

impl Hooks for QHooks<'_> {
    fn weight(&self, ni: usize) -> Result<Option<Tensor>> {
        if let Some(parts) = self.train.and_then(|t| t.alphas.get(&ni)) {
            let w = self.q.weight(ni).expect("trained node is weighted");
            let mut soft = Vec::with_capacity(parts.len());
            for (g, (alpha, ada)) in parts.iter().enumerate() {
                let grp = &w.groups[g];
                let mut shape = w.shape.clone();
                shape[1] = grp.end - grp.start;
                soft.push(ada.soft(alpha.as_tensor())?.reshape(shape)?);
            }
            let full = if soft.len() == 1 { soft.pop().expect("one") } else { Tensor::cat(&soft, 1)? };
            let full = if w.transposed { full.transpose(0, 1)?.contiguous()? } else { full };
            return Ok(Some(full));
        }
        if self.only.is_some_and(|o| !o.weights.contains(&ni)) {
            return Ok(None);
        }
        Ok(self.weights[ni].clone())
    }

    fn input(&self, ni: usize, g: usize, x: Tensor) -> Result<Tensor> {
        self.quantize(ni, g, x)
    }

    fn bias(&self, ni: usize) -> Option<Tensor> {
        if self.only.is_some_and(|o| !o.weights.contains(&ni)) {
            return None;
        }
        self.biases[ni].clone()
    }

    fn probs(&self, ni: usize, p: Tensor) -> Result<Tensor> {
        self.quantize(ni, 3, p)
    }

    fn output(&self, ni: usize, y: &Tensor) -> Result<()> {
        if let Some((set, rec)) = &self.record
            && set.contains(&ni)
        {
            rec.borrow_mut().insert(ni, y.clone());
        }
        Ok(())
    }

    fn integer(&self, ni: usize) -> Option<&[(Tensor, Tensor)]> {
        if self.train.is_some() || self.ranges.is_some() {
            return None;
        }
        self.ints.and_then(|i| i[ni].as_deref())
    }

    fn levels(&self, ni: usize, g: usize, x: Tensor) -> Result<Tensor> {
        let aq = self.q.act(ni, g).expect("integer form has input quantizers");
        let v: Vec<f32> = to_vec(&x)?
            .iter()
            .map(|&v| {
                (crate::grid::round_half_even(v / aq.delta) + aq.zero_point).clamp(0.0, aq.qmax()) - aq.zero_point
            })
            .collect();
        Ok(Tensor::from_vec(v, x.shape(), x.device())?)
    }

    fn runtime_kernels(&self) -> Option<&edadm_kernels::Kernels> {
        if self.train.is_some() || self.ranges.is_some() {
            return None;
        }
        self.kernels.as_ref()
    }

    fn attention_integer(&self, ni: usize) -> Option<[edadm_kernels::ops::quant::ActQ; 4]> {
        if self.train.is_some() || self.ranges.is_some() || self.ints.is_none() {
            return None;
        }
        match &self.q.nodes[ni] {
            Some(super::model::NodeQ::Attention(a)) => Some(a.map(|q| edadm_runtime::convert::act_q(&q.to_format()))),
            _ => None,
        }
    }

    fn groups(&self, ni: usize) -> Vec<usize> {
        match self.q.weight(ni) {
            Some(w) => w.groups.iter().map(|g| g.start).collect(),
            None => vec![0],
        }
    }
}

/// FP hooks that record the outputs of `nodes` (the per-layer targets).
#[derive(Debug)]
pub struct FpRecorder<'a> {
    nodes: &'a HashSet<usize>,
    rec: RefCell<HashMap<usize, Tensor>>,
}

impl<'a> FpRecorder<'a> {
    /// Records the outputs of `nodes`.
    pub fn new(nodes: &'a HashSet<usize>) -> Self {
        FpRecorder { nodes, rec: RefCell::new(HashMap::new()) }
    }

    /// The recorded outputs.
    pub fn take(&self) -> HashMap<usize, Tensor> {
        std::mem::take(&mut *self.rec.borrow_mut())
    }
}

impl Hooks for FpRecorder<'_> {
    fn output(&self, ni: usize, y: &Tensor) -> Result<()> {
        if self.nodes.contains(&ni) {
            self.rec.borrow_mut().insert(ni, y.clone());
        }
        Ok(())
    }
}
