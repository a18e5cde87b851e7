//! Samplers: DDPM ancestral, DDIM (η), PLMS and DPM-Solver++(2M), over a [`Denoiser`], with a
//! classifier-free-guidance wrapper for conditional models. All buffers are allocated when the
//! sampler is built; a step allocates nothing.
//!
//! Conventions follow the ddim repository (METHOD.md §5.3): the ascending timestep sequence
//! `seq` comes from [`timesteps`], the sampler visits it from the end, each step goes from
//! `seq[i]` to `seq[i−1]` and the last one to ᾱ(−1) = 1; duplicate timesteps (the quad skip)
//! are identity updates for which the network is still evaluated.

mod cfg;
pub mod noise;
mod schedule;

pub use cfg::{ConditionalDenoiser, Guided};
pub use schedule::{Schedule, Skip, linear_betas, linspace, timesteps};

use edadm_format::graph::Prediction;

use crate::error::{Result, RuntimeError};

/// Something that predicts from a noisy batch: a session, a guided session, a test double.
pub trait Denoiser {
    /// Images per evaluation.
    fn batch(&self) -> usize;
    /// Floats per batch of samples.
    fn sample_len(&self) -> usize;
    /// What the output means.
    fn prediction(&self) -> Prediction;
    /// Evaluates the network on `x` at timesteps `t` (one per image) into `out`.
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> Result<()>;
}

/// The sampling algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Ancestral DDPM (`ddpm_steps` of the ddim repository): posterior mean from the x₀
    /// estimate, variance β̃ = 1 − ᾱ_t/ᾱ_next ("fixedlarge" over the visited steps), no noise
    /// at t = 0.
    Ddpm,
    /// DDIM with η (`generalized_steps`).
    Ddim,
    /// Pseudo linear multistep (LDM `plms.py`): improved Euler first, then Adams–Bashforth of
    /// order 2, 3, 4; deterministic.
    Plms,
    /// DPM-Solver++ multistep of order 2 with x₀ prediction on the visited discrete
    /// timesteps, first order at the first and the last step.
    DpmSolverPP,
}

impl SamplerKind {
    /// Parses `ddpm`, `ddim`, `plms`, `dpm-solver++` (or `dpmpp`).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim,
            "plms" => SamplerKind::Plms,
            "dpm-solver++" | "dpmpp" | "dpm-solver" => SamplerKind::DpmSolverPP,
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Plms => "plms",
            SamplerKind::DpmSolverPP => "dpm-solver++",
        }
    }
}

/// Sampler settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// The algorithm.
    pub kind: SamplerKind,
    /// Requested steps (the uniform skip may give a few more when T is not a multiple).
    pub steps: usize,
    /// Timestep spacing.
    pub skip: Skip,
    /// DDIM η (0: deterministic).
    pub eta: f32,
    /// DDPM: clip the x₀ estimate to this range (the model's data range: [−1, 1] for most
    /// models, [0, 1] for mnist-unet); `None` leaves it as predicted.
    pub clip_x0: Option<[f32; 2]>,
    /// Seed of the noise added during sampling (see [`noise`]).
    pub seed: u64,
    /// Index of the batch's first image in the noise streams.
    pub first_image: u64,
}

impl SamplerConfig {
    /// DDIM, η = 0, with the given steps and skip.
    pub fn ddim(steps: usize, skip: Skip) -> Self {
        SamplerConfig { kind: SamplerKind::Ddim, steps, skip, eta: 0.0, clip_x0: None, seed: 0, first_image: 0 }
    }
}

/// A sampler with its buffers, for one batch size.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    schedule: Schedule,
    seq: Vec<i64>,
    batch: usize,
    /// Timestep of every image for the current evaluation.
    t: Vec<f32>,
    /// ε of the current step.
    eps: Vec<f32>,
    /// PLMS: x_prev, then the combined ε; DPM-Solver++: the x₀ estimate.
    tmp: Vec<f32>,
    /// Noise added at a step (DDPM, DDIM with η > 0).
    noise: Vec<f32>,
    /// PLMS: the last three ε, newest first (`history[2]` also receives the second evaluation
    /// of the first step); DPM-Solver++: `history[0]` is the previous x₀ estimate.
    history: [Vec<f32>; 3],
}

/// Evaluates `d` at `(x, t)` for every image into `out`, converted to ε.
fn eval_eps(
    d: &mut dyn Denoiser,
    schedule: &Schedule,
    x: &[f32],
    t: i64,
    tbuf: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    tbuf.fill(t as f32);
    d.eval(x, tbuf, out)?;
    let a = schedule.alpha_bar(t);
    let (sa, s1) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
    match d.prediction() {
        Prediction::Epsilon => {}
        Prediction::X0 => out.iter_mut().zip(x).for_each(|(o, &xv)| *o = (xv - sa * *o) / s1),
        Prediction::V => out.iter_mut().zip(x).for_each(|(o, &xv)| *o = sa * *o + s1 * xv),
    }
    Ok(())
}

