//! `train`: on a tiny DDPM (8 channels) and synthetic 28×28 images (bars and blocks), the loss
//! falls, a resumed run equals an uninterrupted one, the exported file loads and runs in the
//! runtime, and bad inputs are clear errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use edadm_quantizer::import::{Family, ImportOptions, import};
use edadm_quantizer::train::{Images, TrainConfig, export, train};
use edadm_runtime::{Model, Session, SessionOptions};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` 28×28 images: a bright bar or block at a position that depends on the index.
fn idx_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    for i in 0..n {
        for y in 0..28 {
            for x in 0..28 {
                let on = if i % 2 == 0 { (x + i) % 28 / 6 == 2 } else { y > 8 + i % 7 && y < 18 && x > 6 && x < 22 };
                b.push(if on { 230 } else { 0 });
            }
        }
    }
    b
}

fn tiny_model() -> Model {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-ddpm.json");
    let opts = ImportOptions { config: Some(cfg), random: Some(7), ..Default::default() };
    let imported = import(Family::Ddpm, Path::new(""), &opts).unwrap();
    Model::from_bytes(imported.file.to_bytes().unwrap()).unwrap()
}

#[test]
fn training_lowers_the_loss_resumes_exactly_and_exports_a_runnable_model() {
    let d = scratch("run");
    let raw = d.join("images-idx3-ubyte");
    std::fs::write(&raw, idx_bytes(40)).unwrap();
    let gz = d.join("images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&idx_bytes(40)).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let images = Images::read_idx(&gz).unwrap();
    assert_eq!((images.n, images.h, images.w), (40, 28, 28));
    assert_eq!(images.pixels, Images::read_idx(&raw).unwrap().pixels);

    let model = tiny_model();
    let cfg = TrainConfig { steps: 60, batch: 4, lr: 3e-3, ema: 0.9, ..TrainConfig::default() };
    let mut first = Vec::new();
    let full = train(&model, &images, &cfg, &d.join("a.ckpt"), 0, false, &mut |_, l| first.push(l)).unwrap();
    assert_eq!(full.steps_run, 60);
    assert_eq!(full.losses.len(), 1);
    let (early, late) = (first[..15].iter().sum::<f64>() / 15.0, first[45..].iter().sum::<f64>() / 15.0);
    assert!(late < 0.8 * early, "loss {early} → {late}");

    // Interrupted after 40 steps (checkpoint every 20), then resumed: the same EMA weights.
    let short = cfg.clone();
    let ck = d.join("b.ckpt");
    let mut n = 0;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(&model, &images, &short, &ck, 20, false, &mut |s, _| {
            n = s;
            assert!(s < 50, "interrupt");
        })
    }));
    assert!(r.is_err() && n == 50);
    // Resuming with fewer steps than the checkpoint is an error; with exactly its steps, it
    // exports without training.
    let e = train(&model, &images, &TrainConfig { steps: 30, ..short.clone() }, &ck, 20, true, &mut |_, _| {});
    assert!(e.unwrap_err().to_string().contains("beyond --steps"));
    let at40 =
        train(&model, &images, &TrainConfig { steps: 40, ..short.clone() }, &ck, 20, true, &mut |_, _| {}).unwrap();
    assert_eq!(at40.steps_run, 0);
    let resumed = train(&model, &images, &short, &ck, 20, true, &mut |_, _| {}).unwrap();
    assert_eq!(resumed.steps_run, 20);
    for (id, w) in &full.ema {
        let r = &resumed.ema[id];
        let err = w.iter().zip(r).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-4, "tensor {id:?} differs by {err} after resuming");
    }
    // Another run's checkpoint is refused; an existing one without resume too.
    let other = TrainConfig { lr: 1e-3, ..short.clone() };
    let e = train(&model, &images, &other, &ck, 20, true, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("another training run"), "{e}");
    let e = train(&model, &images, &short, &ck, 20, false, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");

    // The exported model runs in the runtime and predicts noise better than its initialisation.
    let bytes = export(&model, &full.ema, vec![], false).unwrap();
    let len32 = bytes.len();
    let trained = Model::from_bytes(bytes).unwrap();
    let mut s = Session::new(&trained, &SessionOptions::batch(2)).unwrap();
    let x: Vec<f32> = (0..s.sample_len()).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let y = s.run(&x, &[10.0, 900.0]).unwrap().to_vec();
    assert!(y.iter().all(|v| v.is_finite()));
    // Stored in f16: smaller, and the same network to f16 precision.
    let bytes16 = export(&model, &full.ema, vec![], true).unwrap();
    assert!(bytes16.len() < len32 * 3 / 4, "{} vs {len32}", bytes16.len());
    let half = Model::from_bytes(bytes16).unwrap();
    assert!(half.file().tensors().any(|t| t.dtype == edadm_format::DType::F16));
    let mut s16 = Session::new(&half, &SessionOptions::batch(2)).unwrap();
    let y16 = s16.run(&x, &[10.0, 900.0]).unwrap();
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = y.iter().zip(y16).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err > 0.0 && err < 1e-2 * scale, "f16 export differs by {err} (outputs up to {scale})");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = scratch("bad");
    let p = d.join("x");
    std::fs::write(&p, b"not an idx file at all").unwrap();
    let e = Images::read_idx(&p).unwrap_err().to_string();
    assert!(e.contains("IDX") && e.contains(p.to_str().unwrap()), "{e}");
    let mut short = idx_bytes(3);
    short.truncate(100);
    std::fs::write(&p, short).unwrap();
    assert!(Images::read_idx(&p).unwrap_err().to_string().contains("bytes"));
    assert!(Images::read_idx(&d.join("missing")).unwrap_err().to_string().contains("missing"));
    let images = Images { pixels: vec![0; 40 * 40], n: 1, h: 40, w: 40 };
    let e = train(&tiny_model(), &images, &TrainConfig::default(), &d.join("c"), 0, false, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
