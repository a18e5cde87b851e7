//! A diffusers `UNet2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`, as
//! in `google/ddpm-*`) imported as the DDPM UNet it is, with diffusers key names. The noise
//! schedule comes from the pipeline's `scheduler/scheduler_config.json` (or `--config`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::builder::WeightDType;
use super::checkpoint::Checkpoint;
use super::config::read_config;
use super::ddpm::{AttnNames, DdpmConfig, ResNames, UnetNames, build};
use super::{ImportError, ImportOptions, Imported};
use edadm_format::graph::Prediction;

/// diffusers key names for a UNet with `levels` resolution levels.
#[derive(Clone, Copy, Debug)]
pub struct DiffusersNames {
    /// Number of resolution levels.
    pub levels: usize,
}

impl UnetNames for DiffusersNames {
    fn family(&self) -> &'static str {
        "diffusers"
    }
    fn temb(&self, i: usize) -> String {
        format!("time_embedding.linear_{}", i + 1)
    }
    fn conv_in(&self) -> String {
        "conv_in".into()
    }
    fn down_block(&self, level: usize, j: usize) -> String {
        format!("down_blocks.{level}.resnets.{j}")
    }
    fn down_attn(&self, level: usize, j: usize) -> String {
        format!("down_blocks.{level}.attentions.{j}")
    }
    fn downsample(&self, level: usize) -> String {
        format!("down_blocks.{level}.downsamplers.0.conv")
    }
    fn mid_block(&self, i: usize) -> String {
        format!("mid_block.resnets.{}", i - 1)
    }
    fn mid_attn(&self) -> String {
        "mid_block.attentions.0".into()
    }
    fn up_block(&self, level: usize, j: usize) -> String {
        format!("up_blocks.{}.resnets.{j}", self.levels - 1 - level)
    }
    fn up_attn(&self, level: usize, j: usize) -> String {
        format!("up_blocks.{}.attentions.{j}", self.levels - 1 - level)
    }
    fn upsample(&self, level: usize) -> String {
        format!("up_blocks.{}.upsamplers.0.conv", self.levels - 1 - level)
    }
    fn norm_out(&self) -> String {
        "conv_norm_out".into()
    }
    fn conv_out(&self) -> String {
        "conv_out".into()
    }
    fn res(&self) -> ResNames {
        ResNames {
            norm1: "norm1",
            conv1: "conv1",
            temb_proj: "time_emb_proj",
            norm2: "norm2",
            conv2: "conv2",
            nin_shortcut: "conv_shortcut",
            conv_shortcut: "conv_shortcut",
        }
    }
    fn attn(&self, ckpt: &Checkpoint, prefix: &str) -> AttnNames {
        // Current diffusers names, or the deprecated ones older checkpoints still carry.
        let new = ckpt.has(&format!("{prefix}.to_q.weight"));
        let n = |a: &str, b: &str| format!("{prefix}.{}", if new { a } else { b });
        AttnNames {
            norm: format!("{prefix}.group_norm"),
            q: n("to_q", "query"),
            k: n("to_k", "key"),
            v: n("to_v", "value"),
            proj_out: n("to_out.0", "proj_attn"),
        }
    }
}

fn cfg_err(source: &Path, detail: impl Into<String>) -> ImportError {
    ImportError::Config { origin: source.display().to_string(), detail: detail.into() }
}

