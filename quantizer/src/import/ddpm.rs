//! The Ho et al. DDPM UNet (`ddim/models/diffusion.py::Model`, pytorch_diffusion key names;
//! METHOD.md §5.1) as a graph, with reconstruction units in the forward order of §3.1.

use std::path::Path;

use edadm_format::FileBuilder;
use edadm_format::graph::*;
use edadm_format::metadata::keys;
use serde_json::Value;

use super::ImportError;
use super::builder::{GraphBuilder, WeightDType};
use super::checkpoint::Checkpoint;
use super::config::{ddim_betas, read_config};

/// The built-in configurations.
pub const PRESETS: &[&str] = &["cifar10", "fmnist-ddpm"];

/// Architecture and schedule of a DDPM UNet.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DdpmConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Base channels.
    pub ch: usize,
    /// Channel multiplier per level.
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions with attention after each residual block.
    pub attn_resolutions: Vec<usize>,
    /// Dropout (inactive at inference; recorded).
    pub dropout: f64,
    /// Convolutions in the up/downsamplers (else nearest upsampling / average pooling only).
    pub resamp_with_conv: bool,
    /// 3×3 instead of 1×1 shortcut convolutions.
    pub conv_shortcut: bool,
    /// Image size.
    pub resolution: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm ε.
    pub eps: f32,
    /// Embedding order `[cos, sin]` instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// Frequency denominator `half − 1` (DDPM) instead of `half`.
    pub freq_shift_one: bool,
    /// 0: downsampling pads right/bottom by one then convolves without padding (DDPM); 1:
    /// the stride-2 convolution pads by one on every side.
    pub downsample_padding: usize,
    /// Channels per attention head (`None`: one head per block, the DDPM AttnBlock).
    pub attention_head_dim: Option<usize>,
    /// β schedule name.
    pub beta_schedule: String,
    /// First β.
    pub beta_start: f64,
    /// Last β.
    pub beta_end: f64,
    /// Training timesteps.
    pub num_timesteps: usize,
    /// Precomputed β (schedules not expressible by the fields above, e.g. from diffusers).
    #[serde(skip)]
    pub betas: Option<Vec<f64>>,
}

fn cfg_err(source: &str, detail: impl Into<String>) -> ImportError {
    ImportError::Config { origin: source.into(), detail: detail.into() }
}

impl DdpmConfig {
    /// A built-in configuration: `cifar10` (the official CIFAR-10 DDPM, ddim `configs/cifar10.yml`)
    /// or `fmnist-ddpm` (`shared/models/fmnist-ddpm/config.json`).
    pub fn preset(name: &str) -> Result<DdpmConfig, ImportError> {
        let base = DdpmConfig {
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            resamp_with_conv: true,
            conv_shortcut: false,
            resolution: 32,
            groups: 32,
            eps: 1e-6,
            flip_sin_to_cos: false,
            freq_shift_one: true,
            downsample_padding: 0,
            attention_head_dim: None,
            beta_schedule: "linear".into(),
            beta_start: 1e-4,
            beta_end: 0.02,
            num_timesteps: 1000,
            betas: None,
        };
        match name {
            "cifar10" => Ok(base),
            "fmnist-ddpm" => Ok(DdpmConfig { in_channels: 1, out_ch: 1, ch: 32, ch_mult: vec![1, 2, 2], ..base }),
            other => Err(cfg_err(other, format!("unknown preset (presets: {})", PRESETS.join(", ")))),
        }
    }

    /// Reads a ddim-repository configuration (`model`, `data`, `diffusion` sections), JSON or
    /// YAML.
    pub fn from_file(path: &Path) -> Result<DdpmConfig, ImportError> {
        let v = read_config(path)?;
        Self::from_value(&v, &path.display().to_string())
    }

