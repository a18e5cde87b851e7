//! Samplers against values computed independently (Python/numpy for the reference formulas of
//! METHOD.md §5.3, see the comments), with a toy denoiser `ε(x) = 0.5·x + 0.1`.

use super::*;

/// `ε = 0.5·x + 0.1` (or the equivalent x₀ / v prediction), counting calls.
struct Toy {
    batch: usize,
    len: usize,
    calls: usize,
    prediction: Prediction,
    schedule: Schedule,
}

impl Denoiser for Toy {
    fn batch(&self) -> usize {
        self.batch
    }
    fn sample_len(&self) -> usize {
        self.len
    }
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> Result<()> {
        self.calls += 1;
        let a = self.schedule.alpha_bar(t[0] as i64);
        let (sa, s1) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        for (o, &xv) in out.iter_mut().zip(x) {
            let e = 0.5 * xv + 0.1;
            *o = match self.prediction {
                Prediction::Epsilon => e,
                Prediction::X0 => (xv - s1 * e) / sa,
                Prediction::V => (e - s1 * xv) / sa,
            };
        }
        Ok(())
    }
}

fn toy(prediction: Prediction) -> (Toy, Schedule) {
    let s = Schedule::from_betas(&[0.1, 0.2, 0.3, 0.4]).unwrap();
    (Toy { batch: 2, len: 6, calls: 0, prediction, schedule: s.clone() }, s)
}

fn run(kind: SamplerKind, steps: usize, prediction: Prediction) -> (f32, usize) {
    let (mut d, s) = toy(prediction);
    let cfg = SamplerConfig { kind, steps, skip: Skip::Uniform, eta: 0.0, clip_x0: None, seed: 0, first_image: 0 };
    let mut sampler = Sampler::new(&s, cfg, 2, 6).unwrap();
    let mut x = vec![1.0f32; 6];
    let mut seen = Vec::new();
    sampler.run(&mut d, &mut x, &mut |a, b| seen.push((a, b))).unwrap();
    assert!(x.iter().all(|&v| v == x[0]));
    assert_eq!(seen.last(), Some(&(sampler.num_steps(), sampler.num_steps())));
    assert_eq!(d.calls, sampler.model_calls());
    (x[0], d.calls)
}

#[test]
fn quad_and_uniform_timesteps_match_the_ddim_repository() {
    // numpy: [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), 100) ** 2]
    let q = timesteps(Skip::Quad, 100, 1000).unwrap();
    assert_eq!(q.len(), 100);
    assert_eq!(&q[..12], &[0, 0, 0, 0, 1, 2, 2, 3, 5, 6, 8, 9]);
    assert_eq!(&q[97..], &[768, 783, 800]);
    let distinct: std::collections::BTreeSet<_> = q.iter().collect();
    assert_eq!(q.len() - distinct.len(), 4, "four duplicate timesteps");
    assert_eq!(timesteps(Skip::Uniform, 3, 10).unwrap(), vec![0, 3, 6, 9]);
    assert_eq!(timesteps(Skip::Uniform, 100, 1000).unwrap().last(), Some(&990));
    assert!(timesteps(Skip::Uniform, 0, 10).is_err());
    assert!(timesteps(Skip::Quad, 11, 10).is_err());
}

#[test]
fn linear_schedule_is_rounded_to_f32_like_the_trained_model() {
    // numpy: linspace(1e-4, 0.02, 1000, float64).astype(float32); cumprod(1 − β)[999]
    let s = Schedule::linear(1e-4, 0.02, 1000).unwrap();
    assert_eq!(s.betas()[0], 9.999999747378752e-05);
    assert_eq!(s.betas()[1], 0.00011991991777904332);
    assert_eq!(s.betas()[999], 0.019999999552965164);
    assert!((s.alpha_bar(999) - 4.035829772844594e-05).abs() < 1e-15);
    assert_eq!(s.alpha_bar(-1), 1.0);
    assert!(Schedule::from_betas(&[0.1, 1.0]).is_err());
    assert!(Schedule::from_betas(&[]).is_err());
}

