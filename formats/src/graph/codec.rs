//! Binary encoding of the graph section (`docs/FORMAT.md` §5).

use super::*;
use crate::codec::{Cursor, Encoder};
use crate::error::FormatError;
use crate::limits;

const INPUT_RECORD_BYTES: usize = 20;
const OUTPUT_RECORD_BYTES: usize = 8;
const MIN_UNIT_RECORD_BYTES: usize = 8;
const MIN_NODE_RECORD_BYTES: usize = 24;
const ACT_QUANT_BYTES: usize = 8;
const QUANT_GROUP_BYTES: usize = 12 + ACT_QUANT_BYTES;

/// Byte offsets of the records of a decoded graph, for error messages.
#[derive(Clone, Debug, Default)]
pub(crate) struct GraphOffsets {
    pub(crate) section: u64,
    pub(crate) inputs: Vec<u64>,
    pub(crate) units: Vec<u64>,
    pub(crate) nodes: Vec<u64>,
    /// The time-step table, when present.
    pub(crate) steps: Option<u64>,
    /// The file's minor version (5- to 7-bit weight records need 2).
    pub(crate) minor: u16,
}

pub(super) fn unknown(what: &'static str, code: u32, offset: u64) -> FormatError {
    FormatError::UnknownCode { what, code, offset }
}

pub(crate) fn encode_graph(g: &Graph) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u32(g.num_values);
    e.len32(g.inputs.len());
    for i in &g.inputs {
        let (code, a, b, c) = match i.kind {
            InputKind::Sample { channels, height, width } => (0, channels, height, width),
            InputKind::Timestep => (1, 0, 0, 0),
            InputKind::Context { tokens, dim } => (2, tokens, dim, 0),
        };
        e.u32(code);
        e.u32(i.value.0);
        e.u32(a);
        e.u32(b);
        e.u32(c);
    }
    e.len32(g.outputs.len());
    for o in &g.outputs {
        e.u32(o.value.0);
        e.u32(match o.prediction {
            Prediction::Epsilon => 0,
            Prediction::V => 1,
            Prediction::X0 => 2,
        });
    }
    e.len32(g.units.len());
    for u in &g.units {
        e.str(&u.name);
        e.u32(match u.kind {
            UnitKind::Layer => 0,
            UnitKind::ResBlock => 1,
            UnitKind::AttentionBlock => 2,
            UnitKind::TransformerBlock => 3,
        });
    }
    e.len32(g.nodes.len());
    for n in &g.nodes {
        e.str(&n.name);
        e.u16(n.op.code());
        e.u16(match n.quant {
            None => 0,
            Some(NodeQuant::Weight(_)) => 1,
            Some(NodeQuant::Attention(_)) => 2,
        });
        e.opt_u32(n.unit.map(|u| u.0));
        e.u32(n.output.0);
        e.len32(n.inputs.len());
        for v in &n.inputs {
            e.u32(v.0);
        }
        let mut a = Encoder::default();
        ops::encode(&mut a, &n.op);
        e.len32(a.buf.len());
        e.buf.extend_from_slice(&a.buf);
        let mut q = Encoder::default();
        if let Some(quant) = &n.quant {
            encode_quant(&mut q, quant);
        }
        e.len32(q.buf.len());
        e.buf.extend_from_slice(&q.buf);
    }
    // Format minor 1: the time-step table follows the nodes; minor-0 files end here.
    if let Some(s) = &g.step_groups {
        e.len32(s.edges.len());
        for &v in &s.edges {
            e.f32(v);
        }
        e.len32(s.entries.len());
        for en in &s.entries {
            e.u32(en.node);
            e.u32(en.slot);
            for a in &en.acts {
                encode_act(&mut e, a);
            }
        }
    }
    e.buf
}

fn encode_act(e: &mut Encoder, a: &ActQuant) {
    e.f32(a.delta);
    e.u8(a.zero_point);
    e.u8(a.bits);
    e.u16(0);
}