    /// From a parsed ddim-repository configuration.
    pub fn from_value(v: &Value, source: &str) -> Result<DdpmConfig, ImportError> {
        let get = |sec: &str, key: &str| -> Result<&Value, ImportError> {
            v.get(sec).and_then(|s| s.get(key)).ok_or_else(|| cfg_err(source, format!("missing {sec}.{key}")))
        };
        let uint = |sec: &str, key: &str| -> Result<usize, ImportError> {
            get(sec, key)?
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| cfg_err(source, format!("{sec}.{key} must be a non-negative integer")))
        };
        let float = |sec: &str, key: &str| -> Result<f64, ImportError> {
            get(sec, key)?.as_f64().ok_or_else(|| cfg_err(source, format!("{sec}.{key} must be a number")))
        };
        let list = |sec: &str, key: &str| -> Result<Vec<usize>, ImportError> {
            get(sec, key)?
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| cfg_err(source, format!("{sec}.{key} must be a list of integers")))
        };
        let flag = |sec: &str, key: &str, default: bool| -> Result<bool, ImportError> {
            match v.get(sec).and_then(|s| s.get(key)) {
                None => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| cfg_err(source, format!("{sec}.{key} must be a boolean"))),
            }
        };
        let resolution = match v.get("model").and_then(|m| m.get("resolution")) {
            Some(r) => {
                r.as_u64().map(|x| x as usize).ok_or_else(|| cfg_err(source, "model.resolution must be an integer"))?
            }
            None => uint("data", "image_size")?,
        };
        let cfg = DdpmConfig {
            in_channels: uint("model", "in_channels")?,
            out_ch: uint("model", "out_ch")?,
            ch: uint("model", "ch")?,
            ch_mult: list("model", "ch_mult")?,
            num_res_blocks: uint("model", "num_res_blocks")?,
            attn_resolutions: list("model", "attn_resolutions")?,
            dropout: v.get("model").and_then(|m| m.get("dropout")).and_then(Value::as_f64).unwrap_or(0.0),
            resamp_with_conv: flag("model", "resamp_with_conv", true)?,
            conv_shortcut: flag("model", "conv_shortcut", false)?,
            resolution,
            groups: v.get("model").and_then(|m| m.get("groupnorm_groups")).and_then(Value::as_u64).unwrap_or(32)
                as usize,
            eps: v.get("model").and_then(|m| m.get("groupnorm_eps")).and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            flip_sin_to_cos: false,
            freq_shift_one: true,
            downsample_padding: 0,
            attention_head_dim: None,
            beta_schedule: get("diffusion", "beta_schedule")?
                .as_str()
                .ok_or_else(|| cfg_err(source, "diffusion.beta_schedule must be a string"))?
                .to_string(),
            beta_start: float("diffusion", "beta_start")?,
            beta_end: float("diffusion", "beta_end")?,
            num_timesteps: uint("diffusion", "num_diffusion_timesteps")?,
            betas: None,
        };
        cfg.check(source)?;
        if cfg.num_timesteps == 0 {
            return Err(cfg_err(source, "diffusion.num_diffusion_timesteps must be positive"));
        }
        Ok(cfg)
    }

    /// Checks the configuration describes a buildable network (the schedule is checked when
    /// its β are computed).
    pub fn check(&self, source: &str) -> Result<(), ImportError> {
        let bad = |d: String| Err(cfg_err(source, d));
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return bad(format!("ch_mult {:?} must be non-empty with positive entries", self.ch_mult));
        }
        if self.ch == 0 || self.in_channels == 0 || self.out_ch == 0 || self.num_res_blocks == 0 {
            return bad("ch, in/out channels and num_res_blocks must be positive".into());
        }
        if self.ch < 2 {
            return bad("ch must be at least 2 for the sinusoidal embedding".into());
        }
        if self.groups == 0
            || self.ch_mult.iter().any(|m| !(self.ch * m).is_multiple_of(self.groups))
            || !self.ch.is_multiple_of(self.groups)
        {
            return bad(format!("GroupNorm with {} groups does not divide every level's channels", self.groups));
        }
        let levels = self.ch_mult.len();
        if self.resolution == 0 || !self.resolution.is_multiple_of(1 << (levels - 1)) {
            return bad(format!("resolution {} is not divisible by 2^{}", self.resolution, levels - 1));
        }
        Ok(())
    }

    fn betas(&self) -> Result<Vec<f64>, ImportError> {
        let b = match &self.betas {
            Some(b) => b.clone(),
            None => ddim_betas(&self.beta_schedule, self.beta_start, self.beta_end, self.num_timesteps)
                .map_err(|d| cfg_err("diffusion", d))?,
        };
        edadm_runtime::sampler::Schedule::from_betas(&b).map_err(|e| cfg_err("diffusion", e.to_string()))?;
        Ok(b)
    }
}