impl Sampler {
    /// A sampler for batches of `batch` images of `sample_len` floats in total.
    pub fn new(schedule: &Schedule, cfg: SamplerConfig, batch: usize, sample_len: usize) -> Result<Sampler> {
        if !(cfg.eta.is_finite() && cfg.eta >= 0.0) {
            return Err(RuntimeError::Sampler(format!("eta {} must be finite and non-negative", cfg.eta)));
        }
        if cfg.eta != 0.0 && cfg.kind != SamplerKind::Ddim {
            return Err(RuntimeError::Sampler(format!("eta applies to ddim only, not {}", cfg.kind.name())));
        }
        if batch == 0 || !sample_len.is_multiple_of(batch) {
            return Err(RuntimeError::Sampler(format!("{sample_len} floats do not split into {batch} images")));
        }
        let seq = timesteps(cfg.skip, cfg.steps, schedule.len())?;
        let buf = |needed: bool| vec![0.0; if needed { sample_len } else { 0 }];
        let (plms, dpm) = (cfg.kind == SamplerKind::Plms, cfg.kind == SamplerKind::DpmSolverPP);
        Ok(Sampler {
            cfg,
            schedule: schedule.clone(),
            seq,
            batch,
            t: vec![0.0; batch],
            eps: vec![0.0; sample_len],
            tmp: buf(plms || dpm),
            noise: buf(cfg.kind == SamplerKind::Ddpm || cfg.eta > 0.0),
            history: [buf(plms || dpm), buf(plms), buf(plms)],
        })
    }

    /// The ascending timestep sequence visited (in reverse).
    pub fn timesteps(&self) -> &[i64] {
        &self.seq
    }

    /// Sampler steps.
    pub fn num_steps(&self) -> usize {
        self.seq.len()
    }

    /// Network evaluations a run performs.
    pub fn model_calls(&self) -> usize {
        self.seq.len() + usize::from(self.cfg.kind == SamplerKind::Plms && self.seq.len() > 1)
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Sets the index of the next batch's first image in the noise streams.
    pub fn set_first_image(&mut self, first_image: u64) {
        self.cfg.first_image = first_image;
    }

    /// Runs the sampler from `x` = x_T to x₀ in place. `progress(done, total)` is called after
    /// every step.
    pub fn run(&mut self, d: &mut dyn Denoiser, x: &mut [f32], progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
        if d.batch() != self.batch || d.sample_len() != self.eps.len() || x.len() != self.eps.len() {
            return Err(RuntimeError::Sampler(format!(
                "the sampler was built for {} images of {} floats, the denoiser has {} images of {}, x has {}",
                self.batch,
                self.eps.len(),
                d.batch(),
                d.sample_len(),
                x.len()
            )));
        }
        let n = self.seq.len();
        let mut history_len = 0usize;
        let mut h_prev: Option<f64> = None;
        for step in 0..n {
            let i = n - 1 - step;
            let t = self.seq[i];
            let t_next = if i > 0 { self.seq[i - 1] } else { -1 };
            let (at, an) = (self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_next));
            eval_eps(d, &self.schedule, x, t, &mut self.t, &mut self.eps)?;
            match self.cfg.kind {
                SamplerKind::Ddim => self.ddim_update(x, at, an, step),
                SamplerKind::Ddpm => self.ddpm_update(x, t, at, an, step),
                SamplerKind::Plms => {
                    if history_len == 0 {
                        // Pseudo improved Euler: ε at (x, t) and at (x_prev, t_next), averaged.
                        let (sa, s1a, san, s1an) = coefs(at, an);
                        for ((o, &xv), &e) in self.tmp.iter_mut().zip(x.iter()).zip(&self.eps) {
                            *o = san * ((xv - s1a * e) / sa) + s1an * e;
                        }
                        let t_eval = if n > 1 { t_next } else { t };
                        eval_eps(d, &self.schedule, &self.tmp, t_eval, &mut self.t, &mut self.history[2])?;
                        for ((o, &e), &e2) in self.tmp.iter_mut().zip(&self.eps).zip(&self.history[2]) {
                            *o = 0.5 * (e + e2);
                        }
                    } else {
                        self.plms_combine(history_len);
                    }
                    let (sa, s1a, san, s1an) = coefs(at, an);
                    for (xv, &e) in x.iter_mut().zip(&self.tmp) {
                        *xv = san * ((*xv - s1a * e) / sa) + s1an * e;
                    }
                    self.history.rotate_right(1);
                    self.history[0].copy_from_slice(&self.eps);
                    history_len = (history_len + 1).min(3);
                }
                SamplerKind::DpmSolverPP => h_prev = self.dpm_update(x, at, an, h_prev),
            }
            progress(step + 1, n);
        }
        Ok(())
    }

