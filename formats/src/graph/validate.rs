//! Semantic validation of a graph against the tensor table (`docs/FORMAT.md` §5.6). The reader
//! runs it on every parsed file and the writer on every model before writing, so a file that
//! parses is one every interpreter can trust structurally.

use std::collections::HashSet;

use super::codec::GraphOffsets;
use super::*;
use crate::dtype::DType;
use crate::error::{FormatError, GraphProblem};
use crate::limits;

/// What validation needs to know about a tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorMeta<'a> {
    pub(crate) dtype: DType,
    pub(crate) shape: &'a [u64],
}

/// Cap on spatial attributes (kernel, stride, padding, dilation, scale factors).
const MAX_SPATIAL: u32 = 1 << 16;
/// Cap on channel and feature counts.
pub(super) const MAX_CHANNELS: u32 = 1 << 24;

pub(super) const FLOAT: &[DType] = &[DType::F32, DType::F16];

pub(super) struct Ctx<'a> {
    tensors: &'a [TensorMeta<'a>],
    offs: Option<&'a GraphOffsets>,
}

impl Ctx<'_> {
    fn node_err(&self, g: &Graph, i: usize, problem: GraphProblem) -> FormatError {
        FormatError::Graph {
            node: Some(i as u32),
            name: g.nodes[i].name.clone(),
            offset: self.offs.and_then(|o| o.nodes.get(i).copied()).unwrap_or(0),
            problem,
        }
    }

    fn graph_err(&self, name: &str, offset: Option<u64>, problem: GraphProblem) -> FormatError {
        FormatError::Graph {
            node: None,
            name: name.to_owned(),
            offset: offset.or(self.offs.map(|o| o.section)).unwrap_or(0),
            problem,
        }
    }

    /// Checks a tensor reference's existence, dtype and (when given) shape.
    pub(super) fn tensor(
        &self,
        role: &'static str,
        t: TensorId,
        dtypes: &[DType],
        expected_names: &'static str,
        shape: Option<&[u64]>,
    ) -> Result<TensorMeta<'_>, GraphProblem> {
        let meta = self.tensors.get(t.0 as usize).ok_or(GraphProblem::TensorOutOfRange {
            role,
            tensor: t.0,
            count: self.tensors.len() as u32,
        })?;
        if !dtypes.contains(&meta.dtype) {
            return Err(GraphProblem::TensorDType { role, tensor: t.0, found: meta.dtype, expected: expected_names });
        }
        if let Some(shape) = shape
            && meta.shape != shape
        {
            return Err(GraphProblem::TensorShape {
                role,
                tensor: t.0,
                found: meta.shape.to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(*meta)
    }
}

pub(super) fn bad(
    op: &'static str,
    attr: &'static str,
    value: impl std::fmt::Display,
    reason: &'static str,
) -> GraphProblem {
    GraphProblem::BadAttribute { op, attr, value: value.to_string(), reason }
}

pub(super) fn positive(op: &'static str, attr: &'static str, v: u32, max: u32) -> Result<(), GraphProblem> {
    if v == 0 || v > max {
        return Err(bad(op, attr, v, "must be at least 1 and within the format's caps"));
    }
    Ok(())
}

pub(super) fn pair_positive(op: &'static str, attr: &'static str, v: [u32; 2]) -> Result<(), GraphProblem> {
    for x in v {
        positive(op, attr, x, MAX_SPATIAL)?;
    }
    Ok(())
}

pub(super) fn bounded(op: &'static str, attr: &'static str, v: u32) -> Result<(), GraphProblem> {
    if v > MAX_SPATIAL {
        return Err(bad(op, attr, v, "exceeds the format's cap of 65536"));
    }
    Ok(())
}

pub(super) fn finite_nonneg(op: &'static str, attr: &'static str, v: f32) -> Result<(), GraphProblem> {
    if !v.is_finite() || v < 0.0 {
        return Err(bad(op, attr, v, "must be finite and non-negative"));
    }
    Ok(())
}

pub(super) fn finite_positive(op: &'static str, attr: &'static str, v: f32) -> Result<(), GraphProblem> {
    if !v.is_finite() || v <= 0.0 {
        return Err(bad(op, attr, v, "must be finite and positive"));
    }
    Ok(())
}

/// Validates a whole graph. `offs` (present for parsed files) lets errors name byte offsets.
pub(crate) fn validate_graph(
    g: &Graph,
    tensors: &[TensorMeta<'_>],
    offs: Option<&GraphOffsets>,
) -> Result<(), FormatError> {
    let cx = Ctx { tensors, offs };
    check_caps(g, offs.map_or(0, |o| o.section))?;
    let nv = g.num_values;
    let mut defined = vec![false; nv as usize];

    // Inputs.
    let mut kinds = HashSet::new();
    for (i, inp) in g.inputs.iter().enumerate() {
        let at = offs.and_then(|o| o.inputs.get(i).copied());
        let name = inp.kind.name();
        let e = |p| cx.graph_err(name, at, p);
        if !kinds.insert(inp.kind.tag()) {
            return Err(e(GraphProblem::Interface(format!("input {name} is declared twice"))));
        }
        match inp.kind {
            InputKind::Sample { channels, height, width } => {
                for (attr, v) in [("channels", channels), ("height", height), ("width", width)] {
                    positive("input x", attr, v, MAX_CHANNELS).map_err(e)?;
                }
            }
            InputKind::Context { tokens, dim } => {
                positive("input context", "tokens", tokens, MAX_CHANNELS).map_err(e)?;
                positive("input context", "dim", dim, MAX_CHANNELS).map_err(e)?;
            }
            InputKind::Timestep => {}
        }
        define(&mut defined, inp.value, nv).map_err(e)?;
    }
    if !kinds.contains(&InputKindTag::Sample) {
        return Err(cx.graph_err("", None, GraphProblem::Interface("the graph has no sample input x".into())));
    }

    // Units.
    for (i, u) in g.units.iter().enumerate() {
        if u.name.is_empty() {
            let at = offs.and_then(|o| o.units.get(i).copied()).unwrap_or(0);
            return Err(FormatError::EmptyName { what: "unit name", offset: at });
        }
    }

    // Nodes.
    let mut names = HashSet::with_capacity(g.nodes.len());
    let mut last_unit: Option<u32> = None;
    for (i, n) in g.nodes.iter().enumerate() {
        let at = offs.and_then(|o| o.nodes.get(i).copied()).unwrap_or(0);
        if n.name.is_empty() {
            return Err(FormatError::EmptyName { what: "node name", offset: at });
        }
        if !names.insert(n.name.as_str()) {
            return Err(FormatError::DuplicateName { what: "node name", name: n.name.clone(), offset: at });
        }
        let e = |p| cx.node_err(g, i, p);
        for v in &n.inputs {
            if v.0 >= nv {
                return Err(e(GraphProblem::ValueOutOfRange { value: v.0, num_values: nv }));
            }
            if !defined[v.0 as usize] {
                return Err(e(GraphProblem::UseBeforeDefinition { value: v.0 }));
            }
        }
        if let Some(u) = n.unit {
            if u.0 as usize >= g.units.len() {
                return Err(e(GraphProblem::UnitOutOfRange { unit: u.0, count: g.units.len() as u32 }));
            }
            if let Some(prev) = last_unit
                && u.0 < prev
            {
                return Err(e(GraphProblem::UnitOrder { unit: u.0, previous: prev }));
            }
            last_unit = Some(u.0);
        }
        ops::arity(&n.op, n.inputs.len()).map_err(e)?;
        check_op(&cx, n).map_err(e)?;
        define(&mut defined, n.output, nv).map_err(e)?;
    }

    // Outputs and completeness.
    if g.outputs.is_empty() {
        return Err(cx.graph_err("", None, GraphProblem::Interface("the graph has no output".into())));
    }
    for o in &g.outputs {
        if o.value.0 >= nv || !defined[o.value.0 as usize] {
            return Err(cx.graph_err(
                "",
                None,
                GraphProblem::Interface(format!("graph output value {} is not defined", o.value.0)),
            ));
        }
    }
    if let Some(v) = defined.iter().position(|d| !d) {
        return Err(cx.graph_err("", None, GraphProblem::UndefinedValue { value: v as u32 }));
    }
    if let Some(s) = &g.step_groups {
        let at = offs.and_then(|o| o.steps);
        step_groups(g, s).map_err(|p| cx.graph_err("time-step table", at, p))?;
    }
    Ok(())
}

/// The time-step table: edges finite and increasing; exactly one entry per activation
/// quantizer of the graph, each with `G − 1` valid quantizers of the record's bits.
fn step_groups(g: &Graph, s: &StepGroups) -> Result<(), GraphProblem> {
    let q = |m: String| GraphProblem::Quant(m);
    if s.edges.is_empty() || s.edges.len() as u64 >= limits::MAX_STEP_GROUPS {
        return Err(q(format!("{} edges (1 to {} allowed)", s.edges.len(), limits::MAX_STEP_GROUPS - 1)));
    }
    if s.edges.iter().any(|e| !e.is_finite()) || s.edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(q("edges must be finite and strictly increasing".into()));
    }
    let mut seen = HashSet::with_capacity(s.entries.len());
    for en in &s.entries {
        let what = format!("entry for node {} slot {}", en.node, en.slot);
        let base = g
            .nodes
            .get(en.node as usize)
            .and_then(|n| n.quant.as_ref())
            .and_then(|r| r.act(en.slot))
            .ok_or_else(|| q(format!("{what}: the node has no such activation quantizer")))?;
        if !seen.insert((en.node, en.slot)) {
            return Err(q(format!("{what}: given twice")));
        }
        if en.acts.len() != s.edges.len() {
            return Err(q(format!(
                "{what}: {} quantizers for {} groups after the first",
                en.acts.len(),
                s.edges.len()
            )));
        }
        for (gi, a) in en.acts.iter().enumerate() {
            act_quant(&format!("{what} group {}", gi + 1), a)?;
            if a.bits != base.bits {
                return Err(q(format!("{what} group {}: {} bits, the record has {}", gi + 1, a.bits, base.bits)));
            }
        }
    }
    for (ni, n) in g.nodes.iter().enumerate() {
        if let Some(r) = &n.quant {
            for slot in r.act_slots() {
                if !seen.contains(&(ni as u32, slot)) {
                    return Err(q(format!("node `{}` quantizer {slot} has no entry", n.name)));
                }
            }
        }
    }
    Ok(())
}

/// The decoder's caps, also applied to graphs about to be written so that every written file
/// can be read back.
fn check_caps(g: &Graph, offset: u64) -> Result<(), FormatError> {
    let cap = |what, n: usize, limit: u64| {
        if n as u64 > limit { Err(FormatError::LimitExceeded { what, offset, value: n as u64, limit }) } else { Ok(()) }
    };
    cap("value count", g.num_values as usize, limits::MAX_VALUES)?;
    cap("graph input count", g.inputs.len(), limits::MAX_GRAPH_IO)?;
    cap("graph output count", g.outputs.len(), limits::MAX_GRAPH_IO)?;
    cap("unit count", g.units.len(), limits::MAX_UNITS)?;
    cap("node count", g.nodes.len(), limits::MAX_NODES)?;
    for u in &g.units {
        cap("unit name length", u.name.len(), limits::MAX_NAME_BYTES)?;
    }
    for n in &g.nodes {
        cap("node name length", n.name.len(), limits::MAX_NAME_BYTES)?;
        cap("node input count", n.inputs.len(), limits::MAX_NODE_INPUTS)?;
        if let Some(NodeQuant::Weight(w)) = &n.quant {
            cap("quantization group count", w.groups.len(), limits::MAX_QUANT_GROUPS)?;
        }
    }
    Ok(())
}

fn define(defined: &mut [bool], v: ValueId, nv: u32) -> Result<(), GraphProblem> {
    let slot = defined.get_mut(v.0 as usize).ok_or(GraphProblem::ValueOutOfRange { value: v.0, num_values: nv })?;
    if *slot {
        return Err(GraphProblem::RedefinedValue { value: v.0 });
    }
    *slot = true;
    Ok(())
}

/// The dtypes a weighted op's weight may have, given its quantization record.
pub(super) fn weight_dtypes(n: &Node) -> Result<(&'static [DType], &'static str), GraphProblem> {
    Ok(match &n.quant {
        None => (FLOAT, "f32 or f16 (no quantization record)"),
        Some(NodeQuant::Weight(w)) => match w.weight_bits {
            5..=8 => (&[DType::I8], "i8 (5- to 8-bit weights)"),
            4 => (&[DType::I4], "i4 (4-bit weights)"),
            b => {
                return Err(GraphProblem::Quant(format!("weight bits {b}: must be 4 to 8")));
            }
        },
        Some(NodeQuant::Attention(_)) => {
            return Err(GraphProblem::Quant(format!("an attention record on a {} node", n.op.name())));
        }
    })
}

fn check_op(cx: &Ctx<'_>, n: &Node) -> Result<(), GraphProblem> {
    if let (Some(NodeQuant::Weight(w)), Some(o)) = (&n.quant, cx.offs)
        && (5..=7).contains(&w.weight_bits)
        && o.minor < 2
    {
        return Err(GraphProblem::Quant(format!(
            "weight bits {}: needs format minor 2 (the file is minor {})",
            w.weight_bits, o.minor
        )));
    }
    ops::check(cx, n)
}

pub(super) fn bias(cx: &Ctx<'_>, t: Option<TensorId>, out: u32) -> Result<(), GraphProblem> {
    if let Some(t) = t {
        cx.tensor("bias", t, FLOAT, "f32 or f16", Some(&[u64::from(out)]))?;
    }
    Ok(())
}

pub(super) fn no_quant(n: &Node) -> Result<(), GraphProblem> {
    match n.quant {
        None => Ok(()),
        Some(_) => Err(GraphProblem::Quant(format!("{} nodes cannot carry a quantization record", n.op.name()))),
    }
}

pub(super) fn act_quant(which: &str, a: &ActQuant) -> Result<(), GraphProblem> {
    if !(1..=8).contains(&a.bits) {
        return Err(GraphProblem::Quant(format!("{which} quantizer: bits {} not in 1..=8", a.bits)));
    }
    if u32::from(a.zero_point) >= 1u32 << a.bits {
        return Err(GraphProblem::Quant(format!(
            "{which} quantizer: zero-point {} does not fit {} bits",
            a.zero_point, a.bits
        )));
    }
    // Normal, not only finite: quantizing divides by Δ, and 1/Δ of a subnormal overflows.
    if !a.delta.is_normal() || a.delta <= 0.0 {
        return Err(GraphProblem::Quant(format!(
            "{which} quantizer: step {} must be a positive normal number",
            a.delta
        )));
    }
    Ok(())
}

/// Checks a weight quantization record (if any) of a conv/linear node.
pub(super) fn weight_quant(
    cx: &Ctx<'_>,
    n: &Node,
    in_ch: u32,
    out_ch: u32,
    conv_groups: u32,
) -> Result<(), GraphProblem> {
    let Some(NodeQuant::Weight(w)) = &n.quant else {
        return Ok(());
    };
    if w.groups.is_empty() {
        return Err(GraphProblem::Quant("no input-channel groups".into()));
    }
    if w.groups.len() > 1 && conv_groups != 1 {
        return Err(GraphProblem::Quant("split input-channel groups on a grouped convolution".into()));
    }
    let quantized = w.groups[0].input.is_some();
    let mut prev: Option<u32> = None;
    for (gi, g) in w.groups.iter().enumerate() {
        let start_ok = match prev {
            None => g.channel_start == 0,
            Some(p) => g.channel_start > p && g.channel_start < in_ch,
        };
        if !start_ok {
            return Err(GraphProblem::Quant(format!(
                "group {gi} starts at input channel {}: groups must start at 0 and increase strictly below {in_ch}",
                g.channel_start
            )));
        }
        prev = Some(g.channel_start);
        cx.tensor("weight_scales", g.weight_scales, &[DType::F32], "f32", Some(&[u64::from(out_ch)]))?;
        if g.input.is_some() != quantized {
            return Err(GraphProblem::Quant("either every group quantizes its input or none does".into()));
        }
        if let Some(a) = &g.input {
            act_quant("input", a)?;
        }
    }
    Ok(())
}