/// Key names of the parts of a ResnetBlock.
#[derive(Clone, Copy, Debug)]
pub struct ResNames {
    /// First GroupNorm.
    pub norm1: &'static str,
    /// First convolution.
    pub conv1: &'static str,
    /// Timestep projection.
    pub temb_proj: &'static str,
    /// Second GroupNorm.
    pub norm2: &'static str,
    /// Second convolution.
    pub conv2: &'static str,
    /// The 1×1 shortcut convolution.
    pub nin_shortcut: &'static str,
    /// The 3×3 shortcut convolution (`conv_shortcut` configurations).
    pub conv_shortcut: &'static str,
}

/// Key names of the parts of an attention block.
#[derive(Clone, Debug)]
pub struct AttnNames {
    /// GroupNorm.
    pub norm: String,
    /// Query projection.
    pub q: String,
    /// Key projection.
    pub k: String,
    /// Value projection.
    pub v: String,
    /// Output projection.
    pub proj_out: String,
}

/// Where a UNet's modules live in its checkpoint.
pub trait UnetNames {
    /// The family name recorded in the metadata.
    fn family(&self) -> &'static str;
    /// The two timestep MLP linears (`i` = 0, 1).
    fn temb(&self, i: usize) -> String;
    /// The input convolution.
    fn conv_in(&self) -> String;
    /// Residual block `j` of encoder level `level`.
    fn down_block(&self, level: usize, j: usize) -> String;
    /// Attention `j` of encoder level `level`.
    fn down_attn(&self, level: usize, j: usize) -> String;
    /// The downsampling convolution after level `level`.
    fn downsample(&self, level: usize) -> String;
    /// Middle residual block `i` (1 or 2).
    fn mid_block(&self, i: usize) -> String;
    /// Middle attention.
    fn mid_attn(&self) -> String;
    /// Residual block `j` of decoder level `level` (levels numbered as in the encoder).
    fn up_block(&self, level: usize, j: usize) -> String;
    /// Attention `j` of decoder level `level`.
    fn up_attn(&self, level: usize, j: usize) -> String;
    /// The upsampling convolution of decoder level `level`.
    fn upsample(&self, level: usize) -> String;
    /// The final GroupNorm.
    fn norm_out(&self) -> String;
    /// The output convolution.
    fn conv_out(&self) -> String;
    /// Names inside a residual block.
    fn res(&self) -> ResNames;
    /// Names inside the attention block at `prefix` (may depend on which keys exist).
    fn attn(&self, ckpt: &Checkpoint, prefix: &str) -> AttnNames;
}

/// pytorch_diffusion / ddim-repository names (`temb.dense.0`, `down.1.attn.0.q`, ...).
#[derive(Clone, Copy, Debug)]
pub struct DdpmNames;

impl UnetNames for DdpmNames {
    fn family(&self) -> &'static str {
        "ddpm"
    }
    fn temb(&self, i: usize) -> String {
        format!("temb.dense.{i}")
    }
    fn conv_in(&self) -> String {
        "conv_in".into()
    }
    fn down_block(&self, level: usize, j: usize) -> String {
        format!("down.{level}.block.{j}")
    }
    fn down_attn(&self, level: usize, j: usize) -> String {
        format!("down.{level}.attn.{j}")
    }
    fn downsample(&self, level: usize) -> String {
        format!("down.{level}.downsample.conv")
    }
    fn mid_block(&self, i: usize) -> String {
        format!("mid.block_{i}")
    }
    fn mid_attn(&self) -> String {
        "mid.attn_1".into()
    }
    fn up_block(&self, level: usize, j: usize) -> String {
        format!("up.{level}.block.{j}")
    }
    fn up_attn(&self, level: usize, j: usize) -> String {
        format!("up.{level}.attn.{j}")
    }
    fn upsample(&self, level: usize) -> String {
        format!("up.{level}.upsample.conv")
    }
    fn norm_out(&self) -> String {
        "norm_out".into()
    }
    fn conv_out(&self) -> String {
        "conv_out".into()
    }
    fn res(&self) -> ResNames {
        ResNames {
            norm1: "norm1",
            conv1: "conv1",
            temb_proj: "temb_proj",
            norm2: "norm2",
            conv2: "conv2",
            nin_shortcut: "nin_shortcut",
            conv_shortcut: "conv_shortcut",
        }
    }
    fn attn(&self, _ckpt: &Checkpoint, prefix: &str) -> AttnNames {
        AttnNames {
            norm: format!("{prefix}.norm"),
            q: format!("{prefix}.q"),
            k: format!("{prefix}.k"),
            v: format!("{prefix}.v"),
            proj_out: format!("{prefix}.proj_out"),
        }
    }
}

