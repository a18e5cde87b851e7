//! Shared fixtures: deterministic tiny models that use every op kind, every quantization record
//! kind, every dtype and every metadata type, plus helpers to patch files like an attacker
//! would (and re-seal their checksums so the structural checks are reached).
#![allow(dead_code)]

use edadm_format::graph::*;
use edadm_format::metadata::keys;
use edadm_format::{DType, FileBuilder, MetaArray, MetaValue, Metadata};

/// A small deterministic generator (xorshift64*), so fixtures never change.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn f32s(&mut self, n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| (((self.next() >> 40) as f32 / (1u64 << 24) as f32) - 0.5).to_le_bytes()).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

pub fn metadata(quantized: bool) -> Metadata {
    let mut m = Metadata::new();
    m.insert(keys::PRODUCER, "edadm test fixture");
    m.insert(keys::MODEL_FAMILY, "ddpm");
    m.insert(keys::MODEL_CONFIG, r#"{"ch":4,"ch_mult":[1,2]}"#);
    m.insert(keys::SCHEDULE_KIND, "linear");
    m.insert(keys::SCHEDULE_TIMESTEPS, 10u64);
    m.insert(keys::SCHEDULE_BETAS, (0..10).map(|i| 1e-4 + i as f64 * 2e-3).collect::<Vec<f64>>());
    m.insert(keys::MODEL_DATA_RANGE, vec![-1.0, 1.0]);
    if quantized {
        m.insert(keys::QUANT_METHOD, "eda-dm");
        m.insert(keys::QUANT_CALIBRATION, "tdac");
        m.insert(keys::QUANT_RECONSTRUCTION, "fbr");
        m.insert(keys::QUANT_WEIGHT_BITS, 4u64);
        m.insert(keys::QUANT_ACT_BITS, 8u64);
        m.insert(keys::QUANT_LAMBDA, 1.2);
        m.insert(keys::QUANT_SPLIT, true);
    }
    m.insert("test.i64", -7i64);
    m.insert("test.u64s", vec![1u64, 2, 3]);
    m.insert("test.strs", vec!["a".to_string(), "βγ".to_string()]);
    m.insert("test.i64s", MetaValue::Array(MetaArray::I64(vec![-1, 0, 1])));
    m.insert("test.bools", MetaValue::Array(MetaArray::Bool(vec![true, false])));
    m
}

struct G<'b, 'd> {
    b: &'b mut FileBuilder<'d>,
    rng: Rng,
    quantized: bool,
    nodes: Vec<Node>,
    next_value: u32,
}

impl G<'_, '_> {
    fn f32(&mut self, name: &str, shape: &[u64]) -> TensorId {
        let n = shape.iter().product::<u64>() as usize;
        let data = self.rng.f32s(n);
        self.b.add_tensor(name, DType::F32, shape, data).unwrap()
    }

    /// A weight: f32 in the FP model, i8/i4 in the quantized one.
    fn weight(&mut self, name: &str, shape: &[u64], bits: u8) -> TensorId {
        if !self.quantized {
            return self.f32(name, shape);
        }
        let n = shape.iter().product::<u64>();
        let (dtype, len) = if bits == 4 { (DType::I4, n.div_ceil(2)) } else { (DType::I8, n) };
        let data = self.rng.bytes(len as usize);
        self.b.add_tensor(name, dtype, shape, data).unwrap()
    }

    fn node(&mut self, name: &str, op: Op, inputs: &[u32], unit: Option<u32>, quant: Option<NodeQuant>) -> u32 {
        let output = self.next_value;
        self.next_value += 1;
        let quant = if self.quantized { quant } else { None };
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|&v| ValueId(v)).collect(),
            output: ValueId(output),
            unit: unit.map(UnitId),
            quant,
        });
        output
    }

    fn wq(&mut self, name: &str, out: u64, bits: u8, splits: &[u32], input: bool) -> Option<NodeQuant> {
        if !self.quantized {
            return None;
        }
        let mut groups = Vec::new();
        for (i, &start) in splits.iter().enumerate() {
            let scales = self.f32(&format!("{name}.weight_scales.{i}"), &[out]);
            let input = input.then_some(ActQuant { delta: 0.05 * (1 << i) as f32, zero_point: 128, bits: 8 });
            groups.push(QuantGroup { channel_start: start, weight_scales: scales, input });
        }
        Some(NodeQuant::Weight(WeightQuant { weight_bits: bits, groups }))
    }

    // A fixture helper mirroring Conv2d's own attribute list.
    fn conv(
        &mut self,
        name: &str,
        cin: u32,
        cout: u32,
        k: u32,
        stride: u32,
        pad: u32,
        x: u32,
        unit: u32,
        bits: u8,
    ) -> u32 {
        let w = self.weight(&format!("{name}.weight"), &[cout as u64, cin as u64, k as u64, k as u64], bits);
        let b = self.f32(&format!("{name}.bias"), &[cout as u64]);
        let q = self.wq(name, cout as u64, bits, &[0], true);
        let op = Op::Conv2d(Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: [k, k],
            stride: [stride, stride],
            padding: Padding::uniform(pad),
            dilation: [1, 1],
            groups: 1,
            weight: w,
            bias: Some(b),
        });
        self.node(name, op, &[x], Some(unit), q)
    }

    fn gn(&mut self, name: &str, c: u32, x: u32, unit: Option<u32>) -> u32 {
        let w = self.f32(&format!("{name}.weight"), &[c as u64]);
        let b = self.f32(&format!("{name}.bias"), &[c as u64]);
        let op = Op::GroupNorm(GroupNorm { groups: 2, channels: c, eps: 1e-6, weight: Some(w), bias: Some(b) });
        self.node(name, op, &[x], unit, None)
    }
}

