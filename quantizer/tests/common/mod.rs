//! Shared helpers: locating `../shared`, reading golden tensors, running an imported model.
#![allow(dead_code)]

use std::path::PathBuf;

use edadm_format::graph::ValueId;
use edadm_quantizer::import::{Family, ImportOptions, import};
use edadm_runtime::{Model, Session, SessionOptions};

/// The shared folder (`$EDADM_SHARED`, else `../shared` next to the repository), or `None`
/// after printing a `skipped:` line.
pub fn shared(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("EDADM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    if p.join("models").is_dir() {
        Some(p)
    } else {
        println!("skipped: {test} (no shared models at {}; set EDADM_SHARED)", p.display());
        None
    }
}

/// A tensor of a safetensors file as f32 (integers converted).
pub fn golden(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let data = match v.dtype() {
        safetensors::Dtype::F32 => {
            v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        }
        safetensors::Dtype::I64 => {
            v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect()
        }
        d => panic!("unexpected dtype {d:?}"),
    };
    (v.shape().to_vec(), data)
}

/// The output value of the node named `name`.
pub fn value_of(model: &Model, name: &str) -> ValueId {
    model.graph().nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}")).output
}

/// Max |got − want| relative to max |want|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    err / scale
}

/// Runs `model` on `x`, `t` keeping the named nodes; returns the session.
pub fn run<'m>(model: &'m Model, batch: usize, x: &[f32], t: &[f32], keep: &[&str]) -> Session<'m> {
    let mut opts = SessionOptions::batch(batch);
    opts.keep = keep.iter().map(|n| value_of(model, n)).collect();
    let mut s = Session::new(model, &opts).unwrap();
    s.run(x, t).unwrap();
    s
}

/// Imports a checkpoint into an in-memory model.
pub fn import_model(family: Family, path: &std::path::Path, preset: Option<&str>) -> Model {
    let opts = ImportOptions { preset: preset.map(str::to_string), ..Default::default() };
    let imported = import(family, path, &opts).unwrap();
    Model::from_bytes(imported.file.to_bytes().unwrap()).unwrap()
}
