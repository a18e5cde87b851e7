//! The hostile-input corpus, generated here from the in-repo golden files (nothing binary is
//! committed): damaged and malicious `.edq` files and impossible options, each run through
//! `inspect`, `sample` and `bench` as subprocesses under an address-space limit. Every case must
//! exit non-zero by itself (no signal, no abort), print exactly one line on stderr and no panic,
//! and write no output file.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edadm_format::ModelFile;
use edadm_format::graph::NodeQuant;

/// The address-space limit of every subprocess: far above what the tiny models need, far below
/// what any of the hostile sizes would allocate.
const MEMORY_LIMIT: u64 = 4 << 30;

fn edadm(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edadm"));
    c.args(args);
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: MEMORY_LIMIT, rlim_max: MEMORY_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../formats/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (offset, length) of section `i` (0 metadata, 1 graph, 2 tensor table; FORMAT.md §3).
fn section(b: &[u8], i: usize) -> (usize, usize) {
    (rd_u64(b, 32 + 24 * i) as usize, rd_u64(b, 40 + 24 * i) as usize)
}

/// Recomputes the section and header checksums, as a hostile writer would.
fn reseal(b: &mut [u8]) {
    for i in 0..3 {
        let (off, len) = section(b, i);
        let crc = crc32fast::hash(&b[off..off + len]);
        b[32 + 24 * i + 16..32 + 24 * i + 20].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..124]);
    b[124..128].copy_from_slice(&crc.to_le_bytes());
}

/// Replaces the first occurrence of `old` inside section `i` by `new`.
fn replace_in(b: &mut [u8], i: usize, old: &[u8], new: &[u8]) {
    let (off, len) = section(b, i);
    let at = off + b[off..off + len].windows(old.len()).position(|w| w == old).expect("pattern in section");
    b[at..at + new.len()].copy_from_slice(new);
}

/// Sets tensor `name`'s bytes with `patch`, its checksum recomputed (so that only the value
/// rules can catch it), and reseals.
fn patch_tensor(b: &mut [u8], name: &str, patch: impl FnOnce(&mut [u8])) {
    let (off, len, crc) = {
        let f = ModelFile::parse(&b[..]).unwrap();
        let t = f.tensor_by_name(name).unwrap();
        (t.file_offset as usize, t.data.len(), t.crc32)
    };
    patch(&mut b[off..off + len]);
    let new = crc32fast::hash(&b[off..off + len]);
    replace_in(b, 2, &crc.to_le_bytes(), &new.to_le_bytes());
    reseal(b);
}