/// Maps a `UNet2DModel` config onto [`DdpmConfig`], rejecting options this architecture does
/// not have.
pub fn unet_config(v: &Value, source: &Path) -> Result<DdpmConfig, ImportError> {
    let class = v.get("_class_name").and_then(Value::as_str).unwrap_or("UNet2DModel");
    if class != "UNet2DModel" {
        return Err(cfg_err(source, format!("a {class} is not supported (UNet2DModel only)")));
    }
    let num = |k: &str, d: Option<f64>| -> Result<f64, ImportError> {
        match v.get(k) {
            Some(Value::Null) | None => d.ok_or_else(|| cfg_err(source, format!("missing {k}"))),
            Some(x) => x.as_f64().ok_or_else(|| cfg_err(source, format!("{k} must be a number"))),
        }
    };
    let strs = |k: &str| -> Result<Vec<String>, ImportError> {
        v.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| cfg_err(source, format!("{k} must be a list of strings")))
    };
    let expect = |k: &str, want: &[&str], default: &str| -> Result<(), ImportError> {
        let got = v.get(k).and_then(Value::as_str).unwrap_or(default);
        if want.contains(&got) { Ok(()) } else { Err(cfg_err(source, format!("{k} = {got:?} is not supported"))) }
    };
    expect("act_fn", &["silu", "swish"], "silu")?;
    expect("time_embedding_type", &["positional"], "positional")?;
    expect("resnet_time_scale_shift", &["default"], "default")?;
    expect("mid_block_type", &["UNetMidBlock2D"], "UNetMidBlock2D")?;
    if v.get("center_input_sample").and_then(Value::as_bool).unwrap_or(false) {
        return Err(cfg_err(source, "center_input_sample = true is not supported"));
    }
    if v.get("class_embed_type").is_some_and(|x| !x.is_null())
        || v.get("num_class_embeds").is_some_and(|x| !x.is_null())
    {
        return Err(cfg_err(source, "class-conditional UNet2DModels are not supported"));
    }
    if num("mid_block_scale_factor", Some(1.0))? != 1.0 {
        return Err(cfg_err(source, "mid_block_scale_factor other than 1 is not supported"));
    }
    if !v.get("add_attention").and_then(Value::as_bool).unwrap_or(true) {
        return Err(cfg_err(source, "add_attention = false is not supported"));
    }
    let boc: Vec<usize> = v
        .get("block_out_channels")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| cfg_err(source, "block_out_channels must be a list of integers"))?;
    let ch = *boc.first().ok_or_else(|| cfg_err(source, "block_out_channels is empty"))?;
    if ch == 0 || boc.iter().any(|c| c % ch != 0) {
        return Err(cfg_err(source, format!("block_out_channels {boc:?} must be multiples of the first")));
    }
    if let Some(d) = v.get("time_embedding_dim").and_then(Value::as_u64)
        && d as usize != 4 * ch
    {
        return Err(cfg_err(source, "time_embedding_dim other than 4 × block_out_channels[0] is not supported"));
    }
    let attention_head_dim = match v.get("attention_head_dim") {
        None | Some(Value::Null) => None,
        Some(x) => Some(x.as_u64().ok_or_else(|| cfg_err(source, "attention_head_dim must be an integer"))? as usize),
    };
    let down = strs("down_block_types")?;
    let up = strs("up_block_types")?;
    if down.len() != boc.len() || up.len() != boc.len() {
        return Err(cfg_err(source, "down_block_types, up_block_types and block_out_channels differ in length"));
    }
    let res = num("sample_size", None)? as usize;
    let mut attn_resolutions = Vec::new();
    for (l, kind) in down.iter().enumerate() {
        let attn = match kind.as_str() {
            "DownBlock2D" => false,
            "AttnDownBlock2D" => true,
            other => return Err(cfg_err(source, format!("down block type {other} is not supported"))),
        };
        let up_kind = &up[boc.len() - 1 - l];
        let up_attn = match up_kind.as_str() {
            "UpBlock2D" => false,
            "AttnUpBlock2D" => true,
            other => return Err(cfg_err(source, format!("up block type {other} is not supported"))),
        };
        if attn != up_attn {
            return Err(cfg_err(
                source,
                format!("attention at level {l} in the encoder but not in the decoder (or the reverse)"),
            ));
        }
        if attn {
            attn_resolutions.push(res >> l);
        }
    }
    let in_channels = num("in_channels", Some(3.0))? as usize;
    let cfg = DdpmConfig {
        in_channels,
        out_ch: num("out_channels", Some(in_channels as f64))? as usize,
        ch,
        ch_mult: boc.iter().map(|c| c / ch).collect(),
        num_res_blocks: num("layers_per_block", Some(2.0))? as usize,
        attn_resolutions,
        dropout: 0.0,
        resamp_with_conv: true,
        conv_shortcut: false,
        resolution: res,
        groups: num("norm_num_groups", Some(32.0))? as usize,
        eps: num("norm_eps", Some(1e-5))? as f32,
        flip_sin_to_cos: v.get("flip_sin_to_cos").and_then(Value::as_bool).unwrap_or(true),
        freq_shift_one: match num("freq_shift", Some(0.0))? {
            1.0 => true,
            0.0 => false,
            f => return Err(cfg_err(source, format!("freq_shift {f} is not supported (0 or 1)"))),
        },
        downsample_padding: num("downsample_padding", Some(1.0))? as usize,
        attention_head_dim,
        beta_schedule: String::new(),
        beta_start: 0.0,
        beta_end: 0.0,
        num_timesteps: 0,
        betas: None,
    };
    cfg.check(&source.display().to_string())?;
    Ok(cfg)
}