fn encode_quant(e: &mut Encoder, q: &NodeQuant) {
    match q {
        NodeQuant::Weight(w) => {
            e.u8(w.weight_bits);
            e.u8(u8::try_from(w.groups.len()).unwrap_or(u8::MAX));
            e.u16(0);
            for g in &w.groups {
                e.u32(g.channel_start);
                e.u32(g.weight_scales.0);
                match &g.input {
                    Some(a) => {
                        e.u32(1);
                        encode_act(e, a);
                    }
                    None => {
                        e.u32(0);
                        e.zeros(ACT_QUANT_BYTES);
                    }
                }
            }
        }
        NodeQuant::Attention(a) => {
            for x in [&a.q, &a.k, &a.v, &a.prob] {
                encode_act(e, x);
            }
        }
    }
}

/// Decodes the graph section of a file of minor version `minor` (the time-step table exists
/// from minor 1 on; in a minor-0 file bytes after the nodes are trailing bytes).
pub(crate) fn decode_graph(bytes: &[u8], base: u64, minor: u16) -> Result<(Graph, GraphOffsets), FormatError> {
    let mut c = Cursor::new(bytes, base, "graph section");
    let mut offs = GraphOffsets { section: base, minor, ..Default::default() };
    let at = c.offset();
    let num_values = c.u32()?;
    if u64::from(num_values) > limits::MAX_VALUES {
        return Err(FormatError::LimitExceeded {
            what: "value count",
            offset: at,
            value: num_values.into(),
            limit: limits::MAX_VALUES,
        });
    }

    let n = c.count("graph input count", limits::MAX_GRAPH_IO, INPUT_RECORD_BYTES)?;
    let mut inputs = Vec::with_capacity(n);
    for _ in 0..n {
        let at = c.offset();
        offs.inputs.push(at);
        let code = c.u32()?;
        let value = ValueId(c.u32()?);
        let (a, b, d) = (c.u32()?, c.u32()?, c.u32()?);
        let kind = match code {
            0 => InputKind::Sample { channels: a, height: b, width: d },
            1 => InputKind::Timestep,
            2 => InputKind::Context { tokens: a, dim: b },
            _ => return Err(unknown("graph input kind", code, at)),
        };
        // Unused fields of the record are reserved.
        let unused: &[u32] = match code {
            1 => &[a, b, d],
            2 => &[d],
            _ => &[],
        };
        if unused.iter().any(|&x| x != 0) {
            return Err(FormatError::BadValue {
                what: "graph input record",
                offset: at,
                detail: format!("unused fields of a {} input must be 0", kind.name()),
            });
        }
        inputs.push(GraphInput { value, kind });
    }

    let n = c.count("graph output count", limits::MAX_GRAPH_IO, OUTPUT_RECORD_BYTES)?;
    let mut outputs = Vec::with_capacity(n);
    for _ in 0..n {
        let value = ValueId(c.u32()?);
        let at = c.offset();
        let prediction = match c.u32()? {
            0 => Prediction::Epsilon,
            1 => Prediction::V,
            2 => Prediction::X0,
            code => return Err(unknown("prediction", code, at)),
        };
        outputs.push(GraphOutput { value, prediction });
    }

    let n = c.count("unit count", limits::MAX_UNITS, MIN_UNIT_RECORD_BYTES)?;
    let mut units = Vec::with_capacity(n);
    for _ in 0..n {
        offs.units.push(c.offset());
        let (name, _) = c.str("unit name", limits::MAX_NAME_BYTES)?;
        let at = c.offset();
        let kind = match c.u32()? {
            0 => UnitKind::Layer,
            1 => UnitKind::ResBlock,
            2 => UnitKind::AttentionBlock,
            3 => UnitKind::TransformerBlock,
            code => return Err(unknown("unit kind", code, at)),
        };
        units.push(Unit { name: name.to_owned(), kind });
    }

    let n = c.count("node count", limits::MAX_NODES, MIN_NODE_RECORD_BYTES)?;
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        offs.nodes.push(c.offset());
        nodes.push(decode_node(&mut c)?);
    }
    let step_groups = if minor >= 1 && c.remaining() > 0 {
        offs.steps = Some(c.offset());
        Some(decode_steps(&mut c)?)
    } else {
        None
    };
    c.finish()?;
    Ok((Graph { num_values, inputs, outputs, units, nodes, step_groups }, offs))
}

