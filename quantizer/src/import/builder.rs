//! Building a graph from checkpoint tensors: each helper takes the parameters it needs from the
//! checkpoint (checking their shapes), adds them to the file and emits the node, inside the
//! current reconstruction unit.

use edadm_format::graph::*;
use edadm_format::metadata::keys;
use edadm_format::{DType, FileBuilder, Metadata};

use super::ImportError;
use super::checkpoint::{Checkpoint, Tensor};

/// Storage type of the large weights (conv and linear weights, embedding tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    /// f32.
    F32,
    /// f16 (half the file size; biases and norm parameters stay f32).
    F16,
}

/// Assembles nodes, units and tensors.
#[derive(Debug)]
pub struct GraphBuilder<'c> {
    ckpt: &'c mut Checkpoint,
    file: FileBuilder<'static>,
    dtype: WeightDType,
    nodes: Vec<Node>,
    units: Vec<Unit>,
    inputs: Vec<GraphInput>,
    next: u32,
    unit: Option<UnitId>,
}

impl<'c> GraphBuilder<'c> {
    /// A builder taking parameters from `ckpt`.
    pub fn new(ckpt: &'c mut Checkpoint, dtype: WeightDType) -> Self {
        GraphBuilder {
            ckpt,
            file: FileBuilder::new(),
            dtype,
            nodes: Vec::new(),
            units: Vec::new(),
            inputs: Vec::new(),
            next: 0,
            unit: None,
        }
    }

    /// The checkpoint (for inspecting shapes and optional keys).
    pub fn ckpt(&self) -> &Checkpoint {
        self.ckpt
    }

    fn value(&mut self) -> ValueId {
        self.next += 1;
        ValueId(self.next - 1)
    }

    /// Declares a graph input.
    pub fn input(&mut self, kind: InputKind) -> ValueId {
        let value = self.value();
        self.inputs.push(GraphInput { value, kind });
        value
    }

    /// Starts a reconstruction unit; nodes emitted until [`GraphBuilder::end_unit`] belong to it.
    pub fn begin_unit(&mut self, name: &str, kind: UnitKind) {
        self.units.push(Unit { name: name.into(), kind });
        self.unit = Some(UnitId(self.units.len() as u32 - 1));
    }

    /// Ends the current unit: nodes emitted next are glue between units.
    pub fn end_unit(&mut self) {
        self.unit = None;
    }

    /// Adds a tensor (`big`: a weight matrix stored in the chosen weight dtype).
    pub fn add(&mut self, name: &str, t: &Tensor, big: bool) -> Result<TensorId, ImportError> {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let id = if big && self.dtype == WeightDType::F16 {
            let bytes: Vec<u8> = t.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            self.file.add_tensor(name, DType::F16, &shape, bytes)?
        } else {
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.file.add_tensor(name, DType::F32, &shape, bytes)?
        };
        Ok(id)
    }

    /// Takes `key` with `shape` from the checkpoint and adds it.
    pub fn param(&mut self, key: &str, shape: &[usize], big: bool) -> Result<TensorId, ImportError> {
        let t = self.ckpt.take(key, shape)?;
        self.add(key, &t, big)
    }

    /// Like [`GraphBuilder::param`], accepting other layouts of the same elements.
    pub fn param_reshaped(
        &mut self,
        key: &str,
        shape: &[usize],
        alternatives: &[&[usize]],
        big: bool,
    ) -> Result<TensorId, ImportError> {
        let t = self.ckpt.take_reshaped(key, shape, alternatives)?;
        self.add(key, &t, big)
    }

    /// Emits a node; returns its output.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        let output = self.value();
        self.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec(), output, unit: self.unit, quant: None });
        output
    }

    /// A 2-D convolution from `{prefix}.weight` `[cout, cin, k, k]` and `{prefix}.bias`.
    pub fn conv(
        &mut self,
        prefix: &str,
        x: ValueId,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<ValueId, ImportError> {
        let weight = self.param(&format!("{prefix}.weight"), &[cout, cin, k, k], true)?;
        let bias = Some(self.param(&format!("{prefix}.bias"), &[cout], false)?);
        let op = Op::Conv2d(Conv2d {
            in_channels: cin as u32,
            out_channels: cout as u32,
            kernel: [k as u32; 2],
            stride: [stride as u32; 2],
            padding,
            dilation: [1, 1],
            groups: 1,
            weight,
            bias,
        });
        Ok(self.node(prefix, op, &[x]))
    }

    /// A linear layer from `{prefix}.weight` `[out, in]` and `{prefix}.bias`.
    pub fn linear(&mut self, prefix: &str, x: ValueId, inf: usize, outf: usize) -> Result<ValueId, ImportError> {
        let weight = self.param(&format!("{prefix}.weight"), &[outf, inf], true)?;
        let bias = Some(self.param(&format!("{prefix}.bias"), &[outf], false)?);
        let op = Op::Linear(Linear { in_features: inf as u32, out_features: outf as u32, weight, bias });
        Ok(self.node(prefix, op, &[x]))
    }

    /// A group normalisation from `{prefix}.weight` and `{prefix}.bias` `[c]`.
    pub fn group_norm(
        &mut self,
        prefix: &str,
        x: ValueId,
        c: usize,
        groups: usize,
        eps: f32,
    ) -> Result<ValueId, ImportError> {
        let weight = Some(self.param(&format!("{prefix}.weight"), &[c], false)?);
        let bias = Some(self.param(&format!("{prefix}.bias"), &[c], false)?);
        let op = Op::GroupNorm(GroupNorm { groups: groups as u32, channels: c as u32, eps, weight, bias });
        Ok(self.node(prefix, op, &[x]))
    }

    /// Finishes the graph with one output; fails on checkpoint keys that were never used.
    pub fn finish(
        mut self,
        output: ValueId,
        prediction: Prediction,
        mut metadata: Metadata,
    ) -> Result<FileBuilder<'static>, ImportError> {
        let unused: Vec<String> = self.ckpt.unused().into_iter().map(str::to_string).collect();
        if !unused.is_empty() {
            return Err(ImportError::Unexpected { keys: unused, origin: self.ckpt.source.clone() });
        }
        metadata.insert(keys::PRODUCER, format!("edadm {}", env!("CARGO_PKG_VERSION")));
        if let Some(sha) = &self.ckpt.sha256 {
            metadata.insert(keys::MODEL_SOURCE_SHA256, sha.clone());
        }
        self.file.set_metadata(metadata);
        self.file.set_graph(Graph {
            num_values: self.next,
            inputs: self.inputs,
            outputs: vec![GraphOutput { value: output, prediction }],
            units: self.units,
            nodes: self.nodes,
            step_groups: None,
        });
        Ok(self.file)
    }
}