/// The β of a diffusers scheduler config, and its prediction type.
pub fn scheduler(v: &Value, source: &Path) -> Result<(String, Vec<f64>, Prediction), ImportError> {
    let t = v.get("num_train_timesteps").and_then(Value::as_u64).unwrap_or(1000) as usize;
    let start = v.get("beta_start").and_then(Value::as_f64).unwrap_or(1e-4);
    let end = v.get("beta_end").and_then(Value::as_f64).unwrap_or(0.02);
    let kind = v.get("beta_schedule").and_then(Value::as_str).unwrap_or("linear").to_string();
    let lin = edadm_runtime::sampler::linspace;
    let betas: Vec<f64> = if let Some(tb) = v.get("trained_betas").and_then(Value::as_array) {
        tb.iter()
            .map(|x| x.as_f64().ok_or_else(|| cfg_err(source, "trained_betas must be numbers")))
            .collect::<Result<_, _>>()?
    } else {
        match kind.as_str() {
            "linear" => lin(start, end, t),
            "scaled_linear" => lin(start.sqrt(), end.sqrt(), t).into_iter().map(|x| x * x).collect(),
            "squaredcos_cap_v2" => {
                let ab = |x: f64| ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..t).map(|i| (1.0 - ab((i + 1) as f64 / t as f64) / ab(i as f64 / t as f64)).min(0.999)).collect()
            }
            other => return Err(cfg_err(source, format!("beta_schedule {other:?} is not supported"))),
        }
    };
    let prediction = match v.get("prediction_type").and_then(Value::as_str).unwrap_or("epsilon") {
        "epsilon" => Prediction::Epsilon,
        "v_prediction" => Prediction::V,
        "sample" => Prediction::X0,
        other => return Err(cfg_err(source, format!("prediction_type {other:?} is not supported"))),
    };
    Ok((kind, betas.into_iter().map(|b| f64::from(b as f32)).collect(), prediction))
}

/// Imports a diffusers UNet folder (or a pipeline folder with a `unet/` subfolder).
pub fn import(dir: &Path, opts: &ImportOptions, dtype: WeightDType) -> Result<Imported, ImportError> {
    let mut notes = Vec::new();
    let unet_dir: PathBuf =
        if dir.join("unet").join("config.json").is_file() { dir.join("unet") } else { dir.to_path_buf() };
    let config_path = unet_dir.join("config.json");
    if !config_path.is_file() {
        return Err(ImportError::Checkpoint {
            origin: dir.display().to_string(),
            detail: "not a diffusers model folder: no config.json (or unet/config.json)".into(),
        });
    }
    let weights = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
        .iter()
        .map(|f| unet_dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| ImportError::Checkpoint {
            origin: unet_dir.display().to_string(),
            detail: "no diffusion_pytorch_model.safetensors or .bin".into(),
        })?;
    let mut cfg = unet_config(&read_config(&config_path)?, &config_path)?;
    let sched_path = opts.config.clone().or_else(|| {
        [unet_dir.join("../scheduler/scheduler_config.json"), dir.join("scheduler/scheduler_config.json")]
            .into_iter()
            .find(|p| p.is_file())
    });
    let (kind, betas, prediction) = match &sched_path {
        Some(p) => scheduler(&read_config(p)?, p)?,
        None => {
            notes.push("no scheduler_config.json found next to the model: using the DDPM linear schedule (β 1e-4 → 0.02, 1000 steps); pass --config to choose".into());
            scheduler(&Value::Object(Default::default()), Path::new("<default>"))?
        }
    };
    cfg.beta_schedule = kind;
    cfg.num_timesteps = betas.len();
    cfg.betas = Some(betas);
    let mut ckpt = Checkpoint::open(&weights)?;
    ckpt.select_model(opts.key.as_deref(), "conv_in.weight")?;
    let names = DiffusersNames { levels: cfg.ch_mult.len() };
    let mut file = build(&mut ckpt, &cfg, &names, dtype)?;
    if prediction != Prediction::Epsilon {
        let g = file.graph_mut();
        g.outputs[0].prediction = prediction;
    }
    Ok(Imported { file, notes })
}
