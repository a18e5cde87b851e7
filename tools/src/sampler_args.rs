//! The sampler options `sample`, `eval`, `calibrate` and `quantize` share: one flattened
//! argument struct, so the four commands spell and check them alike. Only the time-step
//! spacing's default differs per command (uniform where images are sampled for viewing or
//! scoring, quad where calibration trajectories are sampled, as EDA-DM's code does).

use edadm_runtime::sampler::{SamplerConfig, SamplerKind, Skip};

/// `--sampler --steps --skip --eta`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SamplerArgs {
    /// Sampler.
    #[arg(long, default_value = "ddim", value_parser = ["ddim", "ddpm", "plms", "dpm-solver++"])]
    pub sampler: String,
    /// Sampler steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Time-step spacing, `uniform` or `quad` (default: `uniform` for sample and eval, `quad` for
    /// calibrate and quantize's calibration trajectories).
    #[arg(long, value_parser = ["uniform", "quad"])]
    pub skip: Option<String>,
    /// DDIM η (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f32,
}

impl SamplerArgs {
    /// DDIM with `steps` steps, η 0 and the spacing `skip`.
    pub fn ddim(steps: usize, skip: Skip) -> Self {
        SamplerArgs { sampler: "ddim".into(), steps, skip: Some(skip.name().into()), eta: 0.0 }
    }

    /// The spacing given, else the command's `default`.
    pub fn skip_or(&self, default: Skip) -> Skip {
        self.skip.as_deref().map_or(default, |s| Skip::from_name(s).expect("clap checked the skip"))
    }

    /// The sampler's configuration (`default_skip` where `--skip` is not given).
    pub fn config(&self, default_skip: Skip, clip_x0: Option<[f32; 2]>, seed: u64) -> SamplerConfig {
        SamplerConfig {
            kind: SamplerKind::from_name(&self.sampler).expect("clap checked the sampler"),
            steps: self.steps,
            skip: self.skip_or(default_skip),
            eta: self.eta,
            clip_x0,
            seed,
            first_image: 0,
        }
    }

    /// `ddim 100 steps (quad skip, eta 0)`.
    pub fn describe(&self, default_skip: Skip) -> String {
        format!("{} {} steps ({} skip, eta {})", self.sampler, self.steps, self.skip_or(default_skip).name(), self.eta)
    }
}
