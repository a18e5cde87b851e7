//! Sessions on the format crate's golden tiny models: every kernel tier computes the same
//! thing, impossible requests and inputs are errors, quantized graphs run on the integer kernels.

use edadm_kernels::Tier;
use edadm_runtime::{Model, RuntimeError, Session, SessionOptions};

fn golden(name: &str) -> String {
    format!("{}/../formats/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn inputs(batch: usize) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..batch * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let t: Vec<f32> = (0..batch).map(|i| (i * 3 % 10) as f32).collect();
    (x, t)
}

#[test]
fn every_kernel_tier_computes_the_same_outputs() {
    tiers_agree("tiny-fp32.edq");
}

#[test]
fn quantized_graphs_run_through_the_integer_kernels_alike_on_every_tier() {
    // W4A8 with 8-bit first/last layers, quantized attention and a split skip conv.
    tiers_agree("tiny-w4a8.edq");
}

fn tiers_agree(file: &str) {
    let model = Model::open(golden(file)).unwrap();
    let (x, t) = inputs(3);
    let mut reference: Option<Vec<f32>> = None;
    for &tier in Tier::compiled() {
        let opts = SessionOptions { tier: Some(tier), ..SessionOptions::batch(3) };
        let mut s = match Session::new(&model, &opts) {
            Ok(s) => s,
            Err(RuntimeError::Kernels(_)) => {
                println!("skipped: {} (this CPU lacks it)", tier.name());
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let out = s.run(&x, &t).unwrap().to_vec();
        assert!(out.iter().all(|v| v.is_finite()));
        match &reference {
            None => reference = Some(out),
            Some(r) => {
                let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let err = r.iter().zip(&out).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
                assert!(err < 1e-5, "{} differs from the reference by {err}", tier.name());
            }
        }
    }
}

#[test]
fn every_thread_count_computes_the_same_bits() {
    for file in ["tiny-fp32.edq", "tiny-w4a8.edq"] {
        let model = Model::open(golden(file)).unwrap();
        for batch in [1, 3] {
            let (x, t) = inputs(batch);
            let mut one = Session::new(&model, &SessionOptions::batch(batch)).unwrap();
            let want = one.run(&x, &t).unwrap().to_vec();
            // Every step split (the small ones too, which by default run on one thread).
            for threads in [2, 3, 5] {
                let opts = SessionOptions { threads, split_small_steps: true, ..SessionOptions::batch(batch) };
                let mut s = Session::new(&model, &opts).unwrap();
                assert_eq!(s.threads(), threads);
                for _ in 0..2 {
                    let got = s.run(&x, &t).unwrap();
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{file}, batch {batch}: {threads} threads differ from one"
                    );
                }
            }
        }
        let e = Session::new(&model, &SessionOptions { threads: 0, ..SessionOptions::batch(1) }).unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
        // Sizes that would overflow the planner's arithmetic are refused before it runs.
        for opts in [
            SessionOptions::batch(0),
            SessionOptions::batch(usize::MAX),
            SessionOptions { height: Some(1 << 40), ..SessionOptions::batch(1) },
            SessionOptions { width: Some(0), ..SessionOptions::batch(1) },
        ] {
            let e = Session::new(&model, &opts).unwrap_err().to_string();
            assert!(e.contains("batch") || e.contains("side"), "{e}");
        }
        let cuda = SessionOptions { device: edadm_runtime::Device::Cuda(0), ..SessionOptions::batch(1) };
        assert!(matches!(Session::new(&model, &cuda), Err(RuntimeError::BackendUnavailable { .. })));
    }
}

#[test]
fn fused_steps_compute_the_bits_of_the_separate_ones() {
    // Keeping every value readable disables the fusions (a fused value has other readers), so
    // the two sessions run the same graph with and without them.
    let model = Model::open(golden("tiny-w4a8.edq")).unwrap();
    let all: Vec<edadm_format::graph::ValueId> =
        (0..model.graph().num_values).map(edadm_format::graph::ValueId).collect();
    for (batch, threads) in [(1, 1), (3, 1), (3, 2)] {
        let (x, t) = inputs(batch);
        let opts = SessionOptions { threads, ..SessionOptions::batch(batch) };
        let mut fused = Session::new(&model, &opts).unwrap();
        let variants: Vec<String> = fused.steps().into_iter().map(|s| s.variant).collect();
        assert!(variants.iter().any(|v| v.contains("+ residual")), "{variants:?}");
        assert!(variants.iter().any(|v| v.contains("+ channel offsets")), "{variants:?}");
        let mut plain = Session::new(&model, &SessionOptions { keep: all.clone(), ..opts.clone() }).unwrap();
        let fused_add = |v: &str| v.contains("+ residual") || v.contains("+ channel offsets");
        assert!(plain.steps().iter().all(|s| !fused_add(&s.variant)), "fusions with every value kept");
        assert!(plain.num_steps() > fused.num_steps());
        let want = plain.run(&x, &t).unwrap().to_vec();
        let got = fused.run(&x, &t).unwrap();
        assert!(
            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "batch {batch}, {threads} threads: fused and separate steps differ"
        );
    }
}

#[test]
fn batches_are_independent() {
    let model = Model::open(golden("tiny-fp32.edq")).unwrap();
    let (x, t) = inputs(3);
    let mut s3 = Session::new(&model, &SessionOptions::batch(3)).unwrap();
    let all = s3.run(&x, &t).unwrap().to_vec();
    let mut s1 = Session::new(&model, &SessionOptions::batch(1)).unwrap();
    for i in 0..3 {
        let one = s1.run(&x[i * 64..(i + 1) * 64], &t[i..i + 1]).unwrap();
        assert_eq!(one, &all[i * 64..(i + 1) * 64]);
    }
}

#[test]
fn impossible_requests_and_inputs_are_errors() {
    let model = Model::open(golden("tiny-fp32.edq")).unwrap();
    let e = Session::new(&model, &SessionOptions::batch(0)).unwrap_err();
    assert!(matches!(e, RuntimeError::Session(_)), "{e}");
    // The graph's LayerNorm over (C, H, W) fixes the size at 8×8.
    let e = Session::new(&model, &SessionOptions { height: Some(16), width: Some(16), ..SessionOptions::batch(1) })
        .unwrap_err();
    assert!(matches!(&e, RuntimeError::Shape { node, .. } if node == "up.ln"), "{e}");
    let e = Session::new(&model, &SessionOptions { height: Some(1), width: Some(1), ..SessionOptions::batch(1) })
        .unwrap_err();
    assert!(matches!(e, RuntimeError::Shape { .. }), "{e}");
    let mut s = Session::new(&model, &SessionOptions::batch(2)).unwrap();
    assert!(matches!(s.run(&[0.0; 10], &[1.0, 2.0]), Err(RuntimeError::Input(_))));
    assert!(matches!(s.run(&[0.0; 128], &[1.0]), Err(RuntimeError::Input(_))));
    // The stored timestep table has 10 rows: t = 10 or 2.5 cannot index it.
    let e = s.run(&[0.0; 128], &[1.0, 10.0]).unwrap_err();
    assert!(e.to_string().contains("temb2"), "{e}");
    assert!(s.run(&[0.0; 128], &[1.0, 2.5]).is_err());
}

#[test]
fn bad_files_are_format_errors() {
    let e = Model::open("/nonexistent.edq").unwrap_err();
    assert!(matches!(e, RuntimeError::Format(_)), "{e}");
    let mut bytes = std::fs::read(golden("tiny-fp32.edq")).unwrap();
    bytes.truncate(1000);
    assert!(matches!(Model::from_bytes(bytes), Err(RuntimeError::Format(_))));
    // One weight byte changed, its checksum left stale: refused at open (one CRC pass), never
    // run into an image.
    let mut bytes = std::fs::read(golden("tiny-fp32.edq")).unwrap();
    let f = edadm_format::ModelFile::parse(&bytes[..]).unwrap();
    let t = f.tensors().find(|t| !t.data.is_empty()).unwrap().file_offset as usize;
    bytes[t] ^= 0x40;
    let e = Model::from_bytes(bytes).unwrap_err();
    assert!(matches!(&e, RuntimeError::Format(edadm_format::FormatError::TensorChecksum { .. })), "{e}");
}