/// The tiny model: every op kind once or more; in its quantized form every record kind
/// (4- and 8-bit weights, a split skip conv, an unquantized-input output conv, attention).
pub fn tiny_model(quantized: bool) -> FileBuilder<'static> {
    let mut b = FileBuilder::new();
    b.set_metadata(metadata(quantized));
    let mut g =
        G { b: &mut b, rng: Rng::new(if quantized { 2 } else { 1 }), quantized, nodes: Vec::new(), next_value: 2 };
    let (x, t) = (0, 1);

    let temb = g.node(
        "temb.sinusoid",
        Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal {
            dim: 8,
            order: SinusoidOrder::SinCos,
            denominator: FreqDenominator::HalfMinusOne,
            max_period: 10000.0,
        }),
        &[t],
        None,
        None,
    );
    let w = g.weight("temb.dense.0.weight", &[4, 8], 8);
    let bias = g.f32("temb.dense.0.bias", &[4]);
    let q = g.wq("temb.dense.0", 4, 8, &[0], true);
    let temb = g.node(
        "temb.dense.0",
        Op::Linear(Linear { in_features: 8, out_features: 4, weight: w, bias: Some(bias) }),
        &[temb],
        Some(0),
        q,
    );
    let temb = g.node("temb.act", Op::Silu, &[temb], None, None);

    let h0 = g.conv("conv_in", 1, 4, 3, 1, 1, x, 1, 4);
    let h = g.gn("block.norm1", 4, h0, Some(2));
    let h = g.node("block.act1", Op::Silu, &[h], Some(2), None);
    let h = g.conv("block.conv1", 4, 4, 3, 1, 1, h, 2, 4);
    let h = g.node("block.temb_add", Op::Add, &[h, temb], Some(2), None);
    let h1 = g.node("block.residual", Op::Add, &[h, h0], Some(2), None);

    let a = g.gn("attn.norm", 4, h1, Some(3));
    let q = g.conv("attn.q", 4, 4, 1, 1, 0, a, 3, 8);
    let k = g.conv("attn.k", 4, 4, 1, 1, 0, a, 3, 8);
    let v = g.conv("attn.v", 4, 4, 1, 1, 0, a, 3, 8);
    let aq = ActQuant { delta: 0.1, zero_point: 128, bits: 8 };
    let attn_q = g.quantized.then_some(NodeQuant::Attention(AttentionQuant {
        q: aq,
        k: aq,
        v: ActQuant { delta: 0.2, ..aq },
        prob: ActQuant { delta: 1.0 / 255.0, zero_point: 0, bits: 8 },
    }));
    let o = g.node(
        "attn.attention",
        Op::Attention(Attention {
            channels: 4,
            heads: 1,
            scale: 0.5,
            scale_placement: ScalePlacement::AfterProduct,
            layout: AttentionLayout::Spatial,
        }),
        &[q, k, v],
        Some(3),
        attn_q,
    );
    let o = g.conv("attn.proj_out", 4, 4, 1, 1, 0, o, 3, 8);
    let h2 = g.node("attn.residual", Op::Add, &[o, h1], Some(3), None);

    let p = g.node(
        "down.pad",
        Op::Pad(Pad::Fixed { padding: Padding { top: 0, bottom: 1, left: 0, right: 1 }, value: 0.0 }),
        &[h2],
        None,
        None,
    );
    let d = g.conv("down.conv", 4, 4, 3, 2, 0, p, 4, 4);
    let u = g.node("up.upsample", Op::UpsampleNearest { scale: 2 }, &[d], None, None);
    let c = g.node("up.concat", Op::Concat { axis: 1 }, &[u, h2], None, None);

    let lnw = g.f32("up.ln.weight", &[8, 8, 8]);
    let lnb = g.f32("up.ln.bias", &[8, 8, 8]);
    let ln = g.node(
        "up.ln",
        Op::LayerNorm(LayerNorm {
            axes: LayerNormAxes::ChannelSpatial,
            channels: 8,
            eps: 1e-5,
            weight: Some(lnw),
            bias: Some(lnb),
        }),
        &[c],
        Some(5),
        None,
    );
    let r = g.node("up.relu", Op::Relu, &[ln], Some(5), None);
    // The split skip conv: two input-channel groups with their own scales and quantizers.
    let sw = g.weight("up.skip.weight", &[4, 8, 1, 1], 8);
    let sq = g.wq("up.skip", 4, 8, &[0, 4], true);
    let skip = g.node(
        "up.skip",
        Op::Conv2d(Conv2d {
            in_channels: 8,
            out_channels: 4,
            kernel: [1, 1],
            stride: [1, 1],
            padding: Padding::default(),
            dilation: [1, 1],
            groups: 1,
            weight: sw,
            bias: None,
        }),
        &[c],
        Some(5),
        sq,
    );
    let pool = g.node("up.pool", Op::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] }), &[r], Some(5), None);
    let tw = g.weight("up.convt.weight", &[8, 4, 2, 2], 4);
    let tb = g.f32("up.convt.bias", &[4]);
    let tq = g.wq("up.convt", 4, 4, &[0], true);
    let ct = g.node(
        "up.convt",
        Op::ConvTranspose2d(ConvTranspose2d {
            in_channels: 8,
            out_channels: 4,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            output_padding: [0, 0],
            weight: tw,
            bias: Some(tb),
        }),
        &[pool],
        Some(5),
        tq,
    );
    let pm = g.node("up.pad_match", Op::Pad(Pad::MatchSpatial), &[ct, skip], Some(5), None);
    let m = g.node("up.mul", Op::Mul, &[pm, skip], Some(5), None);
    let m = g.node("up.gelu", Op::Gelu(GeluApprox::Tanh), &[m], Some(5), None);
    let m = g.node("up.sigmoid", Op::Sigmoid, &[m], Some(5), None);
    let table = g.f32("temb2.table", &[10, 4]);
    let te = g.node("temb2", Op::TimestepEmbedding(TimestepEmbedding::Table { dim: 4, table }), &[t], None, None);
    let m = g.node("up.temb_add", Op::Add, &[m, te], None, None);
    // The output conv: 8-bit weights, f32 input.
    let ow = g.weight("conv_out.weight", &[1, 4, 3, 3], 8);
    let ob = g.f32("conv_out.bias", &[1]);
    let oq = g.wq("conv_out", 1, 8, &[0], false);
    let out = g.node(
        "conv_out",
        Op::Conv2d(Conv2d {
            in_channels: 4,
            out_channels: 1,
            kernel: [3, 3],
            stride: [1, 1],
            padding: Padding::uniform(1),
            dilation: [1, 1],
            groups: 1,
            weight: ow,
            bias: Some(ob),
        }),
        &[m],
        Some(6),
        oq,
    );
    let raw = g.b.add_tensor("extra.i32", DType::I32, &[3], vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]).unwrap();
    let _ = raw;
    g.b.add_tensor("extra.u8", DType::U8, &[2, 2], vec![1, 2, 3, 4]).unwrap();
    g.b.add_tensor("extra.f16", DType::F16, &[2], vec![0x00, 0x3c, 0x00, 0xc0]).unwrap();
    g.b.add_tensor("extra.empty", DType::F32, &[0, 3], Vec::new()).unwrap();

    let nodes = std::mem::take(&mut g.nodes);
    let num_values = g.next_value;
    let units = [
        ("temb.dense.0", UnitKind::Layer),
        ("conv_in", UnitKind::Layer),
        ("block", UnitKind::ResBlock),
        ("attn", UnitKind::AttentionBlock),
        ("down.conv", UnitKind::Layer),
        ("up", UnitKind::ResBlock),
        ("conv_out", UnitKind::Layer),
    ]
    .map(|(n, k)| Unit { name: n.into(), kind: k })
    .to_vec();
    b.set_graph(Graph {
        num_values,
        inputs: vec![
            GraphInput { value: ValueId(x), kind: InputKind::Sample { channels: 1, height: 8, width: 8 } },
            GraphInput { value: ValueId(t), kind: InputKind::Timestep },
        ],
        outputs: vec![GraphOutput { value: ValueId(out), prediction: Prediction::Epsilon }],
        units,
        nodes,
        step_groups: None,
    });
    b
}