fn decode_node(c: &mut Cursor<'_>) -> Result<Node, FormatError> {
    let (name, _) = c.str("node name", limits::MAX_NAME_BYTES)?;
    let op_at = c.offset();
    let op_code = c.u16()?;
    let quant_at = c.offset();
    let quant_code = c.u16()?;
    let unit = c.opt_u32()?.map(UnitId);
    let output = ValueId(c.u32()?);
    let n = c.count("node input count", limits::MAX_NODE_INPUTS, 4)?;
    let mut inputs = Vec::with_capacity(n);
    for _ in 0..n {
        inputs.push(ValueId(c.u32()?));
    }

    let len = c.count("attribute record length", limits::MAX_RECORD_BYTES, 1)?;
    let attr_at = c.offset();
    let mut a = Cursor::new(c.take(len)?, attr_at, "node attribute record");
    let op = ops::decode(&mut a, op_code, op_at)?;
    a.finish()?;

    let len = c.count("quantization record length", limits::MAX_RECORD_BYTES, 1)?;
    let q_at = c.offset();
    let mut q = Cursor::new(c.take(len)?, q_at, "node quantization record");
    let quant = match quant_code {
        0 => None,
        1 => Some(NodeQuant::Weight(decode_weight_quant(&mut q)?)),
        2 => Some(NodeQuant::Attention(AttentionQuant {
            q: decode_act(&mut q)?,
            k: decode_act(&mut q)?,
            v: decode_act(&mut q)?,
            prob: decode_act(&mut q)?,
        })),
        code => return Err(unknown("quantization record kind", code.into(), quant_at)),
    };
    q.finish()?;
    Ok(Node { name: name.to_owned(), op, inputs, output, unit, quant })
}

pub(super) fn tensor(c: &mut Cursor<'_>) -> Result<TensorId, FormatError> {
    Ok(TensorId(c.u32()?))
}

pub(super) fn opt_tensor(c: &mut Cursor<'_>) -> Result<Option<TensorId>, FormatError> {
    Ok(c.opt_u32()?.map(TensorId))
}

pub(super) fn code(c: &mut Cursor<'_>, what: &'static str, max: u32) -> Result<u32, FormatError> {
    let at = c.offset();
    let v = c.u32()?;
    if v > max {
        return Err(unknown(what, v, at));
    }
    Ok(v)
}

pub(super) fn pair(c: &mut Cursor<'_>) -> Result<[u32; 2], FormatError> {
    Ok([c.u32()?, c.u32()?])
}

fn decode_act(c: &mut Cursor<'_>) -> Result<ActQuant, FormatError> {
    let a = ActQuant { delta: c.f32()?, zero_point: c.u8()?, bits: c.u8()? };
    c.reserved(2)?;
    Ok(a)
}

fn decode_steps(c: &mut Cursor<'_>) -> Result<StepGroups, FormatError> {
    let e = c.count("time-step edge count", limits::MAX_STEP_GROUPS - 1, 4)?;
    let mut edges = Vec::with_capacity(e);
    for _ in 0..e {
        edges.push(c.f32()?);
    }
    let per = 8 + e * ACT_QUANT_BYTES;
    let n = c.count("time-step entry count", limits::MAX_NODES * limits::MAX_QUANT_GROUPS, per)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let node = c.u32()?;
        let slot = c.u32()?;
        let mut acts = Vec::with_capacity(e);
        for _ in 0..e {
            acts.push(decode_act(c)?);
        }
        entries.push(StepEntry { node, slot, acts });
    }
    Ok(StepGroups { edges, entries })
}

fn decode_weight_quant(c: &mut Cursor<'_>) -> Result<WeightQuant, FormatError> {
    let weight_bits = c.u8()?;
    let at = c.offset();
    let n = u64::from(c.u8()?);
    c.reserved(2)?;
    let n = c.check_count("quantization group count", at, n, limits::MAX_QUANT_GROUPS, QUANT_GROUP_BYTES)?;
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        let channel_start = c.u32()?;
        let weight_scales = tensor(c)?;
        let input = match code(c, "input-quantized flag", 1)? {
            0 => {
                c.reserved(ACT_QUANT_BYTES)?;
                None
            }
            _ => Some(decode_act(c)?),
        };
        groups.push(QuantGroup { channel_start, weight_scales, input });
    }
    Ok(WeightQuant { weight_bits, groups })
}
