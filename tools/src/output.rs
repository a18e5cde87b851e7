//! Writing outputs atomically: PNG grids of samples and NumPy `.npy` arrays.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Checks an output path before any work starts (minutes or hours of it, for `quantize`): it
/// is not a directory, its directory exists and takes a new file (a probe file is created and
/// removed), and it is not the same file as one of the inputs (same device and inode, so
/// `./m.edq`, `m.edq` and a link to it are all caught): an output never replaces an input.
pub fn check_output(output: &Path, inputs: &[Option<&Path>]) -> Result<()> {
    if output.is_dir() {
        bail!("{}: the output is a directory; name a file", output.display());
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("{}: the output's directory {} does not exist", output.display(), dir.display());
    }
    let probe = dir.join(format!(".edadm-probe.{}.{:x}", std::process::id(), probe_nonce()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(f) => {
            drop(f);
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => bail!("{}: cannot create files in {}: {e}", output.display(), dir.display()),
    }
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    for input in inputs.iter().flatten() {
        let Ok(inp) = std::fs::metadata(input) else { continue };
        #[cfg(unix)]
        let same = {
            use std::os::unix::fs::MetadataExt;
            out.dev() == inp.dev() && out.ino() == inp.ino()
        };
        #[cfg(not(unix))]
        let same = {
            let _ = (&out, &inp);
            std::fs::canonicalize(output).ok() == std::fs::canonicalize(input).ok()
        };
        if same {
            bail!("{}: the output is the input {}; choose another output path", output.display(), input.display());
        }
    }
    Ok(())
}

/// A number that differs between calls and processes (the probe file's name is not guessable).
fn probe_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Writes `path` through `write` with edadm's one atomic writer
/// ([`edadm_format::write_file_atomic`]: a new temporary file next to it, synced and renamed into
/// place), so a failed or interrupted run never leaves a partial file under the final name.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    struct Failed(anyhow::Error);
    impl From<edadm_format::WriteError> for Failed {
        fn from(e: edadm_format::WriteError) -> Self {
            Failed(e.into())
        }
    }
    edadm_format::write_file_atomic(path, |w, _| write(w).map_err(Failed))
        .map_err(|Failed(e)| e)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Samples `[n, c, h, w]` (c = 1 or 3) mapped from `range` to pixels and tiled into a grid with
/// a 2-pixel grey border, each image scaled up `scale` times (nearest).
pub fn png_grid(
    path: &Path,
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    range: [f32; 2],
    scale: usize,
) -> Result<()> {
    png_grid_cols(path, x, n, c, h, w, range, scale, (n as f64).sqrt().ceil() as usize)
}

/// [`png_grid`] with `cols` images per row.
#[allow(clippy::too_many_arguments)]
pub fn png_grid_cols(
    path: &Path,
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    range: [f32; 2],
    scale: usize,
    cols: usize,
) -> Result<()> {
    if c != 1 && c != 3 {
        bail!("cannot write {c}-channel samples as an image (1 or 3 channels)");
    }
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let (ih, iw) = (h * scale, w * scale);
    let border = 2;
    let (gh, gw) = (rows * (ih + border) + border, cols * (iw + border) + border);
    let mut img = vec![128u8; gh * gw * c];
    let (lo, hi) = (range[0], range[1]);
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        for y in 0..ih {
            for xx in 0..iw {
                for ch in 0..c {
                    let v = x[((i * c + ch) * h + y / scale) * w + xx / scale];
                    let p = ((v - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8;
                    let (py, px) = (border + r * (ih + border) + y, border + col * (iw + border) + xx);
                    img[(py * gw + px) * c + ch] = p;
                }
            }
        }
    }
    atomic_write(path, |wr| {
        let mut enc = png::Encoder::new(wr, gw as u32, gh as u32);
        enc.set_color(if c == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
        enc.set_depth(png::BitDepth::Eight);
        let mut pw = enc.write_header().context("cannot write PNG header")?;
        pw.write_image_data(&img).context("cannot write PNG data")?;
        pw.finish().context("cannot finish PNG")?;
        Ok(())
    })
}

/// Writes an f32 array as a NumPy `.npy` file (version 1.0, little-endian, C order).
pub fn npy(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    atomic_write(path, |w| {
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&(header.len() as u16).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}
