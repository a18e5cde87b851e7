//! `.edq` open and verify costs on a file the size of the CIFAR-10 DDPM UNet (35.7 M f32
//! parameters in 3×3 convolutions): parsing must stay independent of the weight bytes, and
//! verification should run near memory bandwidth.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edadm_format::graph::*;
use edadm_format::{FileBuilder, ModelFile};

/// A chain of 3×3 convolutions with 35.7 M parameters in total.
fn cifar_sized_file() -> Vec<u8> {
    const LAYERS: u32 = 61;
    let params_per_layer = 256 * 256 * 9;
    let weights: Vec<f32> = (0..params_per_layer).map(|i| (i % 251) as f32 * 1e-3).collect();
    let bias = vec![0.0f32; 256];
    let mut b = FileBuilder::new();
    let mut nodes = Vec::new();
    for i in 0..LAYERS {
        let w = b.add_f32(format!("conv{i}.weight"), &[256, 256, 3, 3], &weights).unwrap();
        let bi = b.add_f32(format!("conv{i}.bias"), &[256], &bias).unwrap();
        nodes.push(Node {
            name: format!("conv{i}"),
            op: Op::Conv2d(Conv2d {
                in_channels: 256,
                out_channels: 256,
                kernel: [3, 3],
                stride: [1, 1],
                padding: Padding::uniform(1),
                dilation: [1, 1],
                groups: 1,
                weight: w,
                bias: Some(bi),
            }),
            inputs: vec![ValueId(i)],
            output: ValueId(i + 1),
            unit: Some(UnitId(i)),
            quant: None,
        });
    }
    b.set_graph(Graph {
        num_values: LAYERS + 1,
        inputs: vec![GraphInput {
            value: ValueId(0),
            kind: InputKind::Sample { channels: 256, height: 32, width: 32 },
        }],
        outputs: vec![GraphOutput { value: ValueId(LAYERS), prediction: Prediction::Epsilon }],
        units: (0..LAYERS).map(|i| Unit { name: format!("conv{i}"), kind: UnitKind::Layer }).collect(),
        nodes,
        step_groups: None,
    });
    b.to_bytes().unwrap()
}

fn bench_format(c: &mut Criterion) {
    let bytes = cifar_sized_file();
    let mut g = c.benchmark_group("format");
    g.sample_size(20);
    g.bench_function("parse/ref/cifar10-sized", |b| b.iter(|| ModelFile::parse(std::hint::black_box(&bytes)).unwrap()));
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    let f = ModelFile::parse(&bytes).unwrap();
    g.bench_function("verify/ref/cifar10-sized", |b| b.iter(|| f.verify().unwrap()));
    g.finish();
}

criterion_group!(benches, bench_format);
criterion_main!(benches);