struct Net<'b, 'c> {
    b: &'b mut GraphBuilder<'c>,
    cfg: &'b DdpmConfig,
    names: &'b dyn UnetNames,
    temb: ValueId,
}

impl Net<'_, '_> {
    fn silu(&mut self, name: &str, x: ValueId) -> ValueId {
        self.b.node(name, Op::Silu, &[x])
    }

    /// A 1×1 conv whose weight may be stored as a Linear `[o, i]` (diffusers attention).
    fn conv1x1(&mut self, prefix: &str, x: ValueId, c: usize) -> Result<ValueId, ImportError> {
        let weight = self.b.param_reshaped(&format!("{prefix}.weight"), &[c, c, 1, 1], &[&[c, c]], true)?;
        let bias = Some(self.b.param(&format!("{prefix}.bias"), &[c], false)?);
        let op = Op::Conv2d(Conv2d {
            in_channels: c as u32,
            out_channels: c as u32,
            kernel: [1, 1],
            stride: [1, 1],
            padding: Padding::default(),
            dilation: [1, 1],
            groups: 1,
            weight,
            bias,
        });
        Ok(self.b.node(prefix, op, &[x]))
    }

    /// ResnetBlock: GN → swish → conv3×3 → +temb_proj(swish(temb)) → GN → swish → conv3×3, plus
    /// the (1×1 or 3×3) shortcut when channels change. One reconstruction unit.
    fn resblock(&mut self, prefix: &str, x: ValueId, cin: usize, cout: usize) -> Result<ValueId, ImportError> {
        let n = self.names.res();
        let (groups, eps, temb_ch) = (self.cfg.groups, self.cfg.eps, 4 * self.cfg.ch);
        self.b.begin_unit(prefix, UnitKind::ResBlock);
        let h = self.b.group_norm(&format!("{prefix}.{}", n.norm1), x, cin, groups, eps)?;
        let h = self.silu(&format!("{prefix}.act1"), h);
        let h = self.b.conv(&format!("{prefix}.{}", n.conv1), h, cin, cout, 3, 1, Padding::uniform(1))?;
        let t = self.b.linear(&format!("{prefix}.{}", n.temb_proj), self.temb, temb_ch, cout)?;
        let h = self.b.node(&format!("{prefix}.temb_add"), Op::Add, &[h, t]);
        let h = self.b.group_norm(&format!("{prefix}.{}", n.norm2), h, cout, groups, eps)?;
        let h = self.silu(&format!("{prefix}.act2"), h);
        let h = self.b.conv(&format!("{prefix}.{}", n.conv2), h, cout, cout, 3, 1, Padding::uniform(1))?;
        let skip = if cin == cout {
            x
        } else if self.cfg.conv_shortcut {
            self.b.conv(&format!("{prefix}.{}", n.conv_shortcut), x, cin, cout, 3, 1, Padding::uniform(1))?
        } else {
            self.b.conv(&format!("{prefix}.{}", n.nin_shortcut), x, cin, cout, 1, 1, Padding::default())?
        };
        let out = self.b.node(&format!("{prefix}.add"), Op::Add, &[skip, h]);
        self.b.end_unit();
        Ok(out)
    }

