//! `edadm import` and `edadm sample` end to end, and their one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn edadm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edadm")).args(args).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-cli-{name}-{}", std::process::id()));
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

/// Exit status `code`, exactly one line on stderr, no panic.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn png_size(path: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let r = dec.read_info().unwrap();
    (r.info().width, r.info().height)
}

#[test]
fn sample_writes_a_grid_and_a_npy_array() {
    let d = scratch("sample");
    let grid = d.join("g.png");
    let raw = d.join("x.npy");
    let out = edadm(&[
        "sample",
        &golden("tiny-fp32.edq"),
        "-n",
        "5",
        "--steps",
        "4",
        "--sampler",
        "ddim",
        "--skip",
        "quad",
        "--seed",
        "3",
        "--batch",
        "2",
        "--scale",
        "1",
        "-o",
        grid.to_str().unwrap(),
        "--raw",
        raw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("5 samples") && s.contains("ms per step"), "{s}");
    // 5 images of 8×8 in a 3×2 grid with 2-pixel borders.
    assert_eq!(png_size(&grid), (3 * 10 + 2, 2 * 10 + 2));
    let npy = std::fs::read(&raw).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert!(String::from_utf8_lossy(&npy[10..10 + header_len]).contains("'shape': (5, 1, 8, 8)"));
    assert_eq!(npy.len(), 10 + header_len + 5 * 64 * 4);
    // Same seed, different batch size: the same images.
    let raw2 = d.join("y.npy");
    let out = edadm(&[
        "sample",
        &golden("tiny-fp32.edq"),
        "-n",
        "5",
        "--steps",
        "4",
        "--sampler",
        "ddim",
        "--skip",
        "quad",
        "--seed",
        "3",
        "--batch",
        "5",
        "-o",
        d.join("g2.png").to_str().unwrap(),
        "--raw",
        raw2.to_str().unwrap(),
        "--noise-out",
        d.join("z5.npy").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&raw2).unwrap(), npy, "noise is per image, not per batch");
    // The initial noise: one standard normal draw per element, the first 2 images the same
    // whatever the batch or the count.
    let z5 = std::fs::read(d.join("z5.npy")).unwrap();
    assert_eq!(z5.len(), npy.len());
    let vals: Vec<f32> =
        z5[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mean = vals.iter().sum::<f32>() / vals.len() as f32;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / vals.len() as f32;
    assert!(mean.abs() < 0.2 && (var - 1.0).abs() < 0.25, "mean {mean} var {var}");
    let z2 = d.join("z2.npy");
    let out = edadm(&[
        "sample",
        &golden("tiny-fp32.edq"),
        "-n",
        "2",
        "--steps",
        "1",
        "--seed",
        "3",
        "-o",
        d.join("g3.png").to_str().unwrap(),
        "--noise-out",
        z2.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let z2 = std::fs::read(&z2).unwrap();
    let h2 = u16::from_le_bytes([z2[8], z2[9]]) as usize;
    assert_eq!(z2[10 + h2..], z5[10 + header_len..10 + header_len + 2 * 64 * 4]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_reports_latency_memory_and_kernels() {
    let m = golden("tiny-w4a8.edq");
    let out =
        edadm(&["bench", &m, "--batch", "2", "--runs", "3", "--steps", "2", "--threads", "2", "--json", "--profile"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quantized"], true);
    assert_eq!(v["threads"], 2);
    let e = &v["eval_ms"];
    assert!(e["min"].as_f64().unwrap() <= e["median"].as_f64().unwrap());
    assert!(e["median"].as_f64().unwrap() <= e["max"].as_f64().unwrap());
    assert!(v["sampling"]["ms_per_step"].as_f64().unwrap() > 0.0);
    let mem = &v["memory"];
    assert_eq!(mem["file_bytes"].as_u64().unwrap(), std::fs::metadata(&m).unwrap().len());
    assert!(mem["peak_rss_bytes"].as_u64().unwrap() > mem["arena_bytes"].as_u64().unwrap());
    let variants = v["variants"].as_array().unwrap();
    assert!(variants.iter().any(|x| x["op"] == "conv u8×i8"), "{variants:?}");
    let profile = v["profile"].as_array().unwrap();
    assert!(profile.iter().any(|x| x["op"] == "attention u8×i8" && x["macs"].as_u64().unwrap() > 0));
    // Text output, and sampling on two threads gives the same image as on one.
    let text = edadm(&["bench", &m, "--runs", "2", "--steps", "0"]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("evaluation: median") && t.contains("peak RSS") && t.contains("kernels per op"), "{t}");
    let d = scratch("bench");
    let (a, b) = (d.join("a.npy"), d.join("b.npy"));
    for (threads, raw) in [("1", &a), ("2", &b)] {
        let o = d.join("g.png");
        let r = edadm(&[
            "sample",
            &m,
            "-n",
            "3",
            "--steps",
            "4",
            "--threads",
            threads,
            "-o",
            o.to_str().unwrap(),
            "--raw",
            raw.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_one_line_error(&edadm(&["bench", "/nonexistent.edq"]), 1, "/nonexistent.edq");
    assert_one_line_error(&edadm(&["bench", &m, "--threads", "0"]), 1, "--threads");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn demo_runs_the_whole_pipeline_on_a_tiny_model() {
    let d = scratch("demo");
    let m = d.join("tiny.edq");
    let cfg = format!("{}/../quantizer/tests/data/tiny-ddpm.json", env!("CARGO_MANIFEST_DIR"));
    let imp =
        edadm(&["import", "--family", "ddpm", "--config", &cfg, "--random-weights", "3", "-o", m.to_str().unwrap()]);
    assert!(imp.status.success(), "{}", String::from_utf8_lossy(&imp.stderr));
    let out = d.join("out");
    let r = edadm(&[
        "demo",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-n",
        "4",
        "--steps",
        "4",
        "--n-calib",
        "16",
        "--calib-steps",
        "5",
        "--iters",
        "2",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("PSNR W8A8 vs f32") && text.contains("ms/step"), "{text}");
    for f in ["fp32.png", "w8a8.png", "side-by-side.png", "model-w8a8.edq", "report.json", "report.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Side by side: twice as wide as one grid.
    let (w1, h1) = png_size(&out.join("fp32.png"));
    let (w2, h2) = png_size(&out.join("side-by-side.png"));
    assert_eq!(h1, h2);
    assert!(w2 > 2 * w1 - 10 && w2 <= 2 * w1, "{w1} vs {w2}");
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(rep["psnr_w8a8_vs_f32_db"].as_f64().unwrap() > 0.0);
    assert!(rep["file_bytes"]["w8a8"].as_f64().unwrap() < rep["file_bytes"]["f32"].as_f64().unwrap());
    assert_one_line_error(
        &edadm(&["demo", "--model", "/nonexistent.edq", "--out", out.to_str().unwrap()]),
        1,
        "/nonexistent.edq",
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn quantize_with_each_activation_initialisation() {
    let d = scratch("act-init");
    let calib = d.join("c.safetensors");
    let model = golden("tiny-fp32.edq");
    let c = edadm(&[
        "calibrate",
        &model,
        "--calib",
        "random",
        "--n-calib",
        "16",
        "--steps",
        "5",
        "-o",
        calib.to_str().unwrap(),
    ]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    // TDAC's ε: by default the median of the measured step-pair distances (inside their range,
    // so the density weighs the steps); the official value stays selectable; a bad one is an error.
    let tdac = d.join("t.safetensors");
    let ddpm = d.join("tiny-ddpm.edq");
    let cfg = format!("{}/../quantizer/tests/data/tiny-ddpm.json", env!("CARGO_MANIFEST_DIR"));
    let imp = ["import", "--family", "ddpm", "--config", &cfg, "--random-weights", "3", "-o", ddpm.to_str().unwrap()];
    assert!(edadm(&imp).status.success());
    let cal = |eps: &[&str]| {
        let base =
            ["calibrate", ddpm.to_str().unwrap(), "--n-calib", "8", "--steps", "5", "-o", tdac.to_str().unwrap()];
        edadm(&[&base[..], eps].concat())
    };
    let r = cal(&[]);
    let text = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(r.status.success() && text.contains("(the median step-pair distance)"), "{text}");
    let num = |s: &str| s.parse::<f64>().unwrap();
    let line = text.lines().find(|l| l.starts_with("TDAC: ε")).unwrap().replace(',', " ");
    let w: Vec<&str> = line.split_whitespace().collect();
    let (eps, lo, hi) = (num(w[2]), num(w[9]), num(w[11]));
    assert!(lo <= eps && eps <= hi && lo < hi, "{line}");
    let r = cal(&["--eps", "3"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("TDAC: ε 3.0000e0,"));
    std::fs::remove_file(&tdac).unwrap();
    assert_one_line_error(&cal(&["--eps", "banana"]), 1, "--eps banana");
    assert!(!tdac.exists());
    let mut deltas = Vec::new();
    for (init, extra, label) in [
        ("mse", None, "mse"),
        ("mse-asym", None, "mse-asym"),
        ("minmax", None, "minmax"),
        ("percentile", Some("99.9"), "percentile 99.9"),
    ] {
        let out = d.join(format!("q-{init}.edq"));
        let mut args = vec![
            "quantize",
            model.as_str(),
            "--calib-set",
            calib.to_str().unwrap(),
            "--recon",
            "none",
            "--holdout",
            "8",
            "--act-init",
            init,
            // conv_in reads x_t: quantize its input to compare the initialisations on it.
            "--fp-input-layer",
            "false",
            "-o",
            out.to_str().unwrap(),
        ];
        if let Some(p) = extra {
            args.extend(["--act-percentile", p]);
        }
        let r = edadm(&args);
        assert!(r.status.success(), "{init}: {}", String::from_utf8_lossy(&r.stderr));
        let info = edadm(&["inspect", out.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["metadata"]["quant.act_init"], label);
        let conv_in = v["graph"]["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "conv_in").unwrap();
        deltas.push(conv_in["act_quant"][0]["input"]["delta"].as_f64().unwrap());
    }
    // MinMax spans [min, max]: at least what the asymmetric search keeps, more than the 99.9 %
    // percentiles; the symmetric search spans [−r, r] around zero.
    assert!(deltas[2] >= deltas[1] * 0.999 && deltas[2] > deltas[3], "{deltas:?}");
    let bad = d.join("bad.edq");
    let base =
        ["quantize", model.as_str(), "--calib-set", calib.to_str().unwrap(), "--recon", "none", "--holdout", "8"];
    let with = |extra: &[&str]| edadm(&[&base[..], extra, &["-o", bad.to_str().unwrap()]].concat());
    assert_one_line_error(&with(&["--act-init", "percentile", "--act-percentile", "40"]), 1, "--act-percentile 40");
    assert!(!bad.exists());
    assert_one_line_error(&with(&["--act-init", "mse", "--act-percentile", "99.9"]), 1, "--act-percentile");
    assert!(!bad.exists());
    // The default recipe (docs/RESULTS.md): no reconstruction at 8-bit weights, percentile
    // 99.999, corrected biases, an f32 output layer, one table for every step (a minor-0 file);
    // at 4-bit weights GPTQ rounding and four measured 8-bit layers, no reconstruction.
    let def = d.join("default.edq");
    let plain = ["quantize", model.as_str(), "--calib-set", calib.to_str().unwrap(), "--holdout", "8"];
    let r = edadm(&[&plain[..], &["-o", def.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let meta = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&edadm(&["inspect", p.to_str().unwrap(), "--json"]).stdout).unwrap()
    };
    let w4 = d.join("w4.edq");
    let r = edadm(&[&plain[..], &["--wbits", "4", "-o", w4.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v4 = meta(&w4);
    assert_eq!(v4["metadata"]["quant.reconstruction"], "none");
    assert_eq!(v4["metadata"]["quant.weight_round"], "gptq");
    assert_eq!(v4["metadata"]["quant.w8_auto"], 12);
    // The layers the ranking chose (twelve, or every one below 8 bits when the model has fewer)
    // keep 8-bit weights, and the progress names them.
    let chosen: Vec<&str> = v4["metadata"]["quant.w8_layers"].as_str().unwrap().split(',').collect();
    let bits: Vec<u64> =
        v4["graph"]["nodes"].as_array().unwrap().iter().filter_map(|n| n["weight_bits"].as_u64()).collect();
    assert!(chosen.len() == 12 || (chosen.len() < 12 && !bits.contains(&4)), "{chosen:?} {bits:?}");
    for name in &chosen {
        let n = v4["graph"]["nodes"].as_array().unwrap().iter().find(|n| n["name"] == *name).unwrap();
        assert_eq!(n["weight_bits"], 8, "{n}");
    }
    assert!(String::from_utf8_lossy(&r.stderr).contains(&format!("8-bit weights for {}", chosen.join(", "))));
    // Block-wise reconstruction at 4 bits when asked, without the 8-bit layers when asked.
    let r = edadm(
        &[
            &plain[..],
            &["--wbits", "4", "--recon", "block", "--iters", "2", "--w8-auto", "0", "-o", w4.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let vb = meta(&w4);
    assert_eq!(vb["metadata"]["quant.reconstruction"], "block");
    assert_eq!(vb["metadata"]["quant.w8_layers"], "");
    assert!(vb["graph"]["nodes"].as_array().unwrap().iter().any(|n| n["weight_bits"] == 4), "{vb}");
    // 7-bit weights: no reconstruction by default, a minor-2 file; widths outside 4–8 refused
    // with one line and no output.
    let w7 = d.join("w7.edq");
    let r = edadm(&[&plain[..], &["--wbits", "7", "-o", w7.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(meta(&w7)["metadata"]["quant.reconstruction"], "none");
    assert_eq!(meta(&w7)["header"]["version"], "1.2");
    let w9 = d.join("w9.edq");
    let r = edadm(&[&plain[..], &["--wbits", "9", "-o", w9.to_str().unwrap()]].concat());
    assert_one_line_error(&r, 1, "--wbits 9: 4 to 8 are supported");
    assert!(!w9.exists());
    let v = meta(&def);
    assert_eq!(v["metadata"]["quant.reconstruction"], "none");
    assert_eq!(v["metadata"]["quant.act_init"], "percentile 99.999");
    assert_eq!(v["metadata"]["quant.bias_correction"], true);
    assert_eq!(v["metadata"]["quant.fp_output_layer"], true);
    assert_eq!(v["metadata"]["quant.fp_input_layer"], true);
    // conv_in reads x_t: 8-bit weights, no input quantizer (f32 input).
    let conv_in = v["graph"]["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "conv_in").unwrap();
    assert!(conv_in["act_quant"][0]["input"].is_null() && !conv_in["weight_bits"].is_null(), "{conv_in}");
    assert_eq!(v["metadata"]["quant.step_groups"], 1);
    assert_eq!(v["header"]["version"], "1.0");
    let last = v["graph"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|n| n["weight_bits"].is_null() && n["op"] == "Conv2d");
    assert!(last.is_some(), "the output conv keeps f32 weights");
    // Three time-step groups: a minor-1 file whose quantizers list one (Δ, zp) per group.
    let grouped = d.join("grouped.edq");
    let grouped_args = ["--step-groups", "3", "--fp-input-layer", "false", "-o", grouped.to_str().unwrap()];
    let r = edadm(&[&base[..], &grouped_args[..]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&edadm(&["inspect", grouped.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(v["header"]["version"], "1.1");
    assert_eq!(v["graph"]["step_groups"]["groups"], 3);
    let conv_in = v["graph"]["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "conv_in").unwrap();
    assert_eq!(conv_in["act_quant_steps"][0]["groups"].as_array().unwrap().len(), 3);
    let text = String::from_utf8_lossy(&edadm(&["inspect", grouped.to_str().unwrap()]).stdout).to_string();
    assert!(text.contains("3 activation-quantizer groups"), "{text}");
    // It samples: every step's batch falls in one group, whichever the schedule.
    let png = d.join("grouped.png");
    let r = edadm(&["sample", grouped.to_str().unwrap(), "-n", "2", "--steps", "8", "-o", png.to_str().unwrap()]);
    assert!(r.status.success() && png.exists(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_one_line_error(&with(&["--step-groups", "0"]), 1, "--step-groups 0");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn train_errors_are_one_line() {
    let d = scratch("train-errors");
    let o = d.join("m.edq");
    let o = o.to_str().unwrap();
    assert_one_line_error(
        &edadm(&["train", "--data", "/nonexistent-idx", "--preset", "fmnist-ddpm", "-o", o]),
        1,
        "/nonexistent-idx",
    );
    let junk = d.join("junk");
    std::fs::write(&junk, b"junk").unwrap();
    let j = junk.to_str().unwrap();
    assert_one_line_error(&edadm(&["train", "--data", j, "--preset", "fmnist-ddpm", "-o", o]), 1, "IDX");
    let mut idx = vec![0u8, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28];
    idx.extend(std::iter::repeat_n(0u8, 28 * 28));
    let good = d.join("idx");
    std::fs::write(&good, idx).unwrap();
    let g = good.to_str().unwrap();
    assert_one_line_error(&edadm(&["train", "--data", g, "-o", o]), 1, "--preset");
    assert_one_line_error(&edadm(&["train", "--data", g, "--preset", "imagenet", "-o", o]), 1, "imagenet");
    assert!(!Path::new(o).exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sample_errors_are_one_line() {
    let d = scratch("sample-errors");
    let o = d.join("g.png");
    let o = o.to_str().unwrap();
    assert_one_line_error(&edadm(&["sample", "/nonexistent.edq", "-o", o]), 1, "/nonexistent.edq");
    // A quantized file samples through the integer runtime.
    let qo = d.join("q.png");
    let q = edadm(&["sample", &golden("tiny-w4a8.edq"), "-n", "2", "--steps", "5", "-o", qo.to_str().unwrap()]);
    assert!(q.status.success() && qo.exists(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_one_line_error(&edadm(&["sample", &golden("tiny-fp32.edq"), "-n", "0", "-o", o]), 1, "-n");
    // The device seam: no CUDA backend is built, so cuda is refused (no output), and a device
    // that is neither is named.
    assert_one_line_error(&edadm(&["sample", &golden("tiny-fp32.edq"), "--device", "cuda", "-o", o]), 1, "cuda");
    assert_one_line_error(&edadm(&["bench", &golden("tiny-fp32.edq"), "--device", "cuda:1"]), 1, "no CUDA backend");
    assert_one_line_error(&edadm(&["sample", &golden("tiny-fp32.edq"), "--device", "tpu", "-o", o]), 1, "--device");
    assert!(!Path::new(o).exists());
    // An output that is the input (by another name, or as --raw) is refused; the input stays.
    let m = d.join("m.edq");
    std::fs::copy(golden("tiny-fp32.edq"), &m).unwrap();
    let before = std::fs::read(&m).unwrap();
    let via = d.join(".").join("m.edq");
    assert_one_line_error(&edadm(&["sample", m.to_str().unwrap(), "-o", via.to_str().unwrap()]), 1, "is the input");
    assert_one_line_error(
        &edadm(&["sample", m.to_str().unwrap(), "-o", o, "--raw", m.to_str().unwrap()]),
        1,
        "is the input",
    );
    assert_eq!(std::fs::read(&m).unwrap(), before);
    assert!(!Path::new(o).exists());
    // An output in a folder that does not exist, or that is a folder, is refused before any work.
    let missing = d.join("no-such-dir").join("q.edq");
    let calib = ["--calib", "random", "--n-calib", "8", "--steps", "5"];
    let mut args = vec!["quantize", m.to_str().unwrap(), "-o", missing.to_str().unwrap()];
    args.extend(calib);
    assert_one_line_error(&edadm(&args), 1, "does not exist");
    let mut args = vec!["quantize", m.to_str().unwrap(), "-o", d.to_str().unwrap()];
    args.extend(calib);
    assert_one_line_error(&edadm(&args), 1, "is a directory");
    assert_one_line_error(
        &edadm(&["sample", m.to_str().unwrap(), "-o", missing.to_str().unwrap()]),
        1,
        "does not exist",
    );
    // One memory budget (--max-memory): a session that needs more, or samples that would hold
    // more, are refused before anything is allocated, naming the need and the limit.
    let e = edadm(&["bench", m.to_str().unwrap(), "--batch", "64", "--max-memory", "64K"]);
    assert_one_line_error(&e, 1, "the memory limit is 64.0 KiB (--max-memory)");
    assert!(String::from_utf8_lossy(&e.stderr).contains("batch 64 at"), "{}", String::from_utf8_lossy(&e.stderr));
    assert_one_line_error(
        &edadm(&["sample", m.to_str().unwrap(), "-n", "1000", "--max-memory", "4K", "-o", o]),
        1,
        "of samples",
    );
    let ok = edadm(&["bench", m.to_str().unwrap(), "--runs", "1", "--steps", "0", "--max-memory", "1G"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!edadm(&["bench", m.to_str().unwrap(), "--max-memory", "lots"]).status.success());
    // One weight byte changed with its checksum left stale: every command refuses the file (2).
    let stale = d.join("stale.edq");
    let mut bytes = before.clone();
    let f = edadm_format::ModelFile::parse(&bytes[..]).unwrap();
    let at = f.tensors().find(|t| !t.data.is_empty()).unwrap().file_offset as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&stale, &bytes).unwrap();
    assert_one_line_error(&edadm(&["sample", stale.to_str().unwrap(), "-o", o]), 2, "checksum");
    assert_one_line_error(&edadm(&["bench", stale.to_str().unwrap()]), 2, "checksum");
    assert!(!Path::new(o).exists());
    // An invalid file exits 2 from every command that reads it (as from `inspect`).
    let b = d.join("bad.edq");
    std::fs::write(&b, &before[..before.len() / 2]).unwrap();
    assert_one_line_error(&edadm(&["sample", b.to_str().unwrap(), "-o", o]), 2, "bad.edq");
    assert_one_line_error(&edadm(&["bench", b.to_str().unwrap()]), 2, "bad.edq");
    assert_one_line_error(&edadm(&["inspect", b.to_str().unwrap()]), 2, "bad.edq");
    assert_one_line_error(&edadm(&["sample", &golden("tiny-fp32.edq"), "--steps", "11", "-o", o]), 1, "11 steps");
    assert_one_line_error(
        &edadm(&["sample", &golden("tiny-fp32.edq"), "--sampler", "plms", "--eta", "1", "-o", o]),
        1,
        "eta",
    );
    assert!(!Path::new(o).exists(), "no output after a failure");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn import_then_sample_a_real_model() {
    let Some(shared) = shared() else {
        println!("skipped: import_then_sample_a_real_model (no shared models)");
        return;
    };
    let d = scratch("import");
    let model = d.join("mnist.edq");
    let ckpt = shared.join("models/mnist-unet/model.pth");
    let out = edadm(&[
        "import",
        "--family",
        "mnist-unet",
        ckpt.to_str().unwrap(),
        "--dtype",
        "f16",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("125 nodes"));
    let out = edadm(&["inspect", model.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("f16"));
    let grid = d.join("g.png");
    let out = edadm(&[
        "sample",
        model.to_str().unwrap(),
        "-n",
        "4",
        "--steps",
        "10",
        "--sampler",
        "ddpm",
        "--range",
        "0,1",
        "-o",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(png_size(&grid), (2 * 58 + 2, 2 * 58 + 2));

    // Import errors: the wrong family, a missing file, an impossible preset.
    let o = d.join("x.edq");
    let o = o.to_str().unwrap();
    let fm = shared.join("models/fmnist-ddpm/model.safetensors");
    assert_one_line_error(
        &edadm(&["import", "--family", "mnist-unet", fm.to_str().unwrap(), "-o", o]),
        1,
        "pe.embedding.weight",
    );
    assert_one_line_error(
        &edadm(&["import", "--family", "ddpm", "--preset", "cifar10", fm.to_str().unwrap(), "-o", o]),
        1,
        "temb.dense.0.weight",
    );
    assert_one_line_error(
        &edadm(&["import", "--family", "ddpm", "--preset", "cifar10", "/nope.ckpt", "-o", o]),
        1,
        "/nope.ckpt",
    );
    assert!(!Path::new(o).exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_builtin_model_is_in_the_checkout_and_generates_garments() {
    let m = format!("{}/../models/fmnist-builtin.edq", env!("CARGO_MANIFEST_DIR"));
    let info = edadm(&["inspect", &m, "--json"]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(j["metadata"]["train.steps"].as_u64(), Some(12000), "the model card's run");
    assert_eq!(j["metadata"]["train.loss_per_100_steps"].as_array().map(Vec::len), Some(120));
    assert!(std::fs::metadata(&m).unwrap().len() < 3 << 20, "f16 weights, a few MB");
    // A trained Fashion-MNIST model draws a garment on a black background (−1) with a black
    // 2-pixel frame (the padding of its training images); random weights draw noise.
    let d = scratch("builtin");
    let raw = d.join("x.npy");
    let out = edadm(&[
        "sample",
        &m,
        "-n",
        "4",
        "--steps",
        "20",
        "--sampler",
        "ddim",
        "--skip",
        "quad",
        "--seed",
        "0",
        "-o",
        d.join("g.png").to_str().unwrap(),
        "--raw",
        raw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let npy = std::fs::read(&raw).unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let x: Vec<f32> =
        npy[10 + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(x.len(), 4 * 32 * 32);
    for img in x.chunks_exact(32 * 32) {
        let frame: Vec<f32> =
            (0..32 * 32).filter(|i| i / 32 < 2 || i / 32 >= 30 || i % 32 < 2 || i % 32 >= 30).map(|i| img[i]).collect();
        let dark = frame.iter().filter(|&&v| v < -0.8).count() as f64 / frame.len() as f64;
        let bright = img.iter().filter(|&&v| v > 0.0).count();
        assert!(dark > 0.9, "frame {:.0} % black", dark * 100.0);
        assert!(bright > 30, "{bright} bright pixels: no garment");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
