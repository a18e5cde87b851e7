//! The metadata section: an ordered list of typed key-value entries (`docs/FORMAT.md` §4).
//!
//! Keys are unique, non-empty UTF-8 strings. Keys registered in [`keys`] have a fixed value
//! type that readers check; other keys are free for producers (prefix them with something of
//! your own, e.g. `myorg.`).

use crate::codec::{Cursor, Encoder};
use crate::error::FormatError;
use crate::limits;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer.
    U64(u64),
    /// Signed integer.
    I64(i64),
    /// Floating point.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// A homogeneous array.
    Array(MetaArray),
}

/// A homogeneous metadata array (arrays do not nest).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    /// Unsigned integers.
    U64(Vec<u64>),
    /// Signed integers.
    I64(Vec<i64>),
    /// Floats.
    F64(Vec<f64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// Strings.
    Str(Vec<String>),
}

/// The type of a metadata value, as registered for well-known keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaType {
    /// [`MetaValue::U64`].
    U64,
    /// [`MetaValue::I64`].
    I64,
    /// [`MetaValue::F64`].
    F64,
    /// [`MetaValue::Bool`].
    Bool,
    /// [`MetaValue::Str`].
    Str,
    /// [`MetaValue::Array`] of [`MetaArray::U64`].
    ArrayU64,
    /// [`MetaValue::Array`] of [`MetaArray::F64`].
    ArrayF64,
    /// [`MetaValue::Array`] of [`MetaArray::Str`].
    ArrayStr,
}

impl MetaValue {
    /// The value's type, for checking registered keys.
    pub fn meta_type(&self) -> Option<MetaType> {
        Some(match self {
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::Str(_) => MetaType::Str,
            MetaValue::Array(MetaArray::U64(_)) => MetaType::ArrayU64,
            MetaValue::Array(MetaArray::F64(_)) => MetaType::ArrayF64,
            MetaValue::Array(MetaArray::Str(_)) => MetaType::ArrayStr,
            MetaValue::Array(_) => return None,
        })
    }
}

impl From<u64> for MetaValue {
    fn from(v: u64) -> Self {
        MetaValue::U64(v)
    }
}
impl From<i64> for MetaValue {
    fn from(v: i64) -> Self {
        MetaValue::I64(v)
    }
}
impl From<f64> for MetaValue {
    fn from(v: f64) -> Self {
        MetaValue::F64(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}
impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::Str(v.to_owned())
    }
}
impl From<String> for MetaValue {
    fn from(v: String) -> Self {
        MetaValue::Str(v)
    }
}
impl From<Vec<f64>> for MetaValue {
    fn from(v: Vec<f64>) -> Self {
        MetaValue::Array(MetaArray::F64(v))
    }
}
impl From<Vec<u64>> for MetaValue {
    fn from(v: Vec<u64>) -> Self {
        MetaValue::Array(MetaArray::U64(v))
    }
}
impl From<Vec<String>> for MetaValue {
    fn from(v: Vec<String>) -> Self {
        MetaValue::Array(MetaArray::Str(v))
    }
}

/// Registered keys and their types (`docs/FORMAT.md` §4.2).
pub mod keys {
    use super::MetaType;