    /// AttnBlock: GN → q, k, v (1×1) → softmax(qᵀk·C^−½) → v·Pᵀ → proj_out → +x. One unit.
    fn attnblock(&mut self, prefix: &str, x: ValueId, c: usize) -> Result<ValueId, ImportError> {
        let n = self.names.attn(self.b.ckpt(), prefix);
        let head_dim = self.cfg.attention_head_dim.unwrap_or(c);
        if head_dim == 0 || !c.is_multiple_of(head_dim) {
            return Err(cfg_err(prefix, format!("attention head dim {head_dim} does not divide {c} channels")));
        }
        self.b.begin_unit(prefix, UnitKind::AttentionBlock);
        let h = self.b.group_norm(&n.norm, x, c, self.cfg.groups, self.cfg.eps)?;
        let q = self.conv1x1(&n.q, h, c)?;
        let k = self.conv1x1(&n.k, h, c)?;
        let v = self.conv1x1(&n.v, h, c)?;
        let op = Op::Attention(Attention {
            channels: c as u32,
            heads: (c / head_dim) as u32,
            scale: (head_dim as f32).powf(-0.5),
            scale_placement: ScalePlacement::AfterProduct,
            layout: AttentionLayout::Spatial,
        });
        let a = self.b.node(&format!("{prefix}.attention"), op, &[q, k, v]);
        let o = self.conv1x1(&n.proj_out, a, c)?;
        let out = self.b.node(&format!("{prefix}.add"), Op::Add, &[x, o]);
        self.b.end_unit();
        Ok(out)
    }

    /// A layer unit around one convolution.
    fn conv_unit(
        &mut self,
        prefix: &str,
        x: ValueId,
        c: usize,
        stride: usize,
        pad: Padding,
    ) -> Result<ValueId, ImportError> {
        self.b.begin_unit(prefix, UnitKind::Layer);
        let y = self.b.conv(prefix, x, c, c, 3, stride, pad)?;
        self.b.end_unit();
        Ok(y)
    }
}