    fn ddim_update(&mut self, x: &mut [f32], at: f64, an: f64, step: usize) {
        let c1 = f64::from(self.cfg.eta) * ((1.0 - at / an) * (1.0 - an) / (1.0 - at)).max(0.0).sqrt();
        let c2 = ((1.0 - an) - c1 * c1).max(0.0).sqrt();
        if c1 > 0.0 {
            noise::step_noise(self.cfg.seed, step, self.cfg.first_image, &mut self.noise, self.batch);
        }
        let (sa, s1a, san, _) = coefs(at, an);
        let (c1, c2) = (c1 as f32, c2 as f32);
        for (j, xv) in x.iter_mut().enumerate() {
            let e = self.eps[j];
            let x0 = (*xv - e * s1a) / sa;
            let z = if c1 > 0.0 { self.noise[j] } else { 0.0 };
            *xv = san * x0 + c1 * z + c2 * e;
        }
    }

    fn ddpm_update(&mut self, x: &mut [f32], t: i64, at: f64, an: f64, step: usize) {
        let beta = 1.0 - at / an;
        let (r_at, r_at1) = ((1.0 / at).sqrt() as f32, (1.0 / at - 1.0).sqrt() as f32);
        let c_x0 = (an.sqrt() * beta / (1.0 - at)) as f32;
        let c_x = ((1.0 - beta).sqrt() * (1.0 - an) / (1.0 - at)) as f32;
        let sigma = if t == 0 { 0.0 } else { beta.max(0.0).sqrt() as f32 };
        if sigma > 0.0 {
            noise::step_noise(self.cfg.seed, step, self.cfg.first_image, &mut self.noise, self.batch);
        }
        for (j, xv) in x.iter_mut().enumerate() {
            let mut x0 = r_at * *xv - r_at1 * self.eps[j];
            if let Some([lo, hi]) = self.cfg.clip_x0 {
                x0 = x0.clamp(lo, hi);
            }
            let z = if sigma > 0.0 { self.noise[j] } else { 0.0 };
            *xv = c_x0 * x0 + c_x * *xv + sigma * z;
        }
    }

    /// Adams–Bashforth combination of ε with the history, into `tmp`.
    fn plms_combine(&mut self, history_len: usize) {
        let [h0, h1, h2] = &self.history;
        let it = self.tmp.iter_mut().zip(&self.eps).zip(h0).zip(h1).zip(h2);
        for ((((o, &e), &p1), &p2), &p3) in it {
            *o = match history_len {
                1 => (3.0 * e - p1) / 2.0,
                2 => (23.0 * e - 16.0 * p1 + 5.0 * p2) / 12.0,
                _ => (55.0 * e - 59.0 * p1 + 37.0 * p2 - 9.0 * p3) / 24.0,
            };
        }
    }

    /// One DPM-Solver++(2M) step; returns the step's h for the next one (`None` after a
    /// duplicate timestep keeps the previous one).
    fn dpm_update(&mut self, x: &mut [f32], at: f64, an: f64, h_prev: Option<f64>) -> Option<f64> {
        let (a_s, s_s) = (at.sqrt(), (1.0 - at).sqrt());
        let (a_t, s_t) = (an.sqrt(), (1.0 - an).sqrt());
        let (a_s32, s_s32) = (a_s as f32, s_s as f32);
        for ((o, &xv), &e) in self.tmp.iter_mut().zip(x.iter()).zip(&self.eps) {
            *o = (xv - s_s32 * e) / a_s32;
        }
        if s_t == 0.0 {
            // The final step to ᾱ = 1: the first-order update is the x₀ estimate itself.
            x.copy_from_slice(&self.tmp);
            return None;
        }
        let h = (a_t / s_t).ln() - (a_s / s_s).ln();
        if h.abs() < 1e-12 {
            return h_prev; // a duplicate timestep: identity update
        }
        let ratio = (s_t / s_s) as f32;
        let coef = (a_t * ((-h).exp() - 1.0)) as f32;
        match h_prev {
            Some(hp) => {
                let r = hp / h;
                let (w0, w1) = ((1.0 + 0.5 / r) as f32, (0.5 / r) as f32);
                for ((xv, &x0), &p) in x.iter_mut().zip(&self.tmp).zip(&self.history[0]) {
                    *xv = ratio * *xv - coef * (w0 * x0 - w1 * p);
                }
            }
            None => {
                for (xv, &x0) in x.iter_mut().zip(&self.tmp) {
                    *xv = ratio * *xv - coef * x0;
                }
            }
        }
        self.history[0].copy_from_slice(&self.tmp);
        Some(h)
    }
}

/// `(√ᾱ_t, √(1−ᾱ_t), √ᾱ_next, √(1−ᾱ_next))` as f32.
fn coefs(at: f64, an: f64) -> (f32, f32, f32, f32) {
    (at.sqrt() as f32, (1.0 - at).sqrt() as f32, an.sqrt() as f32, (1.0 - an).sqrt() as f32)
}

#[cfg(test)]
mod tests;
