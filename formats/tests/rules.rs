//! One malicious file per validation rule that `attacks.rs` does not reach by byte surgery:
//! the graph and metadata are changed through the builder, whose `to_bytes` validates with the
//! reader's own rules (`validate_graph`, `Metadata::validate`), so each refusal here is the
//! reader's refusal of the same bytes. Header fields are patched in bytes. Weight scales and the
//! numeric metadata rules have their byte-level cases in `tools/tests/hostile.rs` and
//! `numbers.rs`.

mod common;

use common::*;
use edadm_format::graph::*;
use edadm_format::{FileBuilder, ModelFile};

/// The quantized fixture changed by `f`, which the writer must refuse with `needle` in one line.
fn refused(needle: &str, f: impl FnOnce(&mut FileBuilder<'static>)) {
    let mut b = tiny_model(true);
    f(&mut b);
    let e = b.to_bytes().expect_err("the writer refuses it").to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.to_lowercase().contains(&needle.to_lowercase()), "{needle:?} not in: {e}");
}

fn node_index(b: &FileBuilder<'_>, pred: impl Fn(&Node) -> bool) -> usize {
    b.graph().nodes.iter().position(pred).expect("the fixture has such a node")
}

#[test]
fn the_fixture_is_valid() {
    let bytes = tiny_model(true).to_bytes().unwrap();
    ModelFile::parse(&bytes[..]).unwrap().verify().unwrap();
}

#[test]
fn a_weight_tensor_of_the_wrong_shape() {
    refused("shape", |b| {
        let g = b.graph_mut();
        // Give `conv_in` ([4, 1, 3, 3]) the weight of `block.conv1` ([4, 4, 3, 3]), same dtype.
        let conv_weight = |g: &Graph, name: &str| {
            g.nodes
                .iter()
                .find(|n| n.name == name)
                .and_then(|n| if let Op::Conv2d(c) = &n.op { Some(c.weight) } else { None })
        };
        let other = conv_weight(g, "block.conv1").unwrap();
        let n = g.nodes.iter_mut().find(|n| n.name == "conv_in").unwrap();
        if let Op::Conv2d(c) = &mut n.op {
            c.weight = other;
        }
    });
}

#[test]
fn empty_names() {
    refused("name", |b| b.graph_mut().nodes[0].name.clear());
    refused("empty metadata key", |b| {
        b.metadata_mut().insert("", 1u64);
    });
}

#[test]
fn input_kind_rules() {
    // A second sample input, and a graph without one.
    refused("input", |b| {
        let g = b.graph_mut();
        let first = g.inputs[0].clone();
        g.inputs.push(GraphInput { value: ValueId(g.num_values), kind: first.kind });
        g.num_values += 1;
    });
    refused("input", |b| {
        let g = b.graph_mut();
        g.inputs.retain(|i| !matches!(i.kind, InputKind::Sample { .. }));
    });
}

#[test]
fn a_quantization_record_on_an_op_that_takes_none() {
    refused("quant", |b| {
        let q = b.graph().nodes.iter().find_map(|n| n.quant.clone()).unwrap();
        let gn = node_index(b, |n| matches!(n.op, Op::GroupNorm(_)));
        b.graph_mut().nodes[gn].quant = Some(q);
    });
}

#[test]
fn output_count_and_value() {
    refused("output", |b| b.graph_mut().outputs.clear());
    refused("value", |b| {
        let g = b.graph_mut();
        g.outputs[0].value = ValueId(g.num_values + 5);
    });
}

#[test]
fn metadata_limits() {
    refused("metadata key length", |b| {
        b.metadata_mut().insert("k".repeat(300), 1u64);
    });
    refused("metadata string length", |b| {
        b.metadata_mut().insert("test.long", "x".repeat((16 << 20) + 1));
    });
    refused("metadata array length", |b| {
        b.metadata_mut().insert("test.many", vec![0u64; (1 << 24) + 1]);
    });
    // Strings: 65,536 at most (an empty one is 4 bytes of file but a heap string in memory).
    refused("metadata array length", |b| {
        b.metadata_mut().insert("test.strings", vec![String::new(); (1 << 16) + 1]);
    });
}

#[test]
fn activation_steps_that_are_not_positive_normal_numbers() {
    for bad in [0.0f32, -0.5, f32::INFINITY, f32::NAN, 1e-40] {
        refused("step", |b| {
            let g = b.graph_mut();
            let n = g
                .nodes
                .iter_mut()
                .find(|n| matches!(&n.quant, Some(NodeQuant::Weight(w)) if w.groups[0].input.is_some()))
                .unwrap();
            let Some(NodeQuant::Weight(w)) = &mut n.quant else { unreachable!() };
            w.groups[0].input.as_mut().unwrap().delta = bad;
        });
    }
}

#[test]
fn attention_scale_and_timestep_period() {
    for bad in [0.0f32, -1.0, f32::NAN] {
        refused("scale", |b| {
            let i = node_index(b, |n| matches!(n.op, Op::Attention(_)));
            if let Op::Attention(a) = &mut b.graph_mut().nodes[i].op {
                a.scale = bad;
            }
        });
        refused("max_period", |b| {
            let i = node_index(b, |n| matches!(n.op, Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal { .. })));
            if let Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal { max_period, .. }) =
                &mut b.graph_mut().nodes[i].op
            {
                *max_period = bad;
            }
        });
    }
}

#[test]
fn concat_axis_and_upsample_range() {
    for axis in [0u32, 4, 99] {
        refused("axis", |b| {
            let i = node_index(b, |n| matches!(n.op, Op::Concat { .. }));
            b.graph_mut().nodes[i].op = Op::Concat { axis };
        });
    }
    for scale in [0u32, 1025, u32::MAX] {
        refused("scale", |b| {
            let i = node_index(b, |n| matches!(n.op, Op::UpsampleNearest { .. }));
            b.graph_mut().nodes[i].op = Op::UpsampleNearest { scale };
        });
    }
}

#[test]
fn a_data_offset_inside_the_header() {
    let mut b = tiny_model(true).to_bytes().unwrap();
    // FORMAT.md §3.1: data_offset is the u64 at byte 104 of the header.
    wr_u64(&mut b, 104, 64);
    reseal(&mut b);
    let e = ModelFile::parse(&b[..]).expect_err("refused").to_string();
    assert!(!e.contains('\n') && (e.contains("data") || e.contains("offset")), "{e}");
}