/// Builds the graph of a DDPM UNet from `ckpt`, which must hold exactly its parameters.
pub fn build(
    ckpt: &mut Checkpoint,
    cfg: &DdpmConfig,
    names: &dyn UnetNames,
    dtype: WeightDType,
) -> Result<FileBuilder<'static>, ImportError> {
    cfg.check(names.family())?;
    let betas = cfg.betas()?;
    let mut b = GraphBuilder::new(ckpt, dtype);
    let (ch, temb_ch, levels) = (cfg.ch, 4 * cfg.ch, cfg.ch_mult.len());
    let res = cfg.resolution as u32;
    let x = b.input(InputKind::Sample { channels: cfg.in_channels as u32, height: res, width: res });
    let t = b.input(InputKind::Timestep);

    // Timestep embedding: sinusoid → dense.0 → swish → dense.1; every block uses swish(temb).
    let sinusoid = b.node(
        "temb.sinusoid",
        Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal {
            dim: ch as u32,
            order: if cfg.flip_sin_to_cos { SinusoidOrder::CosSin } else { SinusoidOrder::SinCos },
            denominator: if cfg.freq_shift_one { FreqDenominator::HalfMinusOne } else { FreqDenominator::Half },
            max_period: 10000.0,
        }),
        &[t],
    );
    let (d0, d1) = (names.temb(0), names.temb(1));
    b.begin_unit(&d0, UnitKind::Layer);
    let h = b.linear(&d0, sinusoid, ch, temb_ch)?;
    b.end_unit();
    let h = b.node("temb.act", Op::Silu, &[h]);
    b.begin_unit(&d1, UnitKind::Layer);
    let temb = b.linear(&d1, h, temb_ch, temb_ch)?;
    b.end_unit();
    let temb = b.node("temb.act_out", Op::Silu, &[temb]);

    let mut net = Net { b: &mut b, cfg, names, temb };
    let conv_in = names.conv_in();
    net.b.begin_unit(&conv_in, UnitKind::Layer);
    let h0 = net.b.conv(&conv_in, x, cfg.in_channels, ch, 3, 1, Padding::uniform(1))?;
    net.b.end_unit();

    // Encoder.
    let mut hs = vec![(h0, ch)];
    let mut cur_res = cfg.resolution;
    let mut block_in = ch;
    for level in 0..levels {
        let block_out = ch * cfg.ch_mult[level];
        for j in 0..cfg.num_res_blocks {
            let mut h =
                net.resblock(&names.down_block(level, j), hs.last().expect("non-empty").0, block_in, block_out)?;
            block_in = block_out;
            if cfg.attn_resolutions.contains(&cur_res) {
                h = net.attnblock(&names.down_attn(level, j), h, block_in)?;
            }
            hs.push((h, block_in));
        }
        if level != levels - 1 {
            let prev = hs.last().expect("non-empty").0;
            let h = if cfg.resamp_with_conv {
                let name = names.downsample(level);
                if cfg.downsample_padding == 0 {
                    let pad = Padding { top: 0, bottom: 1, left: 0, right: 1 };
                    let p =
                        net.b.node(&format!("{name}.pad"), Op::Pad(Pad::Fixed { padding: pad, value: 0.0 }), &[prev]);
                    net.conv_unit(&name, p, block_in, 2, Padding::default())?
                } else {
                    net.conv_unit(&name, prev, block_in, 2, Padding::uniform(cfg.downsample_padding as u32))?
                }
            } else {
                let pool = AvgPool2d { kernel: [2, 2], stride: [2, 2] };
                net.b.node(&format!("down.{level}.downsample.pool"), Op::AvgPool2d(pool), &[prev])
            };
            hs.push((h, block_in));
            cur_res /= 2;
        }
    }

    // Middle.
    let mut h = hs.last().expect("non-empty").0;
    h = net.resblock(&names.mid_block(1), h, block_in, block_in)?;
    h = net.attnblock(&names.mid_attn(), h, block_in)?;
    h = net.resblock(&names.mid_block(2), h, block_in, block_in)?;

    // Decoder: each block consumes concat([h, skip]).
    for level in (0..levels).rev() {
        let block_out = ch * cfg.ch_mult[level];
        for j in 0..=cfg.num_res_blocks {
            let (skip, skip_ch) = hs.pop().expect("one skip per decoder block");
            let prefix = names.up_block(level, j);
            let cat = net.b.node(&format!("{prefix}.concat"), Op::Concat { axis: 1 }, &[h, skip]);
            h = net.resblock(&prefix, cat, block_in + skip_ch, block_out)?;
            block_in = block_out;
            if cfg.attn_resolutions.contains(&cur_res) {
                h = net.attnblock(&names.up_attn(level, j), h, block_in)?;
            }
        }
        if level != 0 {
            let name = names.upsample(level);
            h = net.b.node(&format!("{name}.upsample"), Op::UpsampleNearest { scale: 2 }, &[h]);
            if cfg.resamp_with_conv {
                h = net.conv_unit(&name, h, block_in, 1, Padding::uniform(1))?;
            }
            cur_res *= 2;
        }
    }
    debug_assert!(hs.is_empty());

    // Head: GN → swish (glue) → conv_out (a layer unit).
    let h = net.b.group_norm(&names.norm_out(), h, block_in, cfg.groups, cfg.eps)?;
    let h = net.b.node("norm_out.act", Op::Silu, &[h]);
    let conv_out = names.conv_out();
    net.b.begin_unit(&conv_out, UnitKind::Layer);
    let out = net.b.conv(&conv_out, h, block_in, cfg.out_ch, 3, 1, Padding::uniform(1))?;
    net.b.end_unit();

    let mut meta = edadm_format::Metadata::new();
    meta.insert(keys::MODEL_FAMILY, names.family());
    meta.insert(keys::MODEL_CONFIG, serde_json::to_string(cfg).unwrap_or_default());
    meta.insert(keys::MODEL_DATA_RANGE, vec![-1.0, 1.0]);
    meta.insert(keys::SCHEDULE_KIND, cfg.beta_schedule.clone());
    meta.insert(keys::SCHEDULE_TIMESTEPS, betas.len() as u64);
    meta.insert(keys::SCHEDULE_BETAS, betas);
    b.finish(out, Prediction::Epsilon, meta)
}
