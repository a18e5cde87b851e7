//! Write→parse round trips over randomly generated models: metadata of every type, tensors of
//! every dtype and odd shapes, random DAGs of every op with random quantization records, and
//! every legal alignment.

mod common;

use common::Rng;
use edadm_format::graph::*;
use edadm_format::{DType, FileBuilder, MappedModel, MetaArray, MetaValue, Metadata, ModelFile};
use proptest::prelude::*;

type Tensor = (String, DType, Vec<u64>, Vec<u8>);

struct Gen<'a> {
    rng: Rng,
    b: FileBuilder<'static>,
    tensors: &'a mut Vec<Tensor>,
}

impl Gen<'_> {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next() % n
    }
    fn dim(&mut self) -> u32 {
        1 + self.below(6) as u32
    }
    fn add(&mut self, dtype: DType, shape: &[u64]) -> TensorId {
        let n = shape.iter().product::<u64>();
        let len = dtype.storage_bytes(n).unwrap() as usize;
        let data = self.rng.bytes(len);
        let name = format!("t{}.{}", self.tensors.len(), ["w", "ß", "λ/x", "a b"][self.below(4) as usize]);
        self.tensors.push((name.clone(), dtype, shape.to_vec(), data.clone()));
        self.b.add_tensor(name, dtype, shape, data).unwrap()
    }
    /// Weight scales: positive normal numbers (the writer refuses others).
    fn scales(&mut self, out: u32) -> TensorId {
        let data: Vec<u8> = (0..out).flat_map(|_| ((1 + self.below(1000)) as f32 * 1e-3).to_le_bytes()).collect();
        let name = format!("t{}.s", self.tensors.len());
        self.tensors.push((name.clone(), DType::F32, vec![u64::from(out)], data.clone()));
        self.b.add_tensor(name, DType::F32, &[u64::from(out)], data).unwrap()
    }
    fn float(&mut self, shape: &[u64]) -> TensorId {
        let d = if self.below(2) == 0 { DType::F32 } else { DType::F16 };
        self.add(d, shape)
    }
    fn opt_float(&mut self, shape: &[u64]) -> Option<TensorId> {
        (self.below(3) != 0).then(|| self.float(shape))
    }
    fn act(&mut self) -> ActQuant {
        let bits = 1 + self.below(8) as u8;
        ActQuant { delta: (1 + self.below(1000)) as f32 * 1e-3, zero_point: (self.below(1 << bits)) as u8, bits }
    }

    /// A weighted op's weight and, half of the time, its quantization record.
    fn weighted(&mut self, shape: &[u64], in_ch: u32, out: u32, grouped: bool) -> (TensorId, Option<NodeQuant>) {
        if self.below(2) == 0 {
            return (self.float(shape), None);
        }
        let bits = [4, 5, 6, 7, 8][self.below(5) as usize];
        let w = self.add(if bits == 4 { DType::I4 } else { DType::I8 }, shape);
        let n_groups = if in_ch >= 2 && !grouped { 1 + self.below(2) as u32 } else { 1 };
        let quantized_input = self.below(4) != 0;
        let groups = (0..n_groups)
            .map(|g| QuantGroup {
                channel_start: g * (in_ch / 2),
                weight_scales: self.scales(out),
                input: quantized_input.then(|| self.act()),
            })
            .collect();
        (w, Some(NodeQuant::Weight(WeightQuant { weight_bits: bits, groups })))
    }

    fn op(&mut self, has_t: bool) -> (Op, usize, Option<NodeQuant>) {
        loop {
            let (a, b) = (self.dim(), self.dim());
            return match self.below(17) {
                0 => {
                    let groups = if self.below(3) == 0 { a } else { 1 };
                    let (cin, cout) = (groups * self.dim(), groups * b);
                    let k = [self.dim(), self.dim()];
                    let shape = [cout, cin / groups, k[0], k[1]].map(u64::from);
                    let (weight, q) = self.weighted(&shape, cin, cout, groups != 1);
                    let bias = self.opt_float(&[u64::from(cout)]);
                    let padding = Padding {
                        top: self.below(3) as u32,
                        bottom: self.below(3) as u32,
                        left: self.below(3) as u32,
                        right: self.below(3) as u32,
                    };
                    let c = Conv2d {
                        in_channels: cin,
                        out_channels: cout,
                        kernel: k,
                        stride: [self.dim(), self.dim()],
                        padding,
                        dilation: [1 + self.below(2) as u32, 1],
                        groups,
                        weight,
                        bias,
                    };
                    (Op::Conv2d(c), 1, q)
                }
                1 => {
                    let k = [self.dim(), self.dim()];
                    let stride = [self.dim(), self.dim()];
                    let (weight, q) = self.weighted(&[a, b, k[0], k[1]].map(u64::from), a, b, false);
                    let bias = self.opt_float(&[u64::from(b)]);
                    let op = ConvTranspose2d {
                        in_channels: a,
                        out_channels: b,
                        kernel: k,
                        stride,
                        padding: [self.below(2) as u32, 0],
                        output_padding: [self.below(u64::from(stride[0])) as u32, 0],
                        weight,
                        bias,
                    };
                    (Op::ConvTranspose2d(op), 1, q)
                }
                2 => {
                    let (weight, q) = self.weighted(&[u64::from(b), u64::from(a)], a, b, false);
                    let bias = self.opt_float(&[u64::from(b)]);
                    (Op::Linear(Linear { in_features: a, out_features: b, weight, bias }), 1, q)
                }
                3 => {
                    let c = a * b;
                    let gn = GroupNorm {
                        groups: a,
                        channels: c,
                        eps: 1e-6,
                        weight: self.opt_float(&[u64::from(c)]),
                        bias: self.opt_float(&[u64::from(c)]),
                    };
                    (Op::GroupNorm(gn), 1, None)
                }
                4 => {
                    let spatial = self.below(2) == 0;
                    let shape: Vec<u64> =
                        if spatial { vec![u64::from(a), u64::from(b), 3] } else { vec![u64::from(a)] };
                    let ln = LayerNorm {
                        axes: if spatial { LayerNormAxes::ChannelSpatial } else { LayerNormAxes::Channel },
                        channels: a,
                        eps: 1e-5,
                        weight: Some(self.float(&shape)),
                        bias: Some(self.float(&shape)),
                    };
                    (Op::LayerNorm(ln), 1, None)
                }
                5 => (Op::Silu, 1, None),
                6 => (Op::Relu, 1, None),
                7 => (Op::Gelu(if a % 2 == 0 { GeluApprox::Erf } else { GeluApprox::Tanh }), 1, None),
                8 => (Op::Sigmoid, 1, None),
                9 => (Op::Add, 2, None),
                10 => (Op::Mul, 2, None),
                11 => (Op::Concat { axis: 1 + self.below(3) as u32 }, 2 + self.below(3) as usize, None),
                12 if a % 2 == 0 => (Op::Pad(Pad::MatchSpatial), 2, None),
                12 => {
                    let p = Pad::Fixed { padding: Padding::uniform(b), value: -1.5 };
                    (Op::Pad(p), 1, None)
                }
                13 => (Op::UpsampleNearest { scale: a }, 1, None),
                14 => (Op::AvgPool2d(AvgPool2d { kernel: [a, b], stride: [b, a] }), 1, None),
                15 if !has_t => continue,
                15 if a % 2 == 0 => {
                    let dim = 4 + b;
                    let table = self.float(&[u64::from(a), u64::from(dim)]);
                    (Op::TimestepEmbedding(TimestepEmbedding::Table { dim, table }), 1, None)
                }
                15 => {
                    let te = TimestepEmbedding::Sinusoidal {
                        dim: 4 + b,
                        order: if b % 2 == 0 { SinusoidOrder::SinCos } else { SinusoidOrder::CosSin },
                        denominator: if a % 3 == 0 { FreqDenominator::Half } else { FreqDenominator::HalfMinusOne },
                        max_period: 10000.0,
                    };
                    (Op::TimestepEmbedding(te), 1, None)
                }
                _ => {
                    let at = Attention {
                        channels: a * b,
                        heads: a,
                        scale: 1.0 / (b as f32).sqrt(),
                        scale_placement: if a % 2 == 0 {
                            ScalePlacement::AfterProduct
                        } else {
                            ScalePlacement::BeforeQuantization
                        },
                        layout: if b % 2 == 0 { AttentionLayout::Spatial } else { AttentionLayout::Tokens },
                    };
                    let q = (self.below(2) == 0).then(|| {
                        NodeQuant::Attention(AttentionQuant {
                            q: self.act(),
                            k: self.act(),
                            v: self.act(),
                            prob: self.act(),
                        })
                    });
                    (Op::Attention(at), 3, q)
                }
            };
        }
    }
}