    /// Name and version of the program that wrote the file, e.g. `edadm 0.1.0`.
    pub const PRODUCER: &str = "edadm.producer";
    /// Model family: `ddpm`, `diffusers`, `mnist-unet`, ...
    pub const MODEL_FAMILY: &str = "model.family";
    /// A human-readable model name.
    pub const MODEL_NAME: &str = "model.name";
    /// The importer's model configuration as JSON text (family-specific).
    pub const MODEL_CONFIG: &str = "model.config";
    /// SHA-256 (hex) of the checkpoint the model was imported from.
    pub const MODEL_SOURCE_SHA256: &str = "model.source_sha256";
    /// Data range of samples, `[lo, hi]`.
    pub const MODEL_DATA_RANGE: &str = "model.data_range";
    /// Name of the β schedule: `linear`, `scaled_linear`, `cosine`, ...
    pub const SCHEDULE_KIND: &str = "schedule.kind";
    /// Number of training timesteps T.
    pub const SCHEDULE_TIMESTEPS: &str = "schedule.timesteps";
    /// β_1 … β_T, exactly as the model was trained with.
    pub const SCHEDULE_BETAS: &str = "schedule.betas";
    /// Quantization method: `eda-dm`, `q-diffusion`, `ptq4dm`, `baseline`...
    pub const QUANT_METHOD: &str = "quant.method";
    /// Calibration-set selection: `tdac`, `uniform`, `ndtc`, `random`.
    pub const QUANT_CALIBRATION: &str = "quant.calibration";
    /// Reconstruction: `fbr`, `block`, `layer`, `none`.
    pub const QUANT_RECONSTRUCTION: &str = "quant.reconstruction";
    /// Default weight bits.
    pub const QUANT_WEIGHT_BITS: &str = "quant.weight_bits";
    /// Activation bits.
    pub const QUANT_ACT_BITS: &str = "quant.act_bits";
    /// TDAC's λ.
    pub const QUANT_LAMBDA: &str = "quant.lambda";
    /// FBR's γ.
    pub const QUANT_GAMMA: &str = "quant.gamma";
    /// TDAC's density ε.
    pub const QUANT_EPSILON: &str = "quant.epsilon";
    /// Reconstruction iterations per unit.
    pub const QUANT_ITERS: &str = "quant.iters";
    /// Reconstruction minibatch.
    pub const QUANT_BATCH: &str = "quant.batch";
    /// Learning rate of the AdaRound variables.
    pub const QUANT_LR_W: &str = "quant.lr_w";
    /// Learning rate of the activation steps.
    pub const QUANT_LR_A: &str = "quant.lr_a";
    /// Whether the decoder skip convs are split.
    pub const QUANT_SPLIT: &str = "quant.split";
    /// Seed of the quantization run.
    pub const QUANT_SEED: &str = "quant.seed";
    /// Activation range initialisation: `mse`, `mse-asym`, `minmax`, `percentile P`.
    pub const QUANT_ACT_INIT: &str = "quant.act_init";
    /// Time-step groups of the activation quantizers G (1: one set for every step).
    pub const QUANT_STEP_GROUPS: &str = "quant.step_groups";
    /// Whether conv and linear biases were corrected for the weights' rounding.
    pub const QUANT_BIAS_CORRECTION: &str = "quant.bias_correction";
    /// Whether the output layer kept f32 weights.
    pub const QUANT_FP_OUTPUT_LAYER: &str = "quant.fp_output_layer";
    /// Whether the layers reading the network input x_t kept it f32.
    pub const QUANT_FP_INPUT_LAYER: &str = "quant.fp_input_layer";
    /// Weight rounding before reconstruction: `nearest` or `gptq`.
    pub const QUANT_WEIGHT_ROUND: &str = "quant.weight_round";
    /// Layers whose inputs `quantize --fp-layers` kept f32, comma-separated.
    pub const QUANT_FP_LAYERS: &str = "quant.fp_layers";
    /// Layers `quantize --w8-layers` kept at 8-bit weights (comma-separated).
    pub const QUANT_W8_LAYERS: &str = "quant.w8_layers";
    /// How many of `quant.w8_layers` `quantize --w8-auto` chose by the weight sensitivity ranking.
    pub const QUANT_W8_AUTO: &str = "quant.w8_auto";
    /// Calibration samples N.
    pub const CALIB_SAMPLES: &str = "calib.samples";
    /// Sampler of the calibration trajectories: `ddim`, `ddpm`, `plms`, `dpm-solver++`.
    pub const CALIB_SAMPLER: &str = "calib.sampler";
    /// Sampler steps of the calibration trajectories.
    pub const CALIB_STEPS: &str = "calib.steps";
    /// Time-step skip of the calibration sampler: `uniform`, `quad`.
    pub const CALIB_SKIP: &str = "calib.skip";
    /// DDIM η of the calibration sampler.
    pub const CALIB_ETA: &str = "calib.eta";
    /// Seed of the calibration trajectories.
    pub const CALIB_SEED: &str = "calib.seed";
    /// SHA-256 (hex) of the saved calibration set.
    pub const CALIB_SHA256: &str = "calib.sha256";

