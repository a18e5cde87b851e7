//! A content-addressed cache for expensive evaluation inputs (reference statistics, FP
//! samples): files named by a SHA-256 over what produced them, written atomically.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};

use crate::{EvalError, Result, bad, io_err};

/// The cache folder: `explicit`, else `$EDADM_CACHE`, else `$XDG_CACHE_HOME/edadm`, else
/// `$HOME/.cache/edadm`, else `.edadm-cache`.
pub fn dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("EDADM_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("edadm")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/edadm")))
        .unwrap_or_else(|| PathBuf::from(".edadm-cache"))
}

/// SHA-256 of a file's bytes, or of a folder's `*.png` files (names and bytes, sorted).
pub fn hash_path(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let add_file = |p: &Path, h: &mut Sha256| -> Result<()> {
        let mut f = std::fs::File::open(p).map_err(io_err(p))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_err(p))?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
        }
    };
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        for f in &files {
            h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
            add_file(f, &mut h)?;
        }
    } else {
        add_file(path, &mut h)?;
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of a string.
pub fn hash_str(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `bytes` to `path` (creating the folder) through edadm's one atomic writer
/// ([`edadm_format::write_file_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    edadm_format::write_file_atomic(path, |w, tmp| {
        use std::io::Write;
        w.write_all(bytes).map_err(io_err(tmp))
    })
}

/// Serialises one f32 tensor `data` of `shape` as safetensors with `meta`.
pub fn f32_tensor_bytes(data: &[f32], shape: &[usize], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    struct F32<'a>(&'a [f32], Vec<usize>);
    impl View for F32<'_> {
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.0))
        }
        fn data_len(&self) -> usize {
            self.0.len() * 4
        }
    }
    safetensors::serialize([("data", F32(data, shape.to_vec()))], Some(meta))
        .map_err(|e| EvalError::Invalid(format!("cannot serialise: {e}")))
}

/// A tensor read back by [`load_f32_tensor`]: data, shape and the file's metadata.
pub type F32Tensor = (Vec<f32>, Vec<usize>, HashMap<String, String>);

/// Reads a file written from [`f32_tensor_bytes`]: data, shape and metadata.
pub fn load_f32_tensor(path: &Path) -> Result<F32Tensor> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let t = st.tensor("data").map_err(|_| bad(path, "no `data` tensor"))?;
    if t.dtype() != Dtype::F32 {
        return Err(bad(path, "`data` is not F32"));
    }
    let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect();
    Ok((data, t.shape().to_vec(), header.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_hashes_are_stable() {
        let d = std::env::temp_dir().join(format!("edadm-eval-cache-{}", std::process::id()));
        let p = d.join("sub/x.safetensors");
        let bytes = f32_tensor_bytes(&[1.0, -2.5, 3.0], &[3], HashMap::from([("k".into(), "v".into())])).unwrap();
        write_atomic(&p, &bytes).unwrap();
        let (x, s, m) = load_f32_tensor(&p).unwrap();
        assert_eq!((x, s, m["k"].as_str()), (vec![1.0, -2.5, 3.0], vec![3], "v"));
        assert_eq!(hash_path(&p).unwrap(), hex(&Sha256::digest(&bytes)));
        assert_eq!(hash_str("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::remove_dir_all(&d).unwrap();
        assert!(load_f32_tensor(&p).is_err());
    }
}
