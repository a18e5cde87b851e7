//! `edadm inspect`: everything a `.edq` file holds, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use edadm_format::graph::{
    AttentionLayout, GraphInput, InputKind, NodeQuant, Op, Pad, ScalePlacement, TimestepEmbedding, Unit,
};
use edadm_format::{DType, MetaArray, MetaValue, ModelFile, Section};
use serde_json::{Value, json};

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn shape(s: &[u64]) -> String {
    let dims: Vec<String> = s.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}… ({} bytes)", s.len())
}

fn meta_text(v: &MetaValue, full: bool) -> String {
    let lim = if full { usize::MAX } else { 100 };
    fn list<T: std::fmt::Debug>(ty: &str, v: &[T], full: bool) -> String {
        let shown = if full || v.len() <= 8 { v.len() } else { 4 };
        let items: Vec<String> = v[..shown].iter().map(|x| format!("{x:?}")).collect();
        let more = if shown < v.len() { format!(" … {:?}", v[v.len() - 1]) } else { String::new() };
        format!("[{ty}; {}] {}{more}", v.len(), items.join(" "))
    }
    match v {
        MetaValue::U64(x) => x.to_string(),
        MetaValue::I64(x) => x.to_string(),
        MetaValue::F64(x) => format!("{x:?}"),
        MetaValue::Bool(x) => x.to_string(),
        MetaValue::Str(s) => format!("{:?}", clip(s, lim)),
        MetaValue::Array(MetaArray::U64(v)) => list("u64", v, full),
        MetaValue::Array(MetaArray::I64(v)) => list("i64", v, full),
        MetaValue::Array(MetaArray::F64(v)) => list("f64", v, full),
        MetaValue::Array(MetaArray::Bool(v)) => list("bool", v, full),
        MetaValue::Array(MetaArray::Str(v)) => list("str", v, full),
    }
}

fn meta_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F64(x) => json!(x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::Str(s) => json!(s),
        MetaValue::Array(MetaArray::U64(v)) => json!(v),
        MetaValue::Array(MetaArray::I64(v)) => json!(v),
        MetaValue::Array(MetaArray::F64(v)) => json!(v),
        MetaValue::Array(MetaArray::Bool(v)) => json!(v),
        MetaValue::Array(MetaArray::Str(v)) => json!(v),
    }
}

fn input_text(i: &GraphInput) -> String {
    match i.kind {
        InputKind::Sample { channels, height, width } => format!("x [N, {channels}, {height}, {width}]"),
        InputKind::Timestep => "t [N]".into(),
        InputKind::Context { tokens, dim } => format!("context [N, {tokens}, {dim}]"),
    }
}

/// A one-line description of an op and its attributes.
pub fn op_summary(op: &Op) -> String {
    let pad = |p: &edadm_format::graph::Padding| {
        if p.top == p.bottom && p.left == p.right && p.top == p.left {
            format!("p{}", p.top)
        } else {
            format!("p({},{},{},{})", p.top, p.bottom, p.left, p.right)
        }
    };
    let k = |k: [u32; 2]| {
        if k[0] == k[1] { k[0].to_string() } else { format!("{}x{}", k[0], k[1]) }
    };
    match op {
        Op::Conv2d(c) => {
            let mut s = format!(
                "Conv2d {}→{} k{} s{} {}",
                c.in_channels,
                c.out_channels,
                k(c.kernel),
                k(c.stride),
                pad(&c.padding)
            );
            if c.dilation != [1, 1] {
                s += &format!(" d{}", k(c.dilation));
            }
            if c.groups != 1 {
                s += &format!(" g{}", c.groups);
            }
            s
        }
        Op::ConvTranspose2d(c) => format!(
            "ConvTranspose2d {}→{} k{} s{} p{}",
            c.in_channels,
            c.out_channels,
            k(c.kernel),
            k(c.stride),
            k(c.padding)
        ),
        Op::Linear(l) => format!("Linear {}→{}", l.in_features, l.out_features),
        Op::GroupNorm(g) => format!("GroupNorm {}/{} eps {:e}", g.channels, g.groups, g.eps),
        Op::LayerNorm(l) => format!("LayerNorm {:?} {} eps {:e}", l.axes, l.channels, l.eps),
        Op::Gelu(a) => format!("GELU {a:?}"),
        Op::Concat { axis } => format!("Concat axis {axis}"),
        Op::Pad(Pad::Fixed { padding, value }) => format!("Pad {} value {value}", pad(padding)),
        Op::Pad(Pad::MatchSpatial) => "Pad to match".into(),
        Op::UpsampleNearest { scale } => format!("UpsampleNearest x{scale}"),
        Op::AvgPool2d(p) => format!("AvgPool2d k{} s{}", k(p.kernel), k(p.stride)),
        Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal { dim, order, denominator, max_period }) => {
            format!("TimestepEmbedding sinusoid {dim} {order:?} {denominator:?} {max_period}")
        }
        Op::TimestepEmbedding(TimestepEmbedding::Table { dim, .. }) => {
            format!("TimestepEmbedding table {dim}")
        }
        Op::Attention(a) => format!(
            "Attention {}ch {}h scale {:.4} {}{}",
            a.channels,
            a.heads,
            a.scale,
            match a.scale_placement {
                ScalePlacement::AfterProduct => "after",
                ScalePlacement::BeforeQuantization => "before-quant",
            },
            match a.layout {
                AttentionLayout::Spatial => "",
                AttentionLayout::Tokens => " tokens",
            }
        ),
        Op::Silu | Op::Relu | Op::Sigmoid | Op::Add | Op::Mul => op.name().into(),
    }
}

