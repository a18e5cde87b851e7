//! Classifier-free guidance: `ε = ε_u + s·(ε_c − ε_u)` from one batched evaluation of the
//! unconditional and conditional inputs (`[uncond; cond]`, as LDM does).

use edadm_format::graph::Prediction;

use super::Denoiser;
use crate::error::{Result, RuntimeError};

/// A network that takes a conditioning context.
pub trait ConditionalDenoiser {
    /// Images per evaluation (twice the guided batch).
    fn batch(&self) -> usize;
    /// Floats per batch of samples.
    fn sample_len(&self) -> usize;
    /// Floats of context per image.
    fn context_len(&self) -> usize;
    /// What the output means.
    fn prediction(&self) -> Prediction;
    /// Evaluates on `x` at `t` with `context` (`batch · context_len` floats) into `out`.
    fn eval_cond(&mut self, x: &[f32], t: &[f32], context: &[f32], out: &mut [f32]) -> Result<()>;
}

/// A [`Denoiser`] that applies classifier-free guidance to a conditional network evaluated on
/// `[uncond; cond]` pairs. Buffers are allocated once.
#[derive(Debug)]
pub struct Guided<'a, D> {
    inner: &'a mut D,
    scale: f32,
    context: Vec<f32>,
    x2: Vec<f32>,
    t2: Vec<f32>,
    out2: Vec<f32>,
}

impl<'a, D: ConditionalDenoiser> Guided<'a, D> {
    /// Guidance with `scale` for the images whose contexts are `cond` (one per image) and the
    /// unconditional context `uncond` (one, shared by all images).
    pub fn new(inner: &'a mut D, scale: f32, cond: &[f32], uncond: &[f32]) -> Result<Self> {
        let (b2, len, cl) = (inner.batch(), inner.sample_len(), inner.context_len());
        if b2 % 2 != 0 {
            return Err(RuntimeError::Sampler(format!("guidance needs an even batch, the network has {b2}")));
        }
        let b = b2 / 2;
        if cond.len() != b * cl || uncond.len() != cl {
            return Err(RuntimeError::Sampler(format!(
                "guidance contexts: {} and {} floats for {b} images of context {cl}",
                cond.len(),
                uncond.len()
            )));
        }
        let mut context = Vec::with_capacity(b2 * cl);
        for _ in 0..b {
            context.extend_from_slice(uncond);
        }
        context.extend_from_slice(cond);
        Ok(Guided { inner, scale, context, x2: vec![0.0; len], t2: vec![0.0; b2], out2: vec![0.0; len] })
    }
}

impl<D: ConditionalDenoiser> Denoiser for Guided<'_, D> {
    fn batch(&self) -> usize {
        self.inner.batch() / 2
    }
    fn sample_len(&self) -> usize {
        self.inner.sample_len() / 2
    }
    fn prediction(&self) -> Prediction {
        self.inner.prediction()
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> Result<()> {
        let half = x.len();
        self.x2[..half].copy_from_slice(x);
        self.x2[half..].copy_from_slice(x);
        let b = t.len();
        self.t2[..b].copy_from_slice(t);
        self.t2[b..].copy_from_slice(t);
        self.inner.eval_cond(&self.x2, &self.t2, &self.context, &mut self.out2)?;
        let (u, c) = self.out2.split_at(half);
        for ((o, &eu), &ec) in out.iter_mut().zip(u).zip(c) {
            *o = eu + self.scale * (ec - eu);
        }
        Ok(())
    }
}
