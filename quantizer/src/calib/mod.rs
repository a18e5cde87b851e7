//! Calibration (METHOD.md §1): FP trajectories, the choice of one step per trajectory (TDAC or
//! a baseline), and the resulting set of `(x, t)` samples, saved to a file so that one
//! calibration serves several bit widths and reconstruction methods.

pub mod rng;
pub mod select;
pub mod trajectory;

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

pub use rng::Rng;
pub use select::{Eps, Features, Method, TdacScores};
pub use trajectory::{Trajectories, collect, feature_value};

use crate::error::{QuantError, Result};

/// The selected calibration samples and how they were chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibSet {
    /// `[C, H, W]` of one sample.
    pub sample_shape: [usize; 3],
    /// Samples `[n, C, H, W]`.
    pub x: Vec<f32>,
    /// Timestep fed to the network with each sample.
    pub t: Vec<f32>,
    /// Sampler step (denoising order) each sample was taken at.
    pub step: Vec<u32>,
    /// Sampler steps of the trajectories.
    pub steps: usize,
    /// TDAC's per-step scores, when TDAC chose.
    pub tdac: Option<TdacScores>,
    /// Provenance: method, its parameters, the sampler, the seed, the model (JSON-compatible
    /// string pairs).
    pub provenance: Vec<(String, String)>,
}

impl CalibSet {
    /// Samples in the set.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// Floats per sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Sample `j`.
    pub fn sample(&self, j: usize) -> &[f32] {
        let l = self.sample_len();
        &self.x[j * l..(j + 1) * l]
    }

    /// Samples per step (a histogram over the `steps` steps).
    pub fn per_step(&self) -> Vec<usize> {
        let mut c = vec![0usize; self.steps];
        for &s in &self.step {
            c[s as usize] += 1;
        }
        c
    }
}

/// Picks one step per trajectory with `method` (TDAC needs the trajectories' feature maps) and
/// assembles the set: sample `j` is trajectory `j` at its step.
pub fn select(tr: &Trajectories, method: Method, seed: u64) -> Result<CalibSet> {
    let steps = tr.x.len();
    let n = tr.images;
    if steps == 0 || n == 0 {
        return Err(QuantError::Invalid("no trajectories to select from".into()));
    }
    let mut rng = Rng::new(seed ^ 0x7dac_5e1e_c7ed_0001);
    let (idx, tdac) = match method {
        Method::Tdac { lambda, eps } => {
            if tr.features.len() != steps {
                return Err(QuantError::Invalid("TDAC needs the feature map of every step".into()));
            }
            let f = Features {
                maps: &tr.features,
                images: n,
                channels: tr.feature_shape[0],
                positions: tr.feature_shape[1],
            };
            let scores = select::tdac(&f, lambda, eps, n);
            (select::assign(&scores.counts, &mut rng), Some(scores))
        }
        m => (select::baseline_steps(m, steps, n, &mut rng), None),
    };
    let per: usize = tr.sample_shape.iter().product();
    let mut x = Vec::with_capacity(n * per);
    for (j, &k) in idx.iter().enumerate() {
        x.extend_from_slice(&tr.x[k][j * per..(j + 1) * per]);
    }
    let mut provenance = vec![("method".to_string(), method.name().to_string()), ("seed".into(), seed.to_string())];
    if let (Method::Tdac { lambda, eps }, Some(s)) = (method, &tdac) {
        provenance.push(("lambda".into(), lambda.to_string()));
        provenance.push((
            "eps".into(),
            match eps {
                Eps::Value(v) => v.to_string(),
                Eps::Median => format!("median of the step pairs' distances, {}", s.eps),
            },
        ));
    }
    Ok(CalibSet {
        sample_shape: tr.sample_shape,
        t: idx.iter().map(|&k| tr.t[k]).collect(),
        step: idx.iter().map(|&k| k as u32).collect(),
        x,
        steps,
        tdac,
        provenance,
    })
}