/// Short description of a quantization record: `w4 a8`, `w8 a8+a8` (split), `w8 f32-in`, `qkvp8`.
pub fn quant_summary(q: &Option<NodeQuant>) -> String {
    match q {
        None => "-".into(),
        Some(NodeQuant::Weight(w)) => {
            let acts: Vec<String> =
                w.groups.iter().map(|g| g.input.map_or("f32-in".to_string(), |a| format!("a{}", a.bits))).collect();
            format!("w{} {}", w.weight_bits, acts.join("+"))
        }
        Some(NodeQuant::Attention(a)) => {
            format!("q{} k{} v{} p{}", a.q.bits, a.k.bits, a.v.bits, a.prob.bits)
        }
    }
}

/// The activation quantizers of a record as JSON: per input group of a weighted node
/// (`null` for an f32 input), or q/k/v/prob of an attention node.
fn act_quant_json(q: &Option<NodeQuant>) -> Value {
    let one = |a: &edadm_format::graph::ActQuant| json!({"delta": a.delta, "zero_point": a.zero_point, "bits": a.bits});
    match q {
        None => Value::Null,
        Some(NodeQuant::Weight(w)) => Value::Array(
            w.groups
                .iter()
                .map(|g| json!({"channel_start": g.channel_start, "input": g.input.as_ref().map(one)}))
                .collect(),
        ),
        Some(NodeQuant::Attention(a)) => {
            json!({"q": one(&a.q), "k": one(&a.k), "v": one(&a.v), "prob": one(&a.prob)})
        }
    }
}

fn size_by_dtype<B: AsRef<[u8]>>(f: &ModelFile<B>) -> BTreeMap<DType, (usize, u64)> {
    let mut m: BTreeMap<DType, (usize, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = m.entry(t.dtype).or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
    }
    m
}

fn unit_label(units: &[Unit], u: Option<edadm_format::graph::UnitId>) -> String {
    match u {
        None => "-".into(),
        Some(u) => units.get(u.0 as usize).map_or(u.0.to_string(), |x| format!("{} {}", u.0, x.name)),
    }
}

/// The text report.
pub fn text<B: AsRef<[u8]>>(f: &ModelFile<B>, path: &str, full: bool) -> String {
    let h = f.header();
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "file      {path} ({}, {} bytes)", bytes(h.file_length), h.file_length);
    let _ = writeln!(
        w,
        "format    .edq {}.{}, little-endian, tensor alignment {}",
        h.version_major, h.version_minor, h.alignment
    );
    let _ = writeln!(w, "checksums header, sections and all {} tensors verified", f.num_tensors());
    let _ = writeln!(w, "\nsections  {:<10} {:>12} {:>12}  crc32", "", "offset", "length");
    for (s, info) in h.sections() {
        let _ = writeln!(
            w,
            "          {:<10} {:>12} {:>12}  {:#010x}",
            match s {
                Section::Metadata => "metadata",
                Section::Graph => "graph",
                _ => "tensors",
            },
            info.offset,
            info.length,
            info.crc32
        );
    }
    let _ = writeln!(w, "          {:<10} {:>12} {:>12}", "data", h.data_offset, h.data_length);

    let _ = writeln!(w, "\nmetadata ({} entries)", f.metadata().len());
    let kw = f.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in f.metadata().iter() {
        let _ = writeln!(w, "  {k:<kw$}  {}", meta_text(v, full));
    }

    let g = f.graph();
    let inputs: Vec<String> = g.inputs.iter().map(input_text).collect();
    let _ = writeln!(
        w,
        "\ngraph     {} nodes, {} values, {} reconstruction units",
        g.nodes.len(),
        g.num_values,
        g.units.len()
    );
    let _ = writeln!(w, "inputs    {}", inputs.join(", "));
    for o in &g.outputs {
        let _ = writeln!(w, "output    value {} ({})", o.value.0, o.prediction.name());
    }
    let quantized = g.nodes.iter().filter(|n| n.quant.is_some()).count();
    let _ = writeln!(w, "quantized {quantized} of {} nodes", g.nodes.len());
    if let Some(s) = &g.step_groups {
        let edges: Vec<String> = s.edges.iter().map(|e| format!("{e}")).collect();
        let _ = writeln!(w, "timesteps {} activation-quantizer groups, edges at t = {}", s.groups(), edges.join(", "));
    }
    let nw = g.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    let ow = g.nodes.iter().map(|n| op_summary(&n.op).chars().count()).max().unwrap_or(2).max(2);
    let _ = writeln!(
        w,
        "\n  {:>4}  {:<nw$}  {:<ow$}  {:<14} {:<6} {:<12} unit",
        "#", "node", "op", "inputs", "out", "quant"
    );
    for (i, n) in g.nodes.iter().enumerate() {
        let ins: Vec<String> = n.inputs.iter().map(|v| v.0.to_string()).collect();
        let _ = writeln!(
            w,
            "  {i:>4}  {:<nw$}  {:<ow$}  {:<14} {:<6} {:<12} {}",
            n.name,
            op_summary(&n.op),
            ins.join(","),
            n.output.0,
            quant_summary(&n.quant),
            unit_label(&g.units, n.unit)
        );
    }

    let _ = writeln!(w, "\ntensors ({})", f.num_tensors());
    let tw = f.tensors().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(w, "  {:>5}  {:<tw$}  {:<5} {:<20} {:>12}", "#", "name", "dtype", "shape", "bytes");
    for t in f.tensors() {
        let _ = writeln!(
            w,
            "  {:>5}  {:<tw$}  {:<5} {:<20} {:>12}",
            t.id.0,
            t.name,
            t.dtype.name(),
            shape(t.shape),
            t.data.len()
        );
    }

    let _ = writeln!(w, "\nsize by dtype");
    let total: u64 = f.tensors().map(|t| t.data.len() as u64).sum();
    for (d, (n, b)) in size_by_dtype(f) {
        let pct = if total > 0 { 100.0 * b as f64 / total as f64 } else { 0.0 };
        let _ = writeln!(w, "  {:<5} {n:>6} tensors {:>12} {pct:>6.1}%", d.name(), bytes(b));
    }
    let _ = writeln!(w, "  {:<5} {:>6} tensors {:>12}", "all", f.num_tensors(), bytes(total));
    o
}