fn random_model(
    seed: u64,
    n_nodes: usize,
    n_extra: usize,
    meta: Metadata,
    alignment: u32,
) -> (FileBuilder<'static>, Vec<Tensor>) {
    let mut tensors = Vec::new();
    let mut g = Gen { rng: Rng::new(seed), b: FileBuilder::new(), tensors: &mut tensors };
    g.b.set_alignment(alignment).unwrap();
    g.b.set_metadata(meta);

    let mut inputs =
        vec![GraphInput { value: ValueId(0), kind: InputKind::Sample { channels: g.dim(), height: 32, width: 28 } }];
    let has_t = g.below(2) == 0;
    if has_t {
        inputs.push(GraphInput { value: ValueId(inputs.len() as u32), kind: InputKind::Timestep });
    }
    if g.below(3) == 0 {
        inputs.push(GraphInput {
            value: ValueId(inputs.len() as u32),
            kind: InputKind::Context { tokens: 77, dim: 768 },
        });
    }
    let num_units = g.below(5) as u32;
    let units: Vec<Unit> = (0..num_units)
        .map(|i| Unit { name: format!("unit.{i}"), kind: [UnitKind::Layer, UnitKind::ResBlock][i as usize % 2] })
        .collect();
    let mut next = inputs.len() as u32;
    let mut unit = 0u32;
    let mut nodes = Vec::new();
    for i in 0..n_nodes {
        let (op, arity, quant) = g.op(has_t);
        let ins = (0..arity).map(|_| ValueId(g.below(u64::from(next)) as u32)).collect();
        if num_units > 0 && unit + 1 < num_units && g.below(4) == 0 {
            unit += 1;
        }
        let node_unit = (num_units > 0 && g.below(3) != 0).then_some(UnitId(unit));
        nodes.push(Node { name: format!("node.{i}"), op, inputs: ins, output: ValueId(next), unit: node_unit, quant });
        next += 1;
    }
    for _ in 0..n_extra {
        let dtype = DType::ALL[g.below(6) as usize];
        let rank = g.below(5) as usize;
        let shape: Vec<u64> = (0..rank).map(|_| g.below(6)).collect();
        g.add(dtype, &shape);
    }
    let outputs = vec![GraphOutput { value: ValueId(next - 1), prediction: Prediction::Epsilon }];
    g.b.set_graph(Graph { num_values: next, inputs, outputs, units, nodes, step_groups: None });
    (g.b, tensors)
}