    /// Every registered key with its type.
    pub const REGISTERED: &[(&str, MetaType)] = &[
        (PRODUCER, MetaType::Str),
        (MODEL_FAMILY, MetaType::Str),
        (MODEL_NAME, MetaType::Str),
        (MODEL_CONFIG, MetaType::Str),
        (MODEL_SOURCE_SHA256, MetaType::Str),
        (MODEL_DATA_RANGE, MetaType::ArrayF64),
        (SCHEDULE_KIND, MetaType::Str),
        (SCHEDULE_TIMESTEPS, MetaType::U64),
        (SCHEDULE_BETAS, MetaType::ArrayF64),
        (QUANT_METHOD, MetaType::Str),
        (QUANT_CALIBRATION, MetaType::Str),
        (QUANT_RECONSTRUCTION, MetaType::Str),
        (QUANT_WEIGHT_BITS, MetaType::U64),
        (QUANT_ACT_BITS, MetaType::U64),
        (QUANT_LAMBDA, MetaType::F64),
        (QUANT_GAMMA, MetaType::F64),
        (QUANT_EPSILON, MetaType::F64),
        (QUANT_ITERS, MetaType::U64),
        (QUANT_BATCH, MetaType::U64),
        (QUANT_LR_W, MetaType::F64),
        (QUANT_LR_A, MetaType::F64),
        (QUANT_SPLIT, MetaType::Bool),
        (QUANT_SEED, MetaType::U64),
        (QUANT_ACT_INIT, MetaType::Str),
        (QUANT_STEP_GROUPS, MetaType::U64),
        (QUANT_BIAS_CORRECTION, MetaType::Bool),
        (QUANT_FP_OUTPUT_LAYER, MetaType::Bool),
        (QUANT_FP_INPUT_LAYER, MetaType::Bool),
        (QUANT_WEIGHT_ROUND, MetaType::Str),
        (QUANT_FP_LAYERS, MetaType::Str),
        (QUANT_W8_LAYERS, MetaType::Str),
        (QUANT_W8_AUTO, MetaType::U64),
        (CALIB_SAMPLES, MetaType::U64),
        (CALIB_SAMPLER, MetaType::Str),
        (CALIB_STEPS, MetaType::U64),
        (CALIB_SKIP, MetaType::Str),
        (CALIB_ETA, MetaType::F64),
        (CALIB_SEED, MetaType::U64),
        (CALIB_SHA256, MetaType::Str),
    ];

    /// The registered type of `key`, if it is registered.
    pub fn registered_type(key: &str) -> Option<MetaType> {
        REGISTERED.iter().find(|(k, _)| *k == key).map(|(_, t)| *t)
    }
}

