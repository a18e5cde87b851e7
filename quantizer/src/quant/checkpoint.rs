//! The reconstruction checkpoint: the initialised and the current model and the units done,
//! written atomically after every unit so that `--resume` continues from the last finished one.
//! A fingerprint of the FP model, the calibration set and the settings guards against resuming
//! a different run; a mismatch is refused naming what changed.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::QuantizeConfig;
use super::model::{NodeQ, QModel};
use super::recon::UnitReport;
use crate::calib::CalibSet;
use crate::error::{QuantError, Result};
use crate::net::{Net, to_vec};

const FORMAT_TAG: &str = "edadm-quant-checkpoint/2";

/// Identifies a run: the FP model (its graph and every parameter's values), the calibration
/// samples, and the settings (kept as JSON, so that a refusal can name the setting that changed).
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    /// SHA-256 (hex) of the FP model.
    pub model: String,
    /// SHA-256 (hex) of the calibration samples and timesteps.
    pub calib: String,
    /// The settings, as JSON.
    pub options: String,
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of quantizing `net` on `calib` with `cfg`.
pub fn fingerprint(cfg: &QuantizeConfig, calib: &CalibSet, net: &Net) -> Result<Fingerprint> {
    let mut m = Sha256::new();
    m.update(format!("{:?}", net.graph).as_bytes());
    for p in &net.params {
        for t in [&p.weight, &p.bias] {
            match t {
                Some(t) => {
                    m.update(format!("{:?}", t.dims()).as_bytes());
                    for v in to_vec(t)? {
                        m.update(v.to_le_bytes());
                    }
                }
                None => m.update(b"-"),
            }
        }
    }
    let mut c = Sha256::new();
    for v in calib.x.iter().chain(&calib.t) {
        c.update(v.to_le_bytes());
    }
    let options = serde_json::to_string(cfg).map_err(|e| QuantError::Invalid(e.to_string()))?;
    Ok(Fingerprint { model: hex(m), calib: hex(c), options })
}

/// The settings that differ between two JSON option sets, as `path: old → new`.
fn changed_options(old: &serde_json::Value, new: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let null = serde_json::Value::Null;
                changed_options(a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null), &p, out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    init: QModel,
    current: QModel,
    done: usize,
    reports: Vec<UnitReport>,
    seconds_init: f64,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// The initialised model.
    pub init: QModel,
    /// The model after `done` units.
    pub current: QModel,
    /// Units finished.
    pub done: usize,
    /// Their reports.
    pub reports: Vec<UnitReport>,
    /// Seconds the initialisation took.
    pub seconds_init: f64,
}

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    fingerprint: &Fingerprint,
    init: &QModel,
    current: &QModel,
    done: usize,
    reports: &[UnitReport],
    seconds_init: f64,
) -> Result<()> {
    let meta = Meta { init: init.clone(), current: current.clone(), done, reports: reports.to_vec(), seconds_init };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (tag, m) in [("init", init), ("current", current)] {
        for (ni, n) in m.nodes.iter().enumerate() {
            if let Some(NodeQ::Weight(w)) = n {
                owned.push((format!("{tag}.{ni}"), vec![w.ints.len()], w.ints.iter().map(|&v| v as u8).collect()));
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::I8, s.clone(), b).map(|v| (n.clone(), v)).map_err(QuantError::from))
        .collect::<Result<_>>()?;
    let mut md = HashMap::new();
    md.insert("format".to_string(), FORMAT_TAG.to_string());
    md.insert("fingerprint.model".to_string(), fingerprint.model.clone());
    md.insert("fingerprint.calib".to_string(), fingerprint.calib.clone());
    md.insert("fingerprint.options".to_string(), fingerprint.options.clone());
    md.insert("state".to_string(), serde_json::to_string(&meta).map_err(|e| QuantError::Invalid(e.to_string()))?);
    let bytes = safetensors::serialize(views, Some(md))?;
    crate::io::write_atomic(path, &bytes)
}

/// Reads a checkpoint written by [`save`] for the run `fingerprint`.
pub fn load(path: &Path, fingerprint: &Fingerprint) -> Result<Checkpoint> {
    let bad = |what: String| QuantError::BadFile { path: path.display().to_string(), what };
    let bytes = std::fs::read(path).map_err(|e| QuantError::Io { path: path.display().to_string(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(FORMAT_TAG) {
        return Err(bad(format!("not an edadm quantizer checkpoint ({FORMAT_TAG})")));
    }
    let get = |k: &str| md.get(k).map(String::as_str).unwrap_or("");
    let mut changed = Vec::new();
    if get("fingerprint.model") != fingerprint.model {
        changed.push("another FP model".to_string());
    }
    if get("fingerprint.calib") != fingerprint.calib {
        changed.push("another calibration set".to_string());
    }
    if get("fingerprint.options") != fingerprint.options {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or(serde_json::Value::Null);
        let mut opts = Vec::new();
        changed_options(&parse(get("fingerprint.options")), &parse(&fingerprint.options), "", &mut opts);
        changed
            .push(format!("other settings ({})", if opts.is_empty() { "unreadable".into() } else { opts.join(", ") }));
    }
    if !changed.is_empty() {
        return Err(bad(format!(
            "the checkpoint belongs to a run with {}; repeat the original run or start without --resume",
            changed.join(", ")
        )));
    }
    let state = md.get("state").ok_or_else(|| bad("state missing".into()))?;
    let mut meta: Meta = serde_json::from_str(state).map_err(|e| bad(format!("state: {e}")))?;
    for (tag, m) in [("init", &mut meta.init), ("current", &mut meta.current)] {
        for (ni, n) in m.nodes.iter_mut().enumerate() {
            if let Some(NodeQ::Weight(w)) = n {
                let name = format!("{tag}.{ni}");
                let t = st.tensor(&name).map_err(|_| bad(format!("tensor `{name}` missing")))?;
                let len = w.out * w.row();
                if t.dtype() != Dtype::I8 || t.shape() != [len] {
                    return Err(bad(format!("tensor `{name}` must be i8 [{len}]")));
                }
                w.ints = t.data().iter().map(|&b| b as i8).collect();
            }
        }
    }
    Ok(Checkpoint {
        init: meta.init,
        current: meta.current,
        done: meta.done,
        reports: meta.reports,
        seconds_init: meta.seconds_init,
    })
}
