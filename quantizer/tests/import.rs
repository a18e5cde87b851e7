//! Importers: PyTorch-format checkpoints (written without torch, nested `state_dict`, f32 and
//! f16), a diffusers folder, and clear errors for missing, misshapen and unexpected keys.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use edadm_quantizer::import::checkpoint::Tensor;
use edadm_quantizer::import::ddpm::{DdpmConfig, DdpmNames, build};
use edadm_quantizer::import::{Checkpoint, Family, ImportError, ImportOptions, WeightDType, import, mnist_unet};
use edadm_runtime::Model;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edadm-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn to_model(imported: edadm_format::FileBuilder<'_>) -> Model {
    Model::from_bytes(imported.to_bytes().unwrap()).unwrap()
}

fn eval(model: &Model, x: &[f32], t: &[f32]) -> Vec<f32> {
    run(model, t.len(), x, t, &[]).output().to_vec()
}

/// Writes `safetensors` as a PyTorch zip checkpoint with the shared torch-free writer.
fn write_torch(shared: &Path, src: &Path, dst: &Path, dtype: &str, wrap: Option<&str>) -> bool {
    let script = format!(
        r#"
import sys, json, struct, array
sys.path.insert(0, {tools:?})
import write_torch_zip as W
b = open({src:?}, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
ts = {{}}
for k, v in h.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']
    a = array.array('f')
    a.frombytes(b[8 + n + s:8 + n + e])
    ts[k] = (list(a), v['shape'], {dtype:?})
W.save({dst:?}, ts, wrap_key={wrap}, extra={{'epoch': 7}} if {wrap} else None)
"#,
        tools = shared.join("tools/torchfmt").display().to_string(),
        src = src.display().to_string(),
        dst = dst.display().to_string(),
        wrap = wrap.map_or("None".to_string(), |w| format!("{w:?}")),
    );
    match std::process::Command::new("python3").arg("-c").arg(&script).status() {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("the torch-format writer failed: {s}"),
        Err(e) => {
            println!("skipped: torch-format fixture (python3 unavailable: {e})");
            false
        }
    }
}

#[test]
fn torch_zip_checkpoints_nested_and_f16_import_like_safetensors() {
    let Some(shared) = shared("torch_zip_checkpoints") else { return };
    let dir = shared.join("models/mnist-unet");
    let g = dir.join("golden.safetensors");
    let (_, x) = golden(&g, "x");
    let (_, t) = golden(&g, "t");
    let (_, eps) = golden(&g, "eps");
    let opts = ImportOptions::default();
    let reference =
        eval(&to_model(import(Family::MnistUnet, &dir.join("model.safetensors"), &opts).unwrap().file), &x, &t);

    let d = scratch("torch");
    let nested = d.join("nested.ckpt");
    if !write_torch(&shared, &dir.join("model.safetensors"), &nested, "f32", Some("state_dict")) {
        return;
    }
    let got = eval(&to_model(import(Family::MnistUnet, &nested, &opts).unwrap().file), &x, &t);
    assert_eq!(got, reference, "a nested f32 state_dict imports exactly");

    let half = d.join("half.pth");
    assert!(write_torch(&shared, &dir.join("model.safetensors"), &half, "f16", None));
    let got = eval(&to_model(import(Family::MnistUnet, &half, &opts).unwrap().file), &x, &t);
    let err = rel_err(&got, &eps);
    println!("mnist-unet from f16 weights: error {err:.2e} of max |eps|");
    assert!(err < 2e-2, "f16 weights: error {err}");
    assert!(err > 0.0);

    // --dtype f16 output: half the weight bytes, close results.
    let f16 =
        import(Family::MnistUnet, &dir.join("model.safetensors"), &ImportOptions { f16: true, ..Default::default() })
            .unwrap();
    let f32_len =
        import(Family::MnistUnet, &dir.join("model.safetensors"), &opts).unwrap().file.to_bytes().unwrap().len();
    let m16 = to_model(f16.file);
    assert!(m16.file().bytes().len() < f32_len * 6 / 10, "f16 file is about half the size");
    assert!(rel_err(&eval(&m16, &x, &t), &eps) < 2e-2);
    std::fs::remove_dir_all(&d).unwrap();
}

/// fmnist-ddpm key → diffusers key (with the deprecated attention names for `down.1.attn.1`).
fn diffusers_key(k: &str) -> String {
    let levels = 3;
    let parts: Vec<&str> = k.split('.').collect();
    let attn = |rest: &[&str], old: bool| -> String {
        let map = |p: &str| match (p, old) {
            ("norm", _) => "group_norm",
            ("q", false) => "to_q",
            ("k", false) => "to_k",
            ("v", false) => "to_v",
            ("proj_out", false) => "to_out.0",
            ("q", true) => "query",
            ("k", true) => "key",
            ("v", true) => "value",
            ("proj_out", true) => "proj_attn",
            _ => panic!("{p}"),
        };
        format!("{}.{}", map(rest[0]), rest[1])
    };
    let res = |rest: &[&str]| -> String {
        let p = match rest[0] {
            "temb_proj" => "time_emb_proj",
            "nin_shortcut" => "conv_shortcut",
            o => o,
        };
        format!("{p}.{}", rest[1])
    };
    match parts.as_slice() {
        ["temb", "dense", i, rest @ ..] => {
            format!("time_embedding.linear_{}.{}", i.parse::<usize>().unwrap() + 1, rest.join("."))
        }
        ["down", l, "block", j, rest @ ..] => format!("down_blocks.{l}.resnets.{j}.{}", res(rest)),
        ["down", l, "attn", j, rest @ ..] => {
            format!("down_blocks.{l}.attentions.{j}.{}", attn(rest, *l == "1" && *j == "1"))
        }
        ["down", l, "downsample", "conv", p] => format!("down_blocks.{l}.downsamplers.0.conv.{p}"),
        ["mid", "block_1", rest @ ..] => format!("mid_block.resnets.0.{}", res(rest)),
        ["mid", "block_2", rest @ ..] => format!("mid_block.resnets.1.{}", res(rest)),
        ["mid", "attn_1", rest @ ..] => format!("mid_block.attentions.0.{}", attn(rest, false)),
        ["up", l, "block", j, rest @ ..] => {
            format!("up_blocks.{}.resnets.{j}.{}", levels - 1 - l.parse::<usize>().unwrap(), res(rest))
        }
        ["up", l, "attn", j, rest @ ..] => {
            format!("up_blocks.{}.attentions.{j}.{}", levels - 1 - l.parse::<usize>().unwrap(), attn(rest, false))
        }
        ["up", l, "upsample", "conv", p] => {
            format!("up_blocks.{}.upsamplers.0.conv.{p}", levels - 1 - l.parse::<usize>().unwrap())
        }
        ["norm_out", p] => format!("conv_norm_out.{p}"),
        _ => k.to_string(),
    }
}

#[test]
fn a_diffusers_folder_computes_what_the_ddpm_checkpoint_computes() {
    let Some(shared) = shared("diffusers folder") else { return };
    let src = shared.join("models/fmnist-ddpm");
    let d = scratch("diffusers");
    let pipeline = d.join("pipeline");
    let unet = pipeline.join("unet");
    std::fs::create_dir_all(&unet).unwrap();
    std::fs::create_dir_all(pipeline.join("scheduler")).unwrap();
    let tensors = Checkpoint::open(&src.join("model.safetensors")).unwrap().into_tensors().unwrap();
    let mut renamed: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (k, t) in tensors {
        let nk = diffusers_key(&k);
        // diffusers attention projections are Linear layers: [C, C].
        let shape =
            if nk.contains("attentions") && t.shape.len() == 4 { t.shape[..2].to_vec() } else { t.shape.clone() };
        renamed.insert(nk, (shape, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = renamed
        .iter()
        .map(|(k, (s, b))| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(unet.join("diffusion_pytorch_model.safetensors"), safetensors::serialize(views, None).unwrap())
        .unwrap();
    std::fs::write(
        unet.join("config.json"),
        r#"{"_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
            "block_out_channels": [32, 64, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 32, "norm_eps": 1e-06,
            "flip_sin_to_cos": false, "freq_shift": 1, "downsample_padding": 0, "act_fn": "silu",
            "time_embedding_type": "positional", "attention_head_dim": null, "center_input_sample": false}"#,
    )
    .unwrap();
    std::fs::write(
        pipeline.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}"#,
    )
    .unwrap();

    let g = src.join("golden.safetensors");
    let (_, x) = golden(&g, "x");
    let (_, t) = golden(&g, "t");
    let ddpm = import(
        Family::Ddpm,
        &src.join("model.safetensors"),
        &ImportOptions { preset: Some("fmnist-ddpm".into()), ..Default::default() },
    )
    .unwrap();
    let want = eval(&to_model(ddpm.file), &x, &t);
    // Both the pipeline folder and the unet folder work.
    for dir in [&pipeline, &unet] {
        let imported = import(Family::Diffusers, dir, &ImportOptions::default()).unwrap();
        assert!(imported.notes.is_empty(), "{:?}", imported.notes);
        let model = to_model(imported.file);
        assert_eq!(
            model.schedule().unwrap().betas(),
            edadm_runtime::sampler::Schedule::linear(1e-4, 0.02, 1000).unwrap().betas()
        );
        assert_eq!(eval(&model, &x, &t), want, "diffusers import of {}", dir.display());
    }
    // Without a scheduler config: a note, and the DDPM default.
    std::fs::remove_dir_all(pipeline.join("scheduler")).unwrap();
    let imported = import(Family::Diffusers, &unet, &ImportOptions::default()).unwrap();
    assert_eq!(imported.notes.len(), 1);
    // An unsupported option is named.
    let cfg = std::fs::read_to_string(unet.join("config.json"))
        .unwrap()
        .replace("\"center_input_sample\": false", "\"center_input_sample\": true");
    std::fs::write(unet.join("config.json"), cfg).unwrap();
    let e = import(Family::Diffusers, &unet, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("center_input_sample"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn build_mnist(t: BTreeMap<String, Tensor>) -> Result<edadm_format::FileBuilder<'static>, ImportError> {
    mnist_unet::build(&mut Checkpoint::from_tensors("test.ckpt", t), WeightDType::F32)
}

fn mnist_tensors(shared: &Path) -> BTreeMap<String, Tensor> {
    Checkpoint::open(&shared.join("models/mnist-unet/model.safetensors")).unwrap().into_tensors().unwrap()
}

#[test]
fn wrong_keys_and_shapes_are_named() {
    let Some(shared) = shared("wrong keys") else { return };
    let mut t = mnist_tensors(&shared);
    t.remove("mid.0.conv1.bias");
    let e = build_mnist(t).unwrap_err();
    assert!(matches!(&e, ImportError::Missing { key, .. } if key == "mid.0.conv1.bias"), "{e}");
    assert!(e.to_string().contains("mid.0.conv1.bias"));

    let mut t = mnist_tensors(&shared);
    t.get_mut("downs.1.weight").unwrap().shape = vec![20, 20, 1, 4];
    let e = build_mnist(t).unwrap_err();
    assert!(matches!(&e, ImportError::Shape { key, .. } if key == "downs.1.weight"), "{e}");

    let mut t = mnist_tensors(&shared);
    t.insert("mid.2.conv1.weight".into(), Tensor { shape: vec![1], data: vec![0.0] });
    t.insert("optimizer.momentum".into(), Tensor { shape: vec![1], data: vec![0.0] });
    let e = build_mnist(t).unwrap_err();
    assert!(matches!(&e, ImportError::Unexpected { keys, .. } if keys.len() == 2), "{e}");
    assert!(e.to_string().contains("optimizer.momentum"), "{e}");

    // The fmnist checkpoint with the CIFAR-10 configuration: the first mismatch is named.
    let fm = Checkpoint::open(&shared.join("models/fmnist-ddpm/model.safetensors")).unwrap().into_tensors().unwrap();
    let e = build(
        &mut Checkpoint::from_tensors("fmnist", fm.clone()),
        &DdpmConfig::preset("cifar10").unwrap(),
        &DdpmNames,
        WeightDType::F32,
    )
    .unwrap_err();
    assert!(
        matches!(&e, ImportError::Shape { key, expected, .. } if key == "temb.dense.0.weight" && expected == &[512, 128]),
        "{e}"
    );
    let mut missing = fm;
    missing.remove("mid.attn_1.q.weight");
    let e = build(
        &mut Checkpoint::from_tensors("fmnist", missing),
        &DdpmConfig::preset("fmnist-ddpm").unwrap(),
        &DdpmNames,
        WeightDType::F32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing key \"mid.attn_1.q.weight\""), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = scratch("bad");
    let opts = ImportOptions::default();
    let e = import(Family::MnistUnet, &d.join("nope.pth"), &opts).unwrap_err();
    assert!(e.to_string().contains("nope.pth"), "{e}");
    std::fs::write(d.join("junk.pth"), b"not a zip").unwrap();
    let e = import(Family::MnistUnet, &d.join("junk.pth"), &opts).unwrap_err();
    assert!(e.to_string().contains("junk.pth"), "{e}");
    std::fs::write(d.join("junk.safetensors"), b"\x01\x00\x00\x00\x00\x00\x00\x00{").unwrap();
    let e = import(Family::MnistUnet, &d.join("junk.safetensors"), &opts).unwrap_err();
    assert!(e.to_string().contains("safetensors"), "{e}");
    std::fs::write(d.join("weights.onnx"), b"x").unwrap();
    let e = import(Family::MnistUnet, &d.join("weights.onnx"), &opts).unwrap_err();
    assert!(e.to_string().contains("unknown checkpoint type"), "{e}");
    let e = import(Family::Ddpm, &d.join("junk.pth"), &opts).unwrap_err();
    assert!(e.to_string().contains("--preset"), "{e}");
    let e = import(
        Family::Ddpm,
        &d.join("junk.pth"),
        &ImportOptions { preset: Some("imagenet".into()), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown preset"), "{e}");
    let e = import(Family::Diffusers, &d, &opts).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::write(d.join("bad.yml"), "model:\n  ch: 32\n").unwrap();
    let e = import(
        Family::Ddpm,
        &d.join("junk.pth"),
        &ImportOptions { config: Some(d.join("bad.yml")), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("bad.yml: missing"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_ddim_yaml_config_reproduces_the_preset() {
    let d = scratch("yaml");
    let p = d.join("fmnist.yml");
    std::fs::write(
        &p,
        "data:\n    image_size: 32\n    channels: 1\nmodel:\n    in_channels: 1\n    out_ch: 1\n    ch: 32\n    ch_mult: [1, 2, 2]\n    num_res_blocks: 2\n    attn_resolutions: [16, ]\n    dropout: 0.1\n    resamp_with_conv: True\ndiffusion:\n    beta_schedule: linear\n    beta_start: 0.0001\n    beta_end: 0.02\n    num_diffusion_timesteps: 1000\n",
    )
    .unwrap();
    assert_eq!(DdpmConfig::from_file(&p).unwrap(), DdpmConfig::preset("fmnist-ddpm").unwrap());
    if let Some(shared) = shared("json config") {
        let json = DdpmConfig::from_file(&shared.join("models/fmnist-ddpm/config.json")).unwrap();
        assert_eq!(json, DdpmConfig::preset("fmnist-ddpm").unwrap());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A PyTorch zip checkpoint written by hand: `entries` under `archive/`, deflated.
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        z.start_file(format!("archive/{name}"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// A protocol-2 pickle of `{"w": _rebuild_tensor_v2(storage of `numel` floats, 0, size, stride)}`.
fn tensor_pickle(numel: u8, size: [u32; 2], stride: [u32; 2]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    let s = |p: &mut Vec<u8>, v: &str| {
        p.push(b'X');
        p.extend((v.len() as u32).to_le_bytes());
        p.extend(v.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: u32| {
        p.push(b'J');
        p.extend(v.to_le_bytes());
    };
    s(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    s(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    s(&mut p, "0");
    s(&mut p, "cpu");
    p.extend([b'K', numel, b't', b'Q', b'K', 0, b'(']);
    int(&mut p, size[0]);
    int(&mut p, size[1]);
    p.extend([b't', b'(']);
    int(&mut p, stride[0]);
    int(&mut p, stride[1]);
    p.extend([b't', 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend(b"tRs.");
    p
}

/// Hostile PyTorch checkpoints are refused before anything large is allocated: a stride-0 view
/// declaring 8 GiB over 4 stored bytes, and a few KiB of deflated pickle that expands to 20 MiB
/// of opcodes. A well-formed file of the same construction imports up to the family's checks.
#[test]
fn hostile_checkpoints_are_refused_before_allocating() {
    let d = scratch("hostile");
    let opts = ImportOptions::default();
    let data = 1.5f32.to_le_bytes();
    // The construction is right: the same file with an honest view reaches the family builder.
    let fine = d.join("fine.pth");
    write_zip(
        &fine,
        &[("data.pkl", &tensor_pickle(4, [2, 2], [2, 1])), ("data/0", &[data; 4].concat()), ("version", b"3\n")],
    );
    let e = import(Family::MnistUnet, &fine, &opts).unwrap_err().to_string();
    assert!(e.contains("missing key"), "{e}");
    // Only the tensors a family takes are read: a key whose storage is missing from the archive
    // does not stop the keys that are taken, and is named when it is read.
    let lazy = d.join("lazy.pth");
    // `{"w": rebuild(storage "0"), "v": rebuild(storage "1")}`: the one-entry pickle without its
    // final SETITEM and STOP, then a second key and value (storage key "1"), each SETITEM'd.
    let one = tensor_pickle(4, [2, 2], [2, 1]);
    let mut pkl = one[..one.len() - 2].to_vec();
    pkl.push(b's');
    let mut entry = one[3..one.len() - 2].to_vec(); // `X 1 "w"` and the value
    entry[5] = b'v';
    let storage_key = entry.windows(6).position(|w| w == [b'X', 1, 0, 0, 0, b'0']).unwrap();
    entry[storage_key + 5] = b'1';
    pkl.extend(&entry);
    pkl.extend(b"s.");
    write_zip(&lazy, &[("data.pkl", &pkl), ("data/0", &[data; 4].concat()), ("version", b"3\n")]);
    let mut ck = Checkpoint::open(&lazy).unwrap();
    assert_eq!(ck.take("w", &[2, 2]).unwrap().data, vec![1.5; 4]);
    let e = ck.take("v", &[2, 2]).unwrap_err().to_string();
    assert!(e.contains("\"v\""), "{e}");
    let expand = d.join("expand.pth");
    write_zip(
        &expand,
        &[("data.pkl", &tensor_pickle(1, [65_536, 32_768], [0, 0])), ("data/0", &data), ("version", b"3\n")],
    );
    let e = import(Family::MnistUnet, &expand, &opts).unwrap_err().to_string();
    assert!(e.contains("\"w\"") && e.contains("zero or overlapping stride") && !e.contains('\n'), "{e}");
    let bomb = d.join("bomb.pth");
    let mut pkl = vec![0x80, 2];
    pkl.extend(std::iter::repeat_n(b'N', 20 << 20));
    pkl.push(b'.');
    write_zip(&bomb, &[("data.pkl", &pkl), ("version", b"3\n")]);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 200_000);
    let e = import(Family::MnistUnet, &bomb, &opts).unwrap_err().to_string();
    assert!(e.contains("data.pkl") && e.contains("limit"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