/// The metadata of a model: ordered, unique keys.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string value of `key`, if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The unsigned value of `key`, if it is one.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            MetaValue::U64(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean value of `key`, if it is one.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            MetaValue::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The float array of `key`, if it is one.
    pub fn get_f64_array(&self, key: &str) -> Option<&[f64]> {
        match self.get(key)? {
            MetaValue::Array(MetaArray::F64(v)) => Some(v),
            _ => None,
        }
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks keys, registered types and limits (`offsets`: the entries' byte offsets when
    /// parsed from a file).
    pub(crate) fn validate(&self, offsets: Option<&[u64]>) -> Result<(), FormatError> {
        let at = |i: usize| offsets.and_then(|o| o.get(i).copied()).unwrap_or(0);
        if self.entries.len() as u64 > limits::MAX_META_ENTRIES {
            return Err(FormatError::LimitExceeded {
                what: "metadata entry count",
                offset: at(0),
                value: self.entries.len() as u64,
                limit: limits::MAX_META_ENTRIES,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if k.is_empty() {
                return Err(FormatError::EmptyName { what: "metadata key", offset: at(i) });
            }
            let lim = |what, n: usize, limit: u64| {
                if n as u64 > limit {
                    Err(FormatError::LimitExceeded { what, offset: at(i), value: n as u64, limit })
                } else {
                    Ok(())
                }
            };
            lim("metadata key length", k.len(), limits::MAX_META_KEY_BYTES)?;
            match v {
                MetaValue::Str(s) => lim("metadata string length", s.len(), limits::MAX_META_STRING_BYTES)?,
                MetaValue::Array(a) => {
                    lim("metadata array length", array_len(a), limits::MAX_META_ARRAY_LEN)?;
                    if let MetaArray::Str(v) = a {
                        lim("metadata array length", v.len(), limits::MAX_META_STR_ARRAY_LEN)?;
                        for s in v {
                            lim("metadata string length", s.len(), limits::MAX_META_STRING_BYTES)?;
                        }
                    }
                }
                _ => {}
            }
            if !seen.insert(k.as_str()) {
                return Err(FormatError::DuplicateName { what: "metadata key", name: k.clone(), offset: at(i) });
            }
            if let Some(t) = keys::registered_type(k)
                && v.meta_type() != Some(t)
            {
                return Err(FormatError::BadValue {
                    what: "metadata value",
                    offset: at(i),
                    detail: format!("registered key {k:?} must have type {t:?}"),
                });
            }
            check_numbers(k, v).map_err(|detail| FormatError::BadValue {
                what: "metadata value",
                offset: at(i),
                detail,
            })?;
        }
        let betas = self.get_f64_array(keys::SCHEDULE_BETAS).map(<[f64]>::len);
        if let (Some(n), Some(t)) = (betas, self.get_u64(keys::SCHEDULE_TIMESTEPS))
            && n as u64 != t
        {
            let i = self.entries.iter().position(|(k, _)| k == keys::SCHEDULE_TIMESTEPS).unwrap_or(0);
            return Err(FormatError::BadValue {
                what: "metadata value",
                offset: at(i),
                detail: format!("{} = {t} but {} has {n} values", keys::SCHEDULE_TIMESTEPS, keys::SCHEDULE_BETAS),
            });
        }
        Ok(())
    }
}

/// The numeric rules of the registered keys whose values the runtime computes with (§4.2):
/// a data range of two finite numbers with lo < hi, betas in (0, 1).
fn check_numbers(key: &str, v: &MetaValue) -> Result<(), String> {
    match (key, v) {
        (keys::MODEL_DATA_RANGE, MetaValue::Array(MetaArray::F64(r))) => match r.as_slice() {
            [lo, hi] if lo.is_finite() && hi.is_finite() && lo < hi => Ok(()),
            _ => Err(format!("{key} must be two finite numbers lo < hi, found {r:?}")),
        },
        (keys::SCHEDULE_BETAS, MetaValue::Array(MetaArray::F64(b))) => {
            if b.is_empty() {
                return Err(format!("{key} is empty"));
            }
            match b.iter().position(|x| !(*x > 0.0 && *x < 1.0)) {
                Some(i) => Err(format!("{key}[{i}] = {} is not in (0, 1)", b[i])),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn array_len(a: &MetaArray) -> usize {
    match a {
        MetaArray::U64(v) => v.len(),
        MetaArray::I64(v) => v.len(),
        MetaArray::F64(v) => v.len(),
        MetaArray::Bool(v) => v.len(),
        MetaArray::Str(v) => v.len(),
    }
}

const T_U64: u8 = 0;
const T_I64: u8 = 1;
const T_F64: u8 = 2;
const T_BOOL: u8 = 3;
const T_STR: u8 = 4;
const T_ARRAY: u8 = 5;

pub(crate) fn encode_metadata(m: &Metadata) -> Vec<u8> {
    let mut e = Encoder::default();
    e.len32(m.entries.len());
    for (k, v) in &m.entries {
        e.str(k);
        match v {
            MetaValue::U64(x) => {
                e.u8(T_U64);
                e.u64(*x);
            }
            MetaValue::I64(x) => {
                e.u8(T_I64);
                e.i64(*x);
            }
            MetaValue::F64(x) => {
                e.u8(T_F64);
                e.f64(*x);
            }
            MetaValue::Bool(x) => {
                e.u8(T_BOOL);
                e.u8(u8::from(*x));
            }
            MetaValue::Str(s) => {
                e.u8(T_STR);
                e.str(s);
            }
            MetaValue::Array(a) => {
                e.u8(T_ARRAY);
                match a {
                    MetaArray::U64(v) => {
                        e.u8(T_U64);
                        e.len32(v.len());
                        v.iter().for_each(|x| e.u64(*x));
                    }
                    MetaArray::I64(v) => {
                        e.u8(T_I64);
                        e.len32(v.len());
                        v.iter().for_each(|x| e.i64(*x));
                    }
                    MetaArray::F64(v) => {
                        e.u8(T_F64);
                        e.len32(v.len());
                        v.iter().for_each(|x| e.f64(*x));
                    }
                    MetaArray::Bool(v) => {
                        e.u8(T_BOOL);
                        e.len32(v.len());
                        v.iter().for_each(|x| e.u8(u8::from(*x)));
                    }
                    MetaArray::Str(v) => {
                        e.u8(T_STR);
                        e.len32(v.len());
                        v.iter().for_each(|s| e.str(s));
                    }
                }
            }
        }
    }
    e.buf
}

fn bool_byte(c: &mut Cursor<'_>) -> Result<bool, FormatError> {
    let at = c.offset();
    match c.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(FormatError::BadValue { what: "metadata boolean", offset: at, detail: format!("{b} is not 0 or 1") }),
    }
}

fn string(c: &mut Cursor<'_>) -> Result<String, FormatError> {
    Ok(c.str("metadata string", limits::MAX_META_STRING_BYTES)?.0.to_owned())
}

pub(crate) fn decode_metadata(bytes: &[u8], base: u64) -> Result<Metadata, FormatError> {
    let mut c = Cursor::new(bytes, base, "metadata section");
    let n = c.count("metadata entry count", limits::MAX_META_ENTRIES, 6)?;
    let mut entries = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for _ in 0..n {
        offsets.push(c.offset());
        let (key, _) = c.str("metadata key", limits::MAX_META_KEY_BYTES)?;
        let at = c.offset();
        let value = match c.u8()? {
            T_U64 => MetaValue::U64(c.u64()?),
            T_I64 => MetaValue::I64(c.i64()?),
            T_F64 => MetaValue::F64(c.f64()?),
            T_BOOL => MetaValue::Bool(bool_byte(&mut c)?),
            T_STR => MetaValue::Str(string(&mut c)?),
            T_ARRAY => {
                let at = c.offset();
                let et = c.u8()?;
                let (min, lim) = match et {
                    T_U64 | T_I64 | T_F64 => (8, limits::MAX_META_ARRAY_LEN),
                    T_BOOL => (1, limits::MAX_META_ARRAY_LEN),
                    T_STR => (4, limits::MAX_META_STR_ARRAY_LEN),
                    _ => {
                        return Err(FormatError::UnknownCode {
                            what: "metadata array element type",
                            code: et.into(),
                            offset: at,
                        });
                    }
                };
                let n = c.count("metadata array length", lim, min)?;
                MetaValue::Array(match et {
                    T_U64 => MetaArray::U64((0..n).map(|_| c.u64()).collect::<Result<_, _>>()?),
                    T_I64 => MetaArray::I64((0..n).map(|_| c.i64()).collect::<Result<_, _>>()?),
                    T_F64 => MetaArray::F64((0..n).map(|_| c.f64()).collect::<Result<_, _>>()?),
                    T_BOOL => MetaArray::Bool((0..n).map(|_| bool_byte(&mut c)).collect::<Result<_, _>>()?),
                    _ => MetaArray::Str((0..n).map(|_| string(&mut c)).collect::<Result<_, _>>()?),
                })
            }
            t => {
                return Err(FormatError::UnknownCode { what: "metadata value type", code: t.into(), offset: at });
            }
        };
        entries.push((key.to_owned(), value));
    }
    c.finish()?;
    let m = Metadata { entries };
    m.validate(Some(&offsets))?;
    Ok(m)
}