/// The first weight-scale tensor and the first activation step of a quantized file.
fn first_scale_and_step(b: &[u8]) -> (String, f32) {
    let f = ModelFile::parse(b).unwrap();
    let w = f
        .graph()
        .nodes
        .iter()
        .find_map(|n| match &n.quant {
            Some(NodeQuant::Weight(w)) if w.groups[0].input.is_some() => Some(w.clone()),
            _ => None,
        })
        .unwrap();
    let scales = f.tensor(w.groups[0].weight_scales).unwrap().name.to_string();
    (scales, w.groups[0].input.unwrap().delta)
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let fp = golden("tiny-fp32.edq");
    let q = golden("tiny-w4a8.edq");
    let mut out = Vec::new();
    // Structure: truncations, an empty file, noise.
    out.push(("truncated".to_string(), fp[..fp.len() / 2].to_vec()));
    out.push(("empty".into(), Vec::new()));
    out.push(("noise".into(), (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()));
    // A major version this reader does not know (header resealed).
    let mut b = fp.clone();
    b[8..10].copy_from_slice(&9u16.to_le_bytes());
    reseal(&mut b);
    out.push(("major version 9".into(), b));
    // A weight byte changed, its checksum left stale.
    let mut b = q.clone();
    let (scales, delta) = first_scale_and_step(&b);
    let off = ModelFile::parse(&b[..]).unwrap().tensor_by_name(&scales).unwrap().file_offset as usize;
    b[off] ^= 0x40;
    out.push(("stale checksum".into(), b));
    // Weight scales that are not normal numbers (checksum recomputed).
    for (label, v) in [("NaN", f32::NAN), ("inf", f32::INFINITY), ("0", 0.0), ("subnormal", 1e-40)] {
        let mut b = q.clone();
        patch_tensor(&mut b, &scales, |d| d[..4].copy_from_slice(&v.to_le_bytes()));
        out.push((format!("weight scale {label}"), b));
    }
    // Activation steps 0, inf, subnormal, negative (graph section resealed).
    for (label, v) in [("0", 0.0f32), ("inf", f32::INFINITY), ("subnormal", 1e-40), ("negative", -delta)] {
        let mut b = q.clone();
        replace_in(&mut b, 1, &delta.to_le_bytes(), &v.to_le_bytes());
        reseal(&mut b);
        out.push((format!("activation step {label}"), b));
    }
    // Metadata numbers the runtime computes with.
    for (label, r) in [("data range NaN", [f64::NAN, 1.0]), ("data range hi < lo", [1.0, -1.0])] {
        let mut b = fp.clone();
        let old: Vec<u8> = [-1.0f64, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let new: Vec<u8> = r.iter().flat_map(|v| v.to_le_bytes()).collect();
        replace_in(&mut b, 0, &old, &new);
        reseal(&mut b);
        out.push((label.to_string(), b));
    }
    for (label, v) in [("beta 1", 1.0f64), ("beta NaN", f64::NAN)] {
        let mut b = fp.clone();
        replace_in(&mut b, 0, &1e-4f64.to_le_bytes(), &v.to_le_bytes());
        reseal(&mut b);
        out.push((label.to_string(), b));
    }
    // A native image size that would exhaust memory: the built-in fmnist-ddpm model (a
    // convolutional UNet that plans at any size; its sample input is [C, H, W] = [1, 32, 32]),
    // where 4096 passes shape inference and meets the memory budget, and the tiny model.
    let builtin = std::fs::read(format!("{}/../models/fmnist-builtin.edq", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for side in [4096u32, 65_536] {
        let mut b = builtin.clone();
        let old: Vec<u8> = [1u32, 32, 32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let new: Vec<u8> = [1u32, side, side].iter().flat_map(|v| v.to_le_bytes()).collect();
        replace_in(&mut b, 1, &old, &new);
        reseal(&mut b);
        out.push((format!("native size {side} (fmnist-ddpm)"), b));
    }
    for side in [4096u32, 1 << 24] {
        let mut b = fp.clone();
        let old: Vec<u8> = [1u32, 8, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
        let new: Vec<u8> = [1u32, side, side].iter().flat_map(|v| v.to_le_bytes()).collect();
        replace_in(&mut b, 1, &old, &new);
        reseal(&mut b);
        out.push((format!("native size {side}"), b));
    }
    out
}

fn check(label: &str, what: &str, out: &Output, png: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "{label}, {what}: killed by a signal ({:?}); {err}", out.status);
    assert!(!out.status.success(), "{label}, {what}: exit 0");
    assert_eq!(err.trim_end().lines().count(), 1, "{label}, {what}: one line expected: {err}");
    assert!(!err.contains("panicked"), "{label}, {what}: {err}");
    assert!(!png.exists(), "{label}, {what}: an output was written");
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_hostile_file_is_one_line_and_a_non_zero_exit_from_every_command() {
    let d = scratch("files");
    let png = d.join("out.png");
    let png_s = png.to_str().unwrap();
    let cases = corpus();
    assert!(cases.len() >= 20);
    for (i, (label, bytes)) in cases.iter().enumerate() {
        let f = d.join(format!("case{i}.edq"));
        std::fs::write(&f, bytes).unwrap();
        let f = f.to_str().unwrap();
        // Whatever fails structure or values fails `inspect` too; a file whose only problem is
        // the size it declares is valid as a file (inspect reads it), and refused when planned.
        if !label.starts_with("native size") {
            let o = edadm(&["inspect", f]);
            check(label, "inspect", &o, &png);
            assert_eq!(o.status.code(), Some(2), "{label}: {}", String::from_utf8_lossy(&o.stderr));
        }
        check(label, "sample", &edadm(&["sample", f, "-n", "2", "--steps", "2", "-o", png_s]), &png);
        check(label, "bench", &edadm(&["bench", f, "--runs", "1", "--steps", "1"]), &png);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn impossible_options_and_special_files_are_one_line_and_a_non_zero_exit() {
    let d = scratch("options");
    let png = d.join("out.png");
    let png_s = png.to_str().unwrap();
    let m = d.join("m.edq");
    std::fs::write(&m, golden("tiny-fp32.edq")).unwrap();
    let m = m.to_str().unwrap();
    let max = u64::MAX.to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("sample -n 2^64-1", vec!["sample", m, "-n", &max, "-o", png_s]),
        ("sample -n 2^58", vec!["sample", m, "-n", "288230376151711744", "-o", png_s]),
        ("sample -n 2^40", vec!["sample", m, "-n", "1099511627776", "-o", png_s]),
        ("sample --threads 2^20", vec!["sample", m, "-n", "2", "--threads", "1048576", "-o", png_s]),
        ("bench --batch 2^64-1", vec!["bench", m, "--batch", &max]),
        ("bench --batch 2^20", vec!["bench", m, "--batch", "1048576"]),
        ("bench --threads 2^20", vec!["bench", m, "--threads", "1048576"]),
        ("bench --max-memory 1K", vec!["bench", m, "--max-memory", "1K"]),
        ("sample without -o (a usage error)", vec!["sample", m]),
        ("bench --batch abc (a usage error)", vec!["bench", m, "--batch", "abc"]),
        ("sample into a missing folder", vec!["sample", m, "-n", "2", "-o", "/nonexistent-dir/x.png"]),
    ];
    for (label, args) in &cases {
        check(label, "", &edadm(args), &png);
    }
    // A FIFO and a directory are refused before they are opened (a FIFO would block forever).
    let fifo = d.join("fifo.edq");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for special in [fifo.to_str().unwrap(), d.to_str().unwrap()] {
        check(special, "inspect", &edadm(&["inspect", special]), &png);
        check(special, "sample", &edadm(&["sample", special, "-o", png_s]), &png);
        check(special, "bench", &edadm(&["bench", special]), &png);
    }
    // `--batch` larger than `-n` is clamped, not refused.
    let o = edadm(&["sample", m, "-n", "2", "--steps", "2", "--batch", "100000", "-o", png_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}