const FORMAT_TAG: &str = "edadm-calib/1";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// SHA-256 (hex) of the samples and timesteps of a set.
pub fn digest(set: &CalibSet) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in set.x.iter().chain(&set.t) {
        h.update(v.to_le_bytes());
    }
    h.update(set.step.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the set as safetensors (`x`, `t`, `step`, and TDAC's `tdac.*` per-step scores), the
/// provenance in its metadata; atomically.
pub fn save(set: &CalibSet, path: &Path) -> Result<()> {
    let n = set.len();
    let [c, h, w] = set.sample_shape;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("x".into(), Dtype::F32, vec![n, c, h, w], f32_bytes(&set.x)),
        ("t".into(), Dtype::F32, vec![n], f32_bytes(&set.t)),
        ("step".into(), Dtype::U32, vec![n], u32_bytes(&set.step)),
    ];
    if let Some(s) = &set.tdac {
        let t = s.counts.len();
        let d: Vec<u32> = s.density.clone();
        let counts: Vec<u32> = s.counts.iter().map(|&c| c as u32).collect();
        owned.push(("tdac.density".into(), Dtype::U32, vec![t], u32_bytes(&d)));
        owned.push(("tdac.variety".into(), Dtype::F64, vec![t], f64_bytes(&s.variety)));
        owned.push(("tdac.density_scaled".into(), Dtype::F64, vec![t], f64_bytes(&s.density_scaled)));
        owned.push(("tdac.variety_scaled".into(), Dtype::F64, vec![t], f64_bytes(&s.variety_scaled)));
        owned.push(("tdac.score".into(), Dtype::F64, vec![t], f64_bytes(&s.score)));
        owned.push(("tdac.counts".into(), Dtype::U32, vec![t], u32_bytes(&counts)));
        owned.push(("tdac.pair_mse".into(), Dtype::F64, vec![3], f64_bytes(&s.pair_mse)));
        owned.push(("tdac.eps".into(), Dtype::F64, vec![1], f64_bytes(&[s.eps])));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(QuantError::from)
        })
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = set.provenance.iter().cloned().collect();
    meta.insert("format".into(), FORMAT_TAG.into());
    meta.insert("steps".into(), set.steps.to_string());
    let bytes = safetensors::serialize(views, Some(meta))?;
    crate::io::write_atomic(path, &bytes)
}