#[test]
fn ddim_plms_and_dpm_solver_match_reference_values() {
    // Python reference, β = [0.1, 0.2, 0.3, 0.4], x_T = 1, ε = 0.5x + 0.1:
    // DDIM uniform 2 steps (seq 0, 2): 0.8198099605159797
    // PLMS 4 steps: 0.8789061691542297; DPM-Solver++(2M) 4 steps: 0.8719865686318853
    for p in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let (x, calls) = run(SamplerKind::Ddim, 2, p);
        assert!((x - 0.819_81).abs() < 2e-6, "ddim {p:?}: {x}");
        assert_eq!(calls, 2);
    }
    let (x, calls) = run(SamplerKind::Plms, 4, Prediction::Epsilon);
    assert!((x - 0.878_906_2).abs() < 2e-6, "plms {x}");
    assert_eq!(calls, 5, "PLMS evaluates twice in its first step");
    let (x, calls) = run(SamplerKind::DpmSolverPP, 4, Prediction::Epsilon);
    assert!((x - 0.871_986_57).abs() < 2e-6, "dpm-solver++ {x}");
    assert_eq!(calls, 4);
}

#[test]
fn ddpm_matches_the_posterior_formula_with_its_own_noise() {
    let (mut d, s) = toy(Prediction::Epsilon);
    let cfg = SamplerConfig {
        kind: SamplerKind::Ddpm,
        steps: 4,
        skip: Skip::Uniform,
        eta: 0.0,
        // An asymmetric range: the clip follows the model's data range, not a fixed [−1, 1].
        clip_x0: Some([-0.5, 1.0]),
        seed: 5,
        first_image: 3,
    };
    let mut sampler = Sampler::new(&s, cfg, 2, 6).unwrap();
    let mut x: Vec<f32> = (0..6).map(|i| 0.3 * i as f32 - 0.7).collect();
    let mut want: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    sampler.run(&mut d, &mut x, &mut |_, _| {}).unwrap();
    // Independent f64 recomputation: β̃ = 1 − ᾱ_t/ᾱ_next, x₀ clipped, posterior mean, σ = √β̃
    // except at t = 0. For t = 3 → 2 the coefficients are 0.40706970984630386,
    // 0.5507453382221557 and σ = 0.6324555320336759 (Python).
    let mut clipped = 0;
    for (step, t) in [3i64, 2, 1, 0].into_iter().enumerate() {
        let (at, an) = (s.alpha_bar(t), s.alpha_bar(t - 1));
        let beta = 1.0 - at / an;
        let (cx0, cx) = (an.sqrt() * beta / (1.0 - at), (1.0 - beta).sqrt() * (1.0 - an) / (1.0 - at));
        if t == 3 {
            assert!((cx0 - 0.40706970984630386).abs() < 1e-12 && (cx - 0.5507453382221557).abs() < 1e-12);
        }
        let mut z = vec![0f32; 6];
        noise::step_noise(5, step, 3, &mut z, 2);
        for (w, &zv) in want.iter_mut().zip(&z) {
            let e = 0.5 * *w + 0.1;
            let raw = (1.0 / at).sqrt() * *w - (1.0 / at - 1.0).sqrt() * e;
            let x0 = raw.clamp(-0.5, 1.0);
            clipped += usize::from(x0 != raw);
            let sigma = if t == 0 { 0.0 } else { beta.sqrt() };
            *w = cx0 * x0 + cx * *w + sigma * f64::from(zv);
        }
    }
    assert!(clipped > 0, "the test must exercise the clip");
    for (g, w) in x.iter().zip(&want) {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn duplicate_timesteps_are_identity_updates_that_still_call_the_network() {
    let s = Schedule::linear(1e-4, 0.02, 1000).unwrap();
    let mut d = Toy { batch: 1, len: 3, calls: 0, prediction: Prediction::Epsilon, schedule: s.clone() };
    let cfg = SamplerConfig::ddim(100, Skip::Quad);
    let mut sampler = Sampler::new(&s, cfg, 1, 3).unwrap();
    assert_eq!(sampler.timesteps()[..4], [0, 0, 0, 0]);
    // Track x after each step through a denoiser wrapper: the steps 0→0 must leave x unchanged.
    struct Spy<'a> {
        inner: &'a mut Toy,
        xs: Vec<f32>,
    }
    impl Denoiser for Spy<'_> {
        fn batch(&self) -> usize {
            1
        }
        fn sample_len(&self) -> usize {
            3
        }
        fn prediction(&self) -> Prediction {
            Prediction::Epsilon
        }
        fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> Result<()> {
            self.xs.push(x[0]);
            self.xs.push(t[0]);
            self.inner.eval(x, t, out)
        }
    }
    let mut spy = Spy { inner: &mut d, xs: Vec::new() };
    let mut x = vec![0.25f32; 3];
    sampler.run(&mut spy, &mut x, &mut |_, _| {}).unwrap();
    let calls: Vec<(f32, f32)> = spy.xs.chunks(2).map(|c| (c[0], c[1])).collect();
    assert_eq!(calls.len(), 100);
    // The last four calls are at t = 0, 0, 0, 0: the first three steps go 0 → 0 (identity).
    let tail = &calls[96..];
    assert!(tail.iter().all(|&(_, t)| t == 0.0));
    for w in tail.windows(2) {
        assert!((w[0].0 - w[1].0).abs() < 1e-6, "identity step changed x: {:?}", w);
    }
}