fn meta_value() -> impl Strategy<Value = MetaValue> {
    let finite =
        prop_oneof![prop::num::f64::NORMAL, prop::num::f64::SUBNORMAL, prop::num::f64::ZERO, prop::num::f64::INFINITE];
    prop_oneof![
        any::<u64>().prop_map(MetaValue::U64),
        any::<i64>().prop_map(MetaValue::I64),
        finite.clone().prop_map(MetaValue::F64),
        any::<bool>().prop_map(MetaValue::Bool),
        ".{0,40}".prop_map(MetaValue::Str),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(|v| MetaValue::Array(MetaArray::U64(v))),
        prop::collection::vec(any::<i64>(), 0..20).prop_map(|v| MetaValue::Array(MetaArray::I64(v))),
        prop::collection::vec(finite, 0..20).prop_map(|v| MetaValue::Array(MetaArray::F64(v))),
        prop::collection::vec(any::<bool>(), 0..20).prop_map(|v| MetaValue::Array(MetaArray::Bool(v))),
        prop::collection::vec(".{0,8}", 0..6).prop_map(|v| MetaValue::Array(MetaArray::Str(v))),
    ]
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("x\\.[a-zA-Z0-9_.\u{80}-\u{10ff}]{0,20}", meta_value(), 0..12).prop_map(|m| {
        let mut md = Metadata::new();
        for (k, v) in m {
            md.insert(k, v);
        }
        md
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn write_then_parse_gives_back_the_model(
        seed in any::<u64>(),
        n_nodes in 0usize..40,
        n_extra in 0usize..6,
        meta in metadata(),
        align_log2 in 6u32..13,
    ) {
        let alignment = 1u32 << align_log2;
        let (builder, tensors) = random_model(seed, n_nodes, n_extra, meta.clone(), alignment);
        let bytes = builder.to_bytes().unwrap();
        let f = ModelFile::parse(&bytes).unwrap();
        f.verify().unwrap();
        prop_assert_eq!(f.header().alignment, alignment);
        prop_assert_eq!(f.metadata(), &meta);
        prop_assert_eq!(f.graph(), builder.graph());
        prop_assert_eq!(f.num_tensors(), tensors.len());
        for (view, (name, dtype, shape, data)) in f.tensors().zip(&tensors) {
            prop_assert_eq!(view.name, name.as_str());
            prop_assert_eq!(view.dtype, *dtype);
            prop_assert_eq!(view.shape, shape.as_slice());
            prop_assert_eq!(view.data, data.as_slice());
            prop_assert_eq!(view.file_offset % u64::from(alignment), 0);
            prop_assert_eq!(f.tensor_by_name(name).map(|t| t.id), Some(view.id));
        }
        // The writer is deterministic.
        prop_assert_eq!(builder.to_bytes().unwrap(), bytes);
    }
}

#[test]
fn atomic_write_then_mmap_gives_back_the_model() {
    let dir = std::env::temp_dir().join(format!("edadm-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for seed in 0..8 {
        let (builder, tensors) = random_model(seed, 30, 3, Metadata::new(), 4096);
        let path = dir.join(format!("m{seed}.edq"));
        let len = builder.write_atomic(&path).unwrap();
        let f = MappedModel::open(&path).unwrap();
        f.verify().unwrap();
        assert_eq!(f.header().file_length, len);
        assert_eq!(f.graph(), builder.graph());
        for (view, t) in f.tensors().zip(&tensors) {
            assert_eq!((view.name, view.data), (t.0.as_str(), t.3.as_slice()));
            assert_eq!(view.data.as_ptr() as usize % 4096, 0, "page-aligned in the mapping");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