/// Reads a set written by [`save`], checking every shape and index.
pub fn load(path: &Path) -> Result<CalibSet> {
    let bad = |what: String| QuantError::BadFile { path: path.display().to_string(), what };
    let bytes = std::fs::read(path).map_err(|e| QuantError::Io { path: path.display().to_string(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a calibration set (safetensors): {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT_TAG) {
        return Err(bad(format!("not an edadm calibration set (format tag {FORMAT_TAG} missing)")));
    }
    let steps: usize = meta
        .get("steps")
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("metadata `steps` missing or not a positive integer".into()))?;
    let tensor = |name: &str, dt: Dtype| {
        let t = st.tensor(name).map_err(|_| bad(format!("tensor `{name}` missing")))?;
        if t.dtype() != dt {
            return Err(bad(format!("tensor `{name}` is {:?}, expected {dt:?}", t.dtype())));
        }
        Ok(t)
    };
    let x = tensor("x", Dtype::F32)?;
    let t = tensor("t", Dtype::F32)?;
    let step = tensor("step", Dtype::U32)?;
    let [n, c, h, w] = *x.shape() else {
        return Err(bad(format!("`x` must be [n, C, H, W], found {:?}", x.shape())));
    };
    if t.shape() != [n] || step.shape() != [n] || n == 0 {
        return Err(bad(format!("`t` and `step` must be [{n}] with n ≥ 1")));
    }
    let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let u32s = |b: &[u8]| b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let f64s = |b: &[u8]| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let step_v = u32s(step.data());
    if let Some(s) = step_v.iter().find(|&&s| s as usize >= steps) {
        return Err(bad(format!("step {s} out of range for {steps} steps")));
    }
    let tdac = if st.names().iter().any(|n| n.starts_with("tdac.")) {
        let per = |name: &str, dt: Dtype| {
            let v = tensor(name, dt)?;
            if v.shape() != [steps] {
                return Err(bad(format!("`{name}` must be [{steps}]")));
            }
            Ok(v)
        };
        Some(TdacScores {
            density: u32s(per("tdac.density", Dtype::U32)?.data()),
            variety: f64s(per("tdac.variety", Dtype::F64)?.data()),
            density_scaled: f64s(per("tdac.density_scaled", Dtype::F64)?.data()),
            variety_scaled: f64s(per("tdac.variety_scaled", Dtype::F64)?.data()),
            score: f64s(per("tdac.score", Dtype::F64)?.data()),
            counts: u32s(per("tdac.counts", Dtype::U32)?.data()).into_iter().map(|c| c as usize).collect(),
            // Absent from sets written before it was kept.
            pair_mse: match st.tensor("tdac.pair_mse") {
                Ok(v) if v.dtype() == Dtype::F64 && v.shape() == [3] => {
                    let m = f64s(v.data());
                    [m[0], m[1], m[2]]
                }
                Ok(_) => return Err(bad("`tdac.pair_mse` must be F64 [3]".into())),
                Err(_) => [f64::NAN; 3],
            },
            eps: match st.tensor("tdac.eps") {
                Ok(v) if v.dtype() == Dtype::F64 && v.shape() == [1] => f64s(v.data())[0],
                Ok(_) => return Err(bad("`tdac.eps` must be F64 [1]".into())),
                Err(_) => f64::NAN,
            },
        })
    } else {
        None
    };
    let mut provenance: Vec<(String, String)> =
        meta.into_iter().filter(|(k, _)| k != "format" && k != "steps").collect();
    provenance.sort();
    Ok(CalibSet {
        sample_shape: [c, h, w],
        x: f32s(x.data()),
        t: f32s(t.data()),
        step: step_v,
        steps,
        tdac,
        provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Trajectories {
        // 3 steps, 4 trajectories of [1, 1, 2]; x[k][j] = (k, j); features make step 2 distinct.
        let x = (0..3).map(|k| (0..4).flat_map(|j| [k as f32, j as f32]).collect()).collect();
        let features = vec![vec![1.0; 4 * 2], vec![1.0; 4 * 2], (0..8).map(|i| (i % 2) as f32 * 5.0).collect()];
        Trajectories {
            images: 4,
            sample_shape: [1, 1, 2],
            x,
            t: vec![900.0, 500.0, 100.0],
            features,
            feature_shape: [2, 1],
        }
    }

    #[test]
    fn selection_takes_each_trajectory_once_at_its_step() {
        let tr = toy();
        for m in [Method::Tdac { lambda: 1.0, eps: Eps::Value(0.5) }, Method::Uniform, Method::Ndtc, Method::Random] {
            let set = select(&tr, m, 11).unwrap();
            assert_eq!(set.len(), 4);
            for j in 0..4 {
                let k = set.step[j] as usize;
                assert_eq!(set.sample(j), &[k as f32, j as f32], "{m:?}");
                assert_eq!(set.t[j], tr.t[k]);
            }
            assert_eq!(set.per_step().iter().sum::<usize>(), 4);
        }
    }

    #[test]
    fn a_saved_set_loads_back_identically_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("edadm-calib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = select(&toy(), Method::Tdac { lambda: 1.2, eps: Eps::Median }, 5).unwrap();
        let p = dir.join("calib.safetensors");
        save(&set, &p).unwrap();
        let mut back = load(&p).unwrap();
        let mut want = set.clone();
        want.provenance.sort();
        back.provenance.sort();
        assert_eq!(back, want);
        std::fs::write(dir.join("junk"), b"not a file").unwrap();
        assert!(matches!(load(&dir.join("junk")), Err(QuantError::BadFile { .. })));
        assert!(matches!(load(&dir.join("missing")), Err(QuantError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
