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

fn unknown(what: &'static str, code: u32, offset: u64) -> FormatError {
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
        encode_attrs(&mut a, &n.op);
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

fn encode_attrs(e: &mut Encoder, op: &Op) {
    let t = |t: TensorId| t.0;
    let ot = |t: Option<TensorId>| t.map(|t| t.0);
    match op {
        Op::Conv2d(c) => {
            for v in [c.in_channels, c.out_channels, c.kernel[0], c.kernel[1], c.stride[0], c.stride[1]] {
                e.u32(v);
            }
            for v in [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right] {
                e.u32(v);
            }
            for v in [c.dilation[0], c.dilation[1], c.groups, t(c.weight)] {
                e.u32(v);
            }
            e.opt_u32(ot(c.bias));
        }
        Op::ConvTranspose2d(c) => {
            for v in [c.in_channels, c.out_channels, c.kernel[0], c.kernel[1], c.stride[0], c.stride[1]] {
                e.u32(v);
            }
            for v in [c.padding[0], c.padding[1], c.output_padding[0], c.output_padding[1], t(c.weight)] {
                e.u32(v);
            }
            e.opt_u32(ot(c.bias));
        }
        Op::Linear(l) => {
            e.u32(l.in_features);
            e.u32(l.out_features);
            e.u32(t(l.weight));
            e.opt_u32(ot(l.bias));
        }
        Op::GroupNorm(g) => {
            e.u32(g.groups);
            e.u32(g.channels);
            e.f32(g.eps);
            e.opt_u32(ot(g.weight));
            e.opt_u32(ot(g.bias));
        }
        Op::LayerNorm(l) => {
            e.u32(match l.axes {
                LayerNormAxes::Channel => 0,
                LayerNormAxes::ChannelSpatial => 1,
            });
            e.u32(l.channels);
            e.f32(l.eps);
            e.opt_u32(ot(l.weight));
            e.opt_u32(ot(l.bias));
        }
        Op::Silu | Op::Relu | Op::Sigmoid | Op::Add | Op::Mul => {}
        Op::Gelu(a) => e.u32(match a {
            GeluApprox::Erf => 0,
            GeluApprox::Tanh => 1,
        }),
        Op::Concat { axis } => e.u32(*axis),
        Op::Pad(Pad::Fixed { padding, value }) => {
            e.u32(0);
            for v in [padding.top, padding.bottom, padding.left, padding.right] {
                e.u32(v);
            }
            e.f32(*value);
        }
        Op::Pad(Pad::MatchSpatial) => e.u32(1),
        Op::UpsampleNearest { scale } => e.u32(*scale),
        Op::AvgPool2d(p) => {
            for v in [p.kernel[0], p.kernel[1], p.stride[0], p.stride[1]] {
                e.u32(v);
            }
        }
        Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal { dim, order, denominator, max_period }) => {
            e.u32(*dim);
            e.u32(0);
            e.u32(match order {
                SinusoidOrder::SinCos => 0,
                SinusoidOrder::CosSin => 1,
            });
            e.u32(match denominator {
                FreqDenominator::HalfMinusOne => 0,
                FreqDenominator::Half => 1,
            });
            e.f32(*max_period);
        }
        Op::TimestepEmbedding(TimestepEmbedding::Table { dim, table }) => {
            e.u32(*dim);
            e.u32(1);
            e.u32(t(*table));
        }
        Op::Attention(a) => {
            e.u32(a.channels);
            e.u32(a.heads);
            e.f32(a.scale);
            e.u32(match a.scale_placement {
                ScalePlacement::AfterProduct => 0,
                ScalePlacement::BeforeQuantization => 1,
            });
            e.u32(match a.layout {
                AttentionLayout::Spatial => 0,
                AttentionLayout::Tokens => 1,
            });
        }
    }
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
    let op = decode_attrs(&mut a, op_code, op_at)?;
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

fn tensor(c: &mut Cursor<'_>) -> Result<TensorId, FormatError> {
    Ok(TensorId(c.u32()?))
}

fn opt_tensor(c: &mut Cursor<'_>) -> Result<Option<TensorId>, FormatError> {
    Ok(c.opt_u32()?.map(TensorId))
}

fn code(c: &mut Cursor<'_>, what: &'static str, max: u32) -> Result<u32, FormatError> {
    let at = c.offset();
    let v = c.u32()?;
    if v > max {
        return Err(unknown(what, v, at));
    }
    Ok(v)
}

fn pair(c: &mut Cursor<'_>) -> Result<[u32; 2], FormatError> {
    Ok([c.u32()?, c.u32()?])
}

fn decode_attrs(c: &mut Cursor<'_>, op_code: u16, op_at: u64) -> Result<Op, FormatError> {
    Ok(match op_code {
        0 => Op::Conv2d(Conv2d {
            in_channels: c.u32()?,
            out_channels: c.u32()?,
            kernel: pair(c)?,
            stride: pair(c)?,
            padding: Padding { top: c.u32()?, bottom: c.u32()?, left: c.u32()?, right: c.u32()? },
            dilation: pair(c)?,
            groups: c.u32()?,
            weight: tensor(c)?,
            bias: opt_tensor(c)?,
        }),
        1 => Op::ConvTranspose2d(ConvTranspose2d {
            in_channels: c.u32()?,
            out_channels: c.u32()?,
            kernel: pair(c)?,
            stride: pair(c)?,
            padding: pair(c)?,
            output_padding: pair(c)?,
            weight: tensor(c)?,
            bias: opt_tensor(c)?,
        }),
        2 => Op::Linear(Linear {
            in_features: c.u32()?,
            out_features: c.u32()?,
            weight: tensor(c)?,
            bias: opt_tensor(c)?,
        }),
        3 => Op::GroupNorm(GroupNorm {
            groups: c.u32()?,
            channels: c.u32()?,
            eps: c.f32()?,
            weight: opt_tensor(c)?,
            bias: opt_tensor(c)?,
        }),
        4 => Op::LayerNorm(LayerNorm {
            axes: match code(c, "layer-norm axes", 1)? {
                0 => LayerNormAxes::Channel,
                _ => LayerNormAxes::ChannelSpatial,
            },
            channels: c.u32()?,
            eps: c.f32()?,
            weight: opt_tensor(c)?,
            bias: opt_tensor(c)?,
        }),
        5 => Op::Silu,
        6 => Op::Relu,
        7 => Op::Gelu(match code(c, "GELU approximation", 1)? {
            0 => GeluApprox::Erf,
            _ => GeluApprox::Tanh,
        }),
        8 => Op::Sigmoid,
        9 => Op::Add,
        10 => Op::Mul,
        11 => Op::Concat { axis: c.u32()? },
        12 => Op::Pad(match code(c, "pad mode", 1)? {
            0 => Pad::Fixed {
                padding: Padding { top: c.u32()?, bottom: c.u32()?, left: c.u32()?, right: c.u32()? },
                value: c.f32()?,
            },
            _ => Pad::MatchSpatial,
        }),
        13 => Op::UpsampleNearest { scale: c.u32()? },
        14 => Op::AvgPool2d(AvgPool2d { kernel: pair(c)?, stride: pair(c)? }),
        15 => {
            let dim = c.u32()?;
            Op::TimestepEmbedding(match code(c, "timestep embedding kind", 1)? {
                0 => TimestepEmbedding::Sinusoidal {
                    dim,
                    order: match code(c, "sinusoid order", 1)? {
                        0 => SinusoidOrder::SinCos,
                        _ => SinusoidOrder::CosSin,
                    },
                    denominator: match code(c, "frequency denominator", 1)? {
                        0 => FreqDenominator::HalfMinusOne,
                        _ => FreqDenominator::Half,
                    },
                    max_period: c.f32()?,
                },
                _ => TimestepEmbedding::Table { dim, table: tensor(c)? },
            })
        }
        16 => Op::Attention(Attention {
            channels: c.u32()?,
            heads: c.u32()?,
            scale: c.f32()?,
            scale_placement: match code(c, "attention scale placement", 1)? {
                0 => ScalePlacement::AfterProduct,
                _ => ScalePlacement::BeforeQuantization,
            },
            layout: match code(c, "attention layout", 1)? {
                0 => AttentionLayout::Spatial,
                _ => AttentionLayout::Tokens,
            },
        }),
        code => return Err(unknown("op", code.into(), op_at)),
    })
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
