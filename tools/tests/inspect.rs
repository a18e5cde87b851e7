//! `edadm inspect` end to end: valid files print their contents; damaged files exit 2 with
//! one line naming the problem and its offset, and never panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../formats/tests/golden").join(name)
}

fn edadm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edadm")).args(args).output().unwrap()
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-cli-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts the run failed with status 2, one stderr line naming a byte offset, no panic.
fn assert_rejected(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line expected: {err}");
    assert!(err.starts_with("error: ") && err.contains("invalid .edq file"), "{what}: {err}");
    assert!(err.contains("byte "), "{what}: the message names an offset: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}: nothing on stdout");
}

#[test]
fn text_report_of_a_quantized_file() {
    let out = edadm(&["inspect", golden("tiny-w4a8.edq").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "format    .edq 1.0",
        "quant.method",
        "\"eda-dm\"",
        "schedule.betas",
        "[f64; 10]",
        "Conv2d 4→4 k3 s1 p1",
        "w4 a8",
        "w8 a8+a8",
        "w8 f32-in",
        "q8 k8 v8 p8",
        "3 attn",
        "up.skip.weight_scales.1",
        "size by dtype",
        "i4 ",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
}

#[test]
fn json_report() {
    let out = edadm(&["inspect", "--json", golden("tiny-fp32.edq").to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"]["version"], "1.0");
    assert_eq!(v["metadata"]["model.family"], "ddpm");
    assert_eq!(v["graph"]["nodes"].as_array().unwrap().len(), 32);
    assert_eq!(v["graph"]["nodes"][1]["op"], "Linear");
    let conv_in = v["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "conv_in.weight").unwrap();
    assert_eq!(conv_in["shape"], serde_json::json!([4, 1, 3, 3]));
    assert_eq!(conv_in["bytes"], 144);
    assert!(v["size_by_dtype"]["f32"]["bytes"].as_u64().unwrap() > 0);
    assert!(v["graph"]["nodes"].as_array().unwrap().iter().all(|n| n["act_quant"].is_null()));
}

#[test]
fn json_report_lists_the_activation_quantizers() {
    let out = edadm(&["inspect", "--json", golden("tiny-w4a8.edq").to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["graph"]["nodes"].as_array().unwrap();
    let (mut inputs, mut attention) = (0, 0);
    for n in nodes {
        match &n["act_quant"] {
            serde_json::Value::Array(groups) => {
                assert_eq!(groups[0]["channel_start"], 0, "{}", n["name"]);
                for g in groups.iter().filter(|g| !g["input"].is_null()) {
                    let (d, zp) = (g["input"]["delta"].as_f64().unwrap(), g["input"]["zero_point"].as_u64().unwrap());
                    assert!(d > 0.0 && d.is_finite() && zp <= 255 && g["input"]["bits"] == 8, "{}", n["name"]);
                    inputs += 1;
                }
            }
            serde_json::Value::Object(a) => {
                assert_eq!(a.keys().cloned().collect::<Vec<_>>(), ["k", "prob", "q", "v"]);
                attention += 1;
            }
            _ => assert!(n["quant"] == "-", "{}", n["name"]),
        }
    }
    assert!(inputs > 0 && attention > 0, "{inputs} input quantizers, {attention} attention nodes");
}

#[test]
fn truncated_and_corrupted_files_exit_2() {
    let d = scratch();
    let good = std::fs::read(golden("tiny-w4a8.edq")).unwrap();
    let path = d.join("bad.edq");
    let p = path.to_str().unwrap();
    // Truncations: at every header field boundary and at a spread of points after it.
    let mut cuts: Vec<usize> = vec![1, 8, 10, 12, 16, 20, 24, 32, 56, 80, 104, 120, 124, 128];
    cuts.extend((129..good.len()).step_by(211));
    for cut in cuts {
        std::fs::write(&path, &good[..cut]).unwrap();
        assert_rejected(&edadm(&["inspect", p]), &format!("truncated to {cut}"));
    }
    // Random single- and multi-byte corruption anywhere, tensor data included.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..120 {
        let mut b = good.clone();
        for _ in 0..1 + round % 3 {
            let i = (next() % b.len() as u64) as usize;
            b[i] ^= 1 + (next() % 255) as u8;
        }
        std::fs::write(&path, &b).unwrap();
        assert_rejected(&edadm(&["inspect", p]), &format!("corruption round {round}"));
    }
    // Not an .edq file at all.
    std::fs::write(&path, b"PK\x03\x04 definitely a zip").unwrap();
    let out = edadm(&["inspect", p]);
    assert_rejected(&out, "zip");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_file_is_one_line() {
    let out = edadm(&["inspect", "/nonexistent/model.edq"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/model.edq"), "{err}");
}