/// The JSON report.
pub fn json<B: AsRef<[u8]>>(f: &ModelFile<B>, path: &str) -> Value {
    let h = f.header();
    let sections: Vec<Value> = h
        .sections()
        .iter()
        .map(|(s, i)| json!({"section": s.name(), "offset": i.offset, "length": i.length, "crc32": i.crc32}))
        .collect();
    let metadata: serde_json::Map<String, Value> =
        f.metadata().iter().map(|(k, v)| (k.to_owned(), meta_json(v))).collect();
    let g = f.graph();
    let nodes: Vec<Value> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(ni, n)| {
            let groups: Value = match (&g.step_groups, &n.quant) {
                (Some(_), Some(r)) => Value::Array(
                    r.act_slots()
                        .iter()
                        .map(|&slot| {
                            let acts = g.act_quants(ni, slot).unwrap_or_default();
                            json!({"slot": slot, "groups": acts.iter().map(|a| json!({"delta": a.delta, "zero_point": a.zero_point})).collect::<Vec<_>>()})
                        })
                        .collect(),
                ),
                _ => Value::Null,
            };
            json!({
                "name": n.name,
                "op": n.op.name(),
                "summary": op_summary(&n.op),
                "inputs": n.inputs.iter().map(|v| v.0).collect::<Vec<_>>(),
                "output": n.output.0,
                "quant": quant_summary(&n.quant),
                "weight_bits": match &n.quant { Some(NodeQuant::Weight(w)) => json!(w.weight_bits), _ => Value::Null },
                "act_quant": act_quant_json(&n.quant),
                "act_quant_steps": groups,
                "unit": n.unit.map(|u| u.0),
                "tensors": n.op.tensor_refs().iter().map(|(role, t)| json!({"role": role, "tensor": t.0})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let tensors: Vec<Value> = f
        .tensors()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.data.len(), "offset": t.file_offset, "crc32": t.crc32}))
        .collect();
    let by_dtype: serde_json::Map<String, Value> = size_by_dtype(f)
        .into_iter()
        .map(|(d, (n, b))| (d.name().to_owned(), json!({"tensors": n, "bytes": b})))
        .collect();
    json!({
        "file": path,
        "verified": true,
        "header": {
            "version": format!("{}.{}", h.version_major, h.version_minor),
            "alignment": h.alignment,
            "file_length": h.file_length,
            "sections": sections,
            "data": {"offset": h.data_offset, "length": h.data_length},
        },
        "metadata": metadata,
        "graph": {
            "num_values": g.num_values,
            "inputs": g.inputs.iter().map(input_text).collect::<Vec<_>>(),
            "outputs": g.outputs.iter().map(|o| json!({"value": o.value.0, "prediction": o.prediction.name()})).collect::<Vec<_>>(),
            "units": g.units.iter().map(|u| json!({"name": u.name, "kind": u.kind.name()})).collect::<Vec<_>>(),
            "nodes": nodes,
            "step_groups": g.step_groups.as_ref().map(|s| json!({"groups": s.groups(), "edges": s.edges})),
        },
        "tensors": tensors,
        "size_by_dtype": by_dtype,
    })
}