#[test]
fn bad_sampler_settings_are_errors() {
    let s = Schedule::from_betas(&[0.1, 0.2]).unwrap();
    let mut cfg = SamplerConfig::ddim(2, Skip::Uniform);
    cfg.eta = -1.0;
    assert!(Sampler::new(&s, cfg, 1, 4).is_err());
    cfg.eta = 0.5;
    cfg.kind = SamplerKind::Plms;
    assert!(Sampler::new(&s, cfg, 1, 4).is_err());
    assert!(Sampler::new(&s, SamplerConfig::ddim(3, Skip::Uniform), 1, 4).is_err());
    assert!(Sampler::new(&s, SamplerConfig::ddim(2, Skip::Uniform), 3, 4).is_err());
    let (mut d, _) = toy(Prediction::Epsilon);
    let mut sampler = Sampler::new(&s, SamplerConfig::ddim(2, Skip::Uniform), 1, 3).unwrap();
    assert!(sampler.run(&mut d, &mut [0.0; 3], &mut |_, _| {}).is_err(), "batch mismatch");
}

struct CondToy;

impl ConditionalDenoiser for CondToy {
    fn batch(&self) -> usize {
        4
    }
    fn sample_len(&self) -> usize {
        8
    }
    fn context_len(&self) -> usize {
        1
    }
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn eval_cond(&mut self, x: &[f32], _t: &[f32], context: &[f32], out: &mut [f32]) -> Result<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = x[i] + context[i / 2];
        }
        Ok(())
    }
}

#[test]
fn guidance_mixes_conditional_and_unconditional_predictions() {
    let mut net = CondToy;
    let mut g = Guided::new(&mut net, 3.0, &[10.0, 20.0], &[1.0]).unwrap();
    assert_eq!((g.batch(), g.sample_len()), (2, 4));
    let x = [0.5, 0.5, -1.0, -1.0];
    let mut out = [0f32; 4];
    g.eval(&x, &[7.0, 7.0], &mut out).unwrap();
    // ε_u = x + 1, ε_c = x + {10, 20}: ε = ε_u + 3(ε_c − ε_u).
    assert_eq!(out, [0.5 + 1.0 + 27.0, 0.5 + 1.0 + 27.0, -1.0 + 1.0 + 57.0, -1.0 + 1.0 + 57.0]);
    assert!(Guided::new(&mut net, 3.0, &[10.0], &[1.0]).is_err());
}
