//! The reconstruction checkpoint: the initialised and the current model and the units done,
//! written atomically after every unit so that `--resume` continues from the last finished one.
//! A fingerprint of the settings and the calibration set guards against resuming a different run.

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

const FORMAT_TAG: &str = "edadm-quant-checkpoint/1";

/// Identifies a run: its settings and its calibration samples.
pub fn fingerprint(cfg: &QuantizeConfig, calib: &CalibSet) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg).expect("serialisable"));
    for v in calib.x.iter().chain(&calib.t) {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
    fingerprint: &str,
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
    md.insert("fingerprint".to_string(), fingerprint.to_string());
    md.insert("state".to_string(), serde_json::to_string(&meta).map_err(|e| QuantError::Invalid(e.to_string()))?);
    let bytes = safetensors::serialize(views, Some(md))?;
    crate::io::write_atomic(path, &bytes)
}

/// Reads a checkpoint written by [`save`] for the run `fingerprint`.
pub fn load(path: &Path, fingerprint: &str) -> Result<Checkpoint> {
    let bad = |what: String| QuantError::BadFile { path: path.display().to_string(), what };
    let bytes = std::fs::read(path).map_err(|e| QuantError::Io { path: path.display().to_string(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(FORMAT_TAG) {
        return Err(bad(format!("not an edadm quantizer checkpoint ({FORMAT_TAG})")));
    }
    if md.get("fingerprint").map(String::as_str) != Some(fingerprint) {
        return Err(bad("the checkpoint belongs to a run with other settings or another calibration set; \
             repeat the original options or start without --resume"
            .into()));
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
