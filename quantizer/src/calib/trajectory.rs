//! Full-precision sampling trajectories (METHOD.md §1.2–1.3): the model input `x` and timestep
//! of every sampler step, and the feature map TDAC scores (the input of the middle attention
//! block, or the output of the first middle block where a family has no middle attention).

use std::cell::Cell;

use edadm_format::graph::{Graph, UnitKind, ValueId};
use edadm_runtime::sampler::{Denoiser, Sampler, SamplerConfig, noise};
use edadm_runtime::{Model, Session, SessionOptions};

use crate::error::{QuantError, Result};

/// The value whose contents are the TDAC feature map, and a description of where it is.
pub fn feature_value(graph: &Graph) -> Option<(ValueId, String)> {
    let is_mid = |name: &str| name == "mid" || name.starts_with("mid.") || name.starts_with("mid_");
    let mids: Vec<usize> = (0..graph.units.len()).filter(|&u| is_mid(&graph.units[u].name)).collect();
    let nodes_of = |u: usize| graph.nodes.iter().filter(move |n| n.unit.map(|id| id.0 as usize) == Some(u));
    let attn =
        mids.iter().find(|&&u| matches!(graph.units[u].kind, UnitKind::AttentionBlock | UnitKind::TransformerBlock));
    if let Some(&u) = attn {
        let first = nodes_of(u).next()?;
        return Some((*first.inputs.first()?, format!("input of {}", graph.units[u].name)));
    }
    let &u = mids.iter().find(|&&u| graph.units[u].kind != UnitKind::Layer)?;
    let last = nodes_of(u).next_back()?;
    Some((last.output, format!("output of {}", graph.units[u].name)))
}

/// Everything recorded along the FP trajectories.
#[derive(Clone, Debug)]
pub struct Trajectories {
    /// Trajectories (images sampled).
    pub images: usize,
    /// `[C, H, W]` of one sample.
    pub sample_shape: [usize; 3],
    /// Per step (denoising order), the model input of all trajectories, `[images, C, H, W]`.
    pub x: Vec<Vec<f32>>,
    /// Per step, the timestep value the network received.
    pub t: Vec<f32>,
    /// Per step, the feature map of all trajectories, `[images, channels, positions]`, when
    /// one was requested.
    pub features: Vec<Vec<f32>>,
    /// `[channels, positions]` of one image's feature map.
    pub feature_shape: [usize; 2],
}

/// Records every model call of a sampler run: the input, the timestep and the kept feature map.
struct Recorder<'s, 'm> {
    session: &'s mut Session<'m>,
    feature: Option<ValueId>,
    calls: Vec<(Vec<f32>, f32, Vec<f32>)>,
    count: &'s Cell<usize>,
}

impl Denoiser for Recorder<'_, '_> {
    fn batch(&self) -> usize {
        self.session.batch()
    }
    fn sample_len(&self) -> usize {
        self.session.sample_len()
    }
    fn prediction(&self) -> edadm_format::graph::Prediction {
        self.session.model().prediction()
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> edadm_runtime::Result<()> {
        out.copy_from_slice(self.session.run(x, t)?);
        let f = match self.feature {
            Some(v) => self.session.value(v).map(<[f32]>::to_vec).unwrap_or_default(),
            None => Vec::new(),
        };
        self.calls.push((x.to_vec(), t[0], f));
        self.count.set(self.count.get() + 1);
        Ok(())
    }
}

/// Runs `images` FP trajectories in batches of `batch` with the sampler `cfg` (its seed drives
/// the noise), recording every step. `progress(done, total)` counts steps over all batches.
pub fn collect(
    model: &Model,
    cfg: SamplerConfig,
    images: usize,
    batch: usize,
    feature: Option<ValueId>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Trajectories> {
    if images == 0 || batch == 0 {
        return Err(QuantError::Invalid("the number of trajectories and the batch must be at least 1".into()));
    }
    let batch = batch.min(images);
    let schedule = model.schedule()?;
    let mut opts = SessionOptions::batch(batch);
    opts.keep.extend(feature);
    // Every core: the runtime's results do not depend on the thread count.
    opts.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut session = Session::new(model, &opts)?;
    let len = session.sample_len();
    let per = len / batch;
    let sample_shape = session.sample_shape();
    let feature_shape = match feature {
        Some(v) => {
            let s = session.value_shape(v).ok_or_else(|| QuantError::Invalid("feature value out of range".into()))?;
            match *s {
                [_, c, h, w] => [c, h * w],
                [_, l, c] => [c, l],
                [_, c] => [c, 1],
                _ => return Err(QuantError::Invalid(format!("unexpected feature map shape {s:?}"))),
            }
        }
        None => [0, 0],
    };
    let flen = feature_shape[0] * feature_shape[1];
    let mut sampler = Sampler::new(&schedule, cfg, batch, len)?;
    let steps = sampler.num_steps();
    let chunks = images.div_ceil(batch);
    let mut out = Trajectories {
        images,
        sample_shape,
        x: vec![Vec::with_capacity(images * per); steps],
        t: vec![0.0; steps],
        features: if feature.is_some() { vec![Vec::with_capacity(images * flen); steps] } else { Vec::new() },
        feature_shape,
    };
    let mut xbuf = vec![0f32; len];
    for chunk in 0..chunks {
        let first = chunk * batch;
        let take = (images - first).min(batch);
        noise::initial_noise(cfg.seed, first as u64, &mut xbuf, batch);
        sampler.set_first_image(first as u64);
        let count = Cell::new(0usize);
        let mut rec = Recorder { session: &mut session, feature, calls: Vec::new(), count: &count };
        // The calls made during each step: a PLMS first step calls the model twice; its x is
        // the first call's input and its feature map the second call's (METHOD.md §1.3).
        let mut bounds = Vec::with_capacity(steps + 1);
        bounds.push(0usize);
        sampler.run(&mut rec, &mut xbuf, &mut |done, _| {
            bounds.push(count.get());
            progress(chunk * steps + done, chunks * steps);
        })?;
        for k in 0..steps {
            let (a, b) = (bounds[k], bounds[k + 1]);
            let (x, t, _) = &rec.calls[a];
            out.x[k].extend_from_slice(&x[..take * per]);
            out.t[k] = *t;
            if feature.is_some() {
                let f = &rec.calls[b - 1].2;
                out.features[k].extend_from_slice(&f[..take * flen]);
            }
        }
    }
    Ok(out)
}