// ---- attacker's helpers ---------------------------------------------------------------------

pub fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
pub fn wr_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn wr_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn wr_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Header offsets of the (offset, length, crc) triple of section `i` (0 metadata, 1 graph,
/// 2 tensor table), per FORMAT.md §3.
pub fn section_field(i: usize) -> usize {
    32 + 24 * i
}

pub fn section(b: &[u8], i: usize) -> (usize, usize) {
    let f = section_field(i);
    (rd_u64(b, f) as usize, rd_u64(b, f + 8) as usize)
}

/// Recomputes the three section checksums and the header checksum, as a hostile writer
/// would, so that the structural validation is what gets tested.
pub fn reseal(b: &mut [u8]) {
    for i in 0..3 {
        let f = section_field(i);
        let (off, len) = (rd_u64(b, f) as usize, rd_u64(b, f + 8) as usize);
        if off.checked_add(len).is_some_and(|e| e <= b.len()) {
            let crc = crc32fast::hash(&b[off..off + len]);
            wr_u32(b, f + 16, crc);
        }
    }
    let crc = crc32fast::hash(&b[..124]);
    wr_u32(b, 124, crc);
}

/// Absolute offset of the first occurrence of `needle` at or after `from`.
pub fn find(b: &[u8], needle: &[u8], from: usize) -> usize {
    from + b[from..].windows(needle.len()).position(|w| w == needle).expect("pattern present")
}

/// Absolute offset of the length-prefixed string `s` inside section `i`: the offset of its
/// `u32` length prefix.
pub fn find_str(b: &[u8], i: usize, s: &str) -> usize {
    let (off, len) = section(b, i);
    let mut pat = (s.len() as u32).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    find(&b[..off + len], &pat, off)
}

/// Like [`find_str`], the last occurrence (node records follow the unit records, which may
/// carry the same names).
pub fn rfind_str(b: &[u8], i: usize, s: &str) -> usize {
    let (off, len) = section(b, i);
    let mut pat = (s.len() as u32).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    off + b[off..off + len].windows(pat.len()).rposition(|w| w == pat).expect("pattern present")
}
