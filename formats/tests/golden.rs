//! Golden tiny files: the writer must reproduce them byte for byte (so the format cannot drift
//! silently), and the reader must decode them to known contents.
//!
//! After an intended format change (which also bumps the version in `docs/FORMAT.md`),
//! regenerate them with `EDADM_BLESS=1 cargo test -p edadm-format --test golden`.

mod common;

use std::path::PathBuf;

use edadm_format::graph::*;
use edadm_format::metadata::keys;
use edadm_format::{DType, MappedModel, ModelFile};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

const GOLDEN: [(&str, bool); 2] = [("tiny-fp32.edq", false), ("tiny-w4a8.edq", true)];

#[test]
fn writer_reproduces_golden_files_byte_for_byte() {
    for (name, quantized) in GOLDEN {
        let bytes = common::tiny_model(quantized).to_bytes().unwrap();
        let path = golden_path(name);
        if std::env::var_os("EDADM_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(i) = bytes.iter().zip(&golden).position(|(a, b)| a != b) {
            panic!("{name}: writer output differs from the golden file at byte {i}");
        }
        assert_eq!(bytes.len(), golden.len(), "{name}: length differs from the golden file");
    }
}

#[test]
fn golden_fp32_decodes_to_known_contents() {
    let f = MappedModel::open(golden_path("tiny-fp32.edq")).unwrap();
    f.verify().unwrap();
    let h = f.header();
    assert_eq!((h.version_major, h.version_minor, h.alignment), (1, 0, 64));
    assert_eq!(h.file_length as usize, f.bytes().len());
    assert_eq!(f.metadata().get_str(keys::MODEL_FAMILY), Some("ddpm"));
    assert_eq!(f.metadata().get_u64(keys::SCHEDULE_TIMESTEPS), Some(10));
    assert_eq!(f.metadata().get_f64_array(keys::SCHEDULE_BETAS).map(<[f64]>::len), Some(10));
    assert_eq!(f.metadata().get("test.i64"), Some(&(-7i64).into()));

    let g = f.graph();
    assert_eq!(g.nodes.len(), 32);
    assert_eq!(g.units.len(), 7);
    assert!(g.nodes.iter().all(|n| n.quant.is_none()));
    let codes: std::collections::BTreeSet<u16> = g.nodes.iter().map(|n| n.op.code()).collect();
    assert_eq!(codes, (0..17).collect(), "the fixture uses every op kind");

    // Typed zero-copy views over the mapping.
    let w = f.tensor_by_name("conv_in.weight").unwrap();
    assert_eq!((w.dtype, w.shape), (DType::F32, &[4u64, 1, 3, 3][..]));
    let v = w.as_f32().unwrap();
    assert_eq!(v.len(), 36);
    assert_eq!(v.as_ptr() as usize % 64, 0, "tensor data is 64-byte aligned in the mapping");
    assert!(v.iter().all(|x| x.abs() <= 0.5));
    assert!(w.as_i8().is_err(), "a typed view checks the dtype");
    let h16 = f.tensor_by_name("extra.f16").unwrap().as_f16().unwrap();
    assert_eq!([h16[0].to_f32(), h16[1].to_f32()], [1.0, -2.0]);
    assert_eq!(f.tensor_by_name("extra.i32").unwrap().as_i32().unwrap(), &[1, 2, 3]);
    assert_eq!(f.tensor_by_name("extra.u8").unwrap().as_u8().unwrap(), &[1, 2, 3, 4]);
    let empty = f.tensor_by_name("extra.empty").unwrap();
    assert_eq!((empty.numel(), empty.data.len()), (0, 0));
    assert!(f.tensor_by_name("missing").is_none());
    // Every id a node refers to resolves.
    for n in &g.nodes {
        for (_, t) in n.op.tensor_refs() {
            assert!(f.tensor(t).is_some());
        }
    }
}

#[test]
fn golden_w4a8_decodes_to_known_contents() {
    let bytes = std::fs::read(golden_path("tiny-w4a8.edq")).unwrap();
    let f = ModelFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    assert_eq!(f.metadata().get_str(keys::QUANT_METHOD), Some("eda-dm"));
    assert_eq!(f.metadata().get_bool(keys::QUANT_SPLIT), Some(true));
    let g = f.graph();
    let node = |name: &str| g.nodes.iter().find(|n| n.name == name).unwrap();

    // 4-bit conv_in: packed nibbles, two per byte.
    let conv_in = node("conv_in");
    let Some(NodeQuant::Weight(q)) = &conv_in.quant else { panic!("conv_in is quantized") };
    assert_eq!(q.weight_bits, 4);
    let w = f.tensor(conv_in.op.weight().unwrap()).unwrap();
    assert_eq!((w.dtype, w.data.len()), (DType::I4, 18));
    assert!(w.as_i4_packed().is_ok());

    // The split skip conv has two groups with their own scales and input quantizers.
    let Some(NodeQuant::Weight(q)) = &node("up.skip").quant else { panic!("up.skip is quantized") };
    assert_eq!(q.groups.len(), 2);
    assert_eq!(q.groups[1].channel_start, 4);
    assert_eq!(q.groups[1].input.unwrap().delta, 0.1);
    assert_ne!(q.groups[0].weight_scales, q.groups[1].weight_scales);
    assert_eq!(f.tensor(q.groups[1].weight_scales).unwrap().shape, &[4]);

    // The output conv keeps an f32 input.
    let Some(NodeQuant::Weight(q)) = &node("conv_out").quant else { panic!("conv_out is quantized") };
    assert_eq!((q.weight_bits, q.groups[0].input), (8, None));

    // Attention carries its four quantizers.
    let Some(NodeQuant::Attention(a)) = &node("attn.attention").quant else { panic!("attention is quantized") };
    assert_eq!((a.prob.zero_point, a.prob.bits, a.v.delta), (0, 8, 0.2));
    assert_eq!(node("attn.attention").unit, Some(UnitId(3)));
}

/// Only regular files are opened: a directory and a FIFO are refused at once (opening a FIFO
/// for reading would block until a writer appeared).
#[test]
fn only_regular_files_are_opened() {
    let dir = std::env::temp_dir().join(format!("edq-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = MappedModel::open(&dir).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let fifo = dir.join("fifo");
    match std::process::Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => {
            let e = MappedModel::open(&fifo).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        _ => println!("skipped: the FIFO case (no mkfifo here)"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
