//! The training noise schedule and the time-step sequences samplers visit.

use crate::error::{Result, RuntimeError};

/// ᾱ for every training timestep, derived from the β the model was trained with.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl Schedule {
    /// From β₀…β_{T−1}; each must be in (0, 1).
    pub fn from_betas(betas: &[f64]) -> Result<Schedule> {
        if betas.is_empty() {
            return Err(RuntimeError::Sampler("the noise schedule is empty".into()));
        }
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(RuntimeError::Sampler(format!("beta[{i}] = {b} is not in (0, 1)")));
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut a = 1.0f64;
        for b in betas {
            a *= 1.0 - b;
            alphas_cumprod.push(a);
        }
        Ok(Schedule { betas: betas.to_vec(), alphas_cumprod })
    }

    /// The DDPM linear schedule: `linspace(start, end, T)` in f64, rounded to f32 as the model
    /// saw it during training (the ddim repository's `get_beta_schedule` then `.float()`).
    pub fn linear(start: f64, end: f64, timesteps: usize) -> Result<Schedule> {
        Schedule::from_betas(&linear_betas(start, end, timesteps))
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Whether the schedule is empty (never, for a constructed schedule).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// β of every timestep.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ(t) = Π_{s ≤ t}(1 − β_s); ᾱ(−1) = 1.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 { 1.0 } else { self.alphas_cumprod[t as usize] }
    }
}

/// `linspace(start, end, n)` as numpy computes it, then rounded to f32.
pub fn linear_betas(start: f64, end: f64, n: usize) -> Vec<f64> {
    linspace(start, end, n).into_iter().map(|b| f64::from(b as f32)).collect()
}

/// numpy's `linspace(start, stop, num)` (endpoint included, the last value exactly `stop`).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// How sampler steps are spread over the training timesteps (METHOD.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `range(0, T, T // steps)`.
    Uniform,
    /// `int(linspace(0, √(0.8·T), steps)²)`: dense near t = 0, with duplicates.
    Quad,
}

impl Skip {
    /// Parses `uniform` or `quad`.
    pub fn from_name(s: &str) -> Option<Skip> {
        match s {
            "uniform" => Some(Skip::Uniform),
            "quad" => Some(Skip::Quad),
            _ => None,
        }
    }

    /// `uniform` or `quad`.
    pub fn name(self) -> &'static str {
        match self {
            Skip::Uniform => "uniform",
            Skip::Quad => "quad",
        }
    }
}

/// The ascending timestep sequence of the ddim repository (`seq`), duplicates included: the
/// sampler visits it in reverse, each step going from `seq[i]` to `seq[i − 1]` (ᾱ(−1) = 1
/// after the first element).
pub fn timesteps(skip: Skip, steps: usize, num_timesteps: usize) -> Result<Vec<i64>> {
    if steps == 0 || steps > num_timesteps {
        return Err(RuntimeError::Sampler(format!("{steps} steps for a schedule of {num_timesteps} timesteps")));
    }
    Ok(match skip {
        Skip::Uniform => (0..num_timesteps as i64).step_by(num_timesteps / steps).collect(),
        Skip::Quad => {
            linspace(0.0, (num_timesteps as f64 * 0.8).sqrt(), steps).into_iter().map(|x| (x * x) as i64).collect()
        }
    })
}
