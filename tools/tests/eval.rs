//! `edadm eval`: fidelity to the FP model on the tiny fixtures, FID with the shared Inception
//! network when `../shared` is present, and one-line errors.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn edadm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edadm")).args(args).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn shared() -> Option<PathBuf> {
    let p = std::env::var_os("EDADM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    p.join("models").is_dir().then_some(p)
}

fn golden(name: &str) -> String {
    format!("{}/../formats/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fidelity_of_a_quantized_model_to_its_fp_model() {
    let d = scratch("fidelity");
    let cache = d.join("cache");
    let out = d.join("out");
    let args = |model: &str, batch: &str| -> Vec<String> {
        [
            "eval",
            "--model",
            model,
            "--fp",
            &golden("tiny-fp32.edq"),
            "-n",
            "5",
            "--steps",
            "5",
            "--batch",
            batch,
            "--eps-images",
            "3",
            "--json",
            "--cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: Vec<String>| json(&edadm(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let q = run(args(&golden("tiny-w4a8.edq"), "2"));
    let psnr = q["psnr_vs_fp_db"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 0.0, "{q}");
    let mse = q["eps_mse_per_step"].as_array().unwrap();
    assert_eq!(mse.len(), 5, "one ε-MSE per DDIM step");
    assert!(mse.iter().all(|v| v.as_f64().unwrap() > 0.0), "W4A8 differs from f32 at every step: {q}");
    for f in ["samples.idx", "samples.png", "fp.idx", "fp.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The FP model's and the model's samples were cached; a different batch reads them back
    // (noise is per image).
    let count = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(count(), 2);
    assert_eq!(q["model"]["cached"], false, "{q}");
    let q2 = run(args(&golden("tiny-w4a8.edq"), "2"));
    assert_eq!(q2["model"]["cached"], true, "{q2}");
    assert_eq!(q2["psnr_vs_fp_db"], q["psnr_vs_fp_db"]);
    // Sampled again (no cache) at another batch: the same images (noise is per image).
    let mut fresh = args(&golden("tiny-w4a8.edq"), "3");
    fresh.push("--no-cache".into());
    let q3 = run(fresh);
    assert_eq!(q3["model"]["cached"], false, "{q3}");
    assert!((q3["psnr_vs_fp_db"].as_f64().unwrap() - psnr).abs() < 1e-3, "batch-independent: {q} vs {q3}");
    // The FP model against itself: identical samples and outputs; as `--model` it reads the
    // samples it cached as `--fp`.
    let same = run(args(&golden("tiny-fp32.edq"), "2"));
    assert_eq!(same["model"]["cached"], true, "{same}");
    assert_eq!(count(), 2);
    assert!(same["eps_mse_per_step"].as_array().unwrap().iter().all(|v| v.as_f64() == Some(0.0)), "{same}");
    assert!(same["psnr_vs_fp_db"].is_null() || same["psnr_vs_fp_db"].as_f64().unwrap() > 100.0, "{same}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_errors_are_one_line() {
    let m = golden("tiny-w4a8.edq");
    let fp = golden("tiny-fp32.edq");
    assert_one_line_error(&edadm(&["eval", "--model", "/nonexistent.edq", "--fp", &fp]), "/nonexistent.edq");
    assert_one_line_error(&edadm(&["eval", "--model", &m]), "nothing to measure");
    assert_one_line_error(&edadm(&["eval", "--model", &m, "--reference", &fp]), "--inception");
    assert_one_line_error(&edadm(&["eval", "--model", &m, "--fp", &fp, "-n", "0"]), "-n");
    // A malformed value is rejected by the argument parser (exit 2, with its usage line).
    let bad = edadm(&["eval", "--model", &m, "--fp", &fp, "--crop", "2,x"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("--crop") && !err.contains("panicked"), "{err}");
    assert_one_line_error(&edadm(&["eval", "--model", &m, "--fp", &fp, "--crop", "99"]), "larger than");
    let d = scratch("errors");
    let junk = d.join("junk.pt");
    std::fs::write(&junk, b"not a zip").unwrap();
    let j = junk.to_str().unwrap();
    assert_one_line_error(&edadm(&["eval", "--samples", &m, "--reference", &m, "--inception", j]), "junk.pt");
    // A sample file that is not IDX, with a valid-looking network path.
    let imgs = d.join("imgs.idx");
    std::fs::write(&imgs, b"\0\0\x08\x03\0\0\0\x05").unwrap();
    let out = edadm(&["eval", "--samples", imgs.to_str().unwrap(), "--reference", j, "--inception", j]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

/// The first `n` MNIST test images as an uncompressed IDX file.
fn mnist_subset(shared: &Path, skip: usize, n: usize, to: &Path) {
    let gz = std::fs::File::open(shared.join("data/mnist/t10k-images-idx3-ubyte.gz")).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).unwrap();
    let mut idx = vec![0u8, 0, 8, 3];
    idx.extend((n as u32).to_be_bytes());
    idx.extend(28u32.to_be_bytes());
    idx.extend(28u32.to_be_bytes());
    idx.extend(&raw[16 + skip * 784..16 + (skip + n) * 784]);
    std::fs::write(to, idx).unwrap();
}

#[test]
fn fid_with_the_shared_inception_network() {
    let Some(shared) = shared() else {
        println!("skipped: fid_with_the_shared_inception_network (no shared models)");
        return;
    };
    let inc = shared.join("models/fid-inception/inception-2015-12-05.pt");
    if !inc.is_file() {
        println!("skipped: fid_with_the_shared_inception_network (no {})", inc.display());
        return;
    }
    let d = scratch("fid");
    let (a, b, c) = (d.join("a.idx"), d.join("b.idx"), d.join("c.idx"));
    mnist_subset(&shared, 0, 12, &a);
    mnist_subset(&shared, 12, 12, &b);
    mnist_subset(&shared, 0, 12, &c);
    let cache = d.join("cache");
    let stats = d.join("ref.safetensors");
    let fid = |samples: &Path, reference: &Path, extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--samples",
            samples.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--inception",
            inc.to_str().unwrap(),
            "--json",
            "--cache",
            cache.to_str().unwrap(),
        ];
        args.extend(extra);
        json(&edadm(&args))["fid"]["value"].as_f64().unwrap()
    };
    let other = fid(&b, &a, &["--save-ref-stats", stats.to_str().unwrap()]);
    assert!(stats.is_file() && std::fs::read_dir(&cache).unwrap().count() == 1);
    // Two different sets of digits are far apart; a set and its copy are not.
    let itself = fid(&c, &a, &[]);
    assert!(other > 10.0 && itself.abs() < 1e-3 * other, "different {other}, same {itself}");
    // Statistics from the file, and from the cache, give the same distance.
    assert!((fid(&b, &stats, &[]) - other).abs() < 1e-9);
    assert!((fid(&b, &a, &["--no-cache"]) - other).abs() < 1e-6);
    std::fs::remove_dir_all(&d).unwrap();
}
