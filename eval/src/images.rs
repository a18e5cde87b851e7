//! 8-bit image sets: IDX files (MNIST, Fashion-MNIST; gzip or not), folders of PNGs, and
//! generated samples converted the way `edadm sample` writes its PNGs.

use std::io::Read;
use std::path::Path;

use crate::{Result, bad, io_err};

/// `n` images of `c × h × w` 8-bit pixels, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Pixels, `n·c·h·w`.
    pub pixels: Vec<u8>,
    /// Images.
    pub n: usize,
    /// Channels (1 or 3).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Images {
    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Image `i`'s pixels.
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels[i * l..(i + 1) * l]
    }

    /// The first `n` images (all if fewer).
    pub fn truncate(mut self, n: usize) -> Images {
        self.n = self.n.min(n);
        self.pixels.truncate(self.n * self.image_len());
        self
    }

    /// The central `h × w` of every image (`None` if larger than the images): e.g. 32×32 samples
    /// of a model trained on 28×28 images zero-padded to 32×32, cropped back to the data's size
    /// before FID against the unpadded test split.
    pub fn center_crop(&self, h: usize, w: usize) -> Option<Images> {
        if h == 0 || w == 0 || h > self.h || w > self.w {
            return None;
        }
        let (y0, x0) = ((self.h - h) / 2, (self.w - w) / 2);
        let mut pixels = Vec::with_capacity(self.n * self.c * h * w);
        for plane in self.pixels.chunks_exact(self.h * self.w) {
            for row in plane.chunks_exact(self.w).skip(y0).take(h) {
                pixels.extend_from_slice(&row[x0..x0 + w]);
            }
        }
        Some(Images { pixels, n: self.n, c: self.c, h, w })
    }

    /// Reads an IDX image file or a folder of PNGs (sorted by name).
    pub fn read(path: &Path) -> Result<Images> {
        if path.is_dir() { Images::read_png_dir(path) } else { Images::read_idx(path) }
    }

    /// Reads an IDX image file (`idx3-ubyte`), gzip-compressed or not.
    pub fn read_idx(path: &Path) -> Result<Images> {
        let raw = std::fs::read(path).map_err(io_err(path))?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| bad(path, format!("not a readable gzip file: {e}")))?;
            out
        } else {
            raw
        };
        if bytes.len() < 16 || bytes[..4] != [0, 0, 8, 3] {
            return Err(bad(path, "not an IDX image file (magic 0x00000803 expected)"));
        }
        let dim = |i: usize| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize;
        let (n, h, w) = (dim(0), dim(1), dim(2));
        let len = n.checked_mul(h).and_then(|v| v.checked_mul(w)).ok_or_else(|| bad(path, "impossible dimensions"))?;
        if n == 0 || h == 0 || w == 0 || bytes.len() != 16 + len {
            return Err(bad(
                path,
                format!("{n} images of {h}x{w} need {} bytes, the file has {}", 16 + len, bytes.len()),
            ));
        }
        Ok(Images { pixels: bytes[16..].to_vec(), n, c: 1, h, w })
    }

    /// Reads every `*.png` of a folder, sorted by name; all must have the same size and be
    /// grayscale or RGB(A) (alpha dropped), 8 or 16 bits.
    pub fn read_png_dir(dir: &Path) -> Result<Images> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad(dir, "no .png files in this folder"));
        }
        let mut out: Option<Images> = None;
        for f in &files {
            let (px, c, h, w) = read_png(f)?;
            match &mut out {
                None => out = Some(Images { pixels: px, n: 1, c, h, w }),
                Some(s) if (s.c, s.h, s.w) == (c, h, w) => {
                    s.pixels.extend(px);
                    s.n += 1;
                }
                Some(s) => {
                    return Err(bad(f, format!("{c}x{h}x{w}, the folder's first image is {}x{}x{}", s.c, s.h, s.w)));
                }
            }
        }
        Ok(out.expect("at least one file"))
    }

    /// Samples `[n, c, h, w]` mapped from `range` to pixels as `edadm sample` writes them.
    pub fn from_f32(x: &[f32], n: usize, c: usize, h: usize, w: usize, range: [f32; 2]) -> Images {
        assert_eq!(x.len(), n * c * h * w, "sample length");
        let (lo, hi) = (range[0], range[1]);
        let pixels = x.iter().map(|&v| ((v - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8).collect();
        Images { pixels, n, c, h, w }
    }

    /// Writes the set as an IDX image file (single-channel sets only).
    pub fn write_idx(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        assert_eq!(self.c, 1, "IDX holds single-channel images");
        w.write_all(&[0, 0, 8, 3])?;
        for d in [self.n, self.h, self.w] {
            w.write_all(&(d as u32).to_be_bytes())?;
        }
        w.write_all(&self.pixels)
    }
}

/// One PNG as CHW 8-bit pixels.
fn read_png(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let size = reader.output_buffer_size().ok_or_else(|| bad(path, "image too large"))?;
    if size > 1 << 28 {
        return Err(bad(path, "image too large"));
    }
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let bps = match info.bit_depth {
        png::BitDepth::Sixteen => 2,
        _ => 1,
    };
    let (src_c, c) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err(bad(path, "indexed PNG was not expanded")),
    };
    let mut px = vec![0u8; c * h * w];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                // 16-bit samples are big-endian: the high byte is the 8-bit value.
                px[(ch * h + y) * w + x] = buf[y * info.line_size + (x * src_c + ch) * bps];
            }
        }
    }
    Ok((px, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_crop_takes_the_middle() {
        let pixels: Vec<u8> = (0..2 * 16).map(|v| v as u8).collect();
        let im = Images { pixels, n: 2, c: 1, h: 4, w: 4 };
        let c = im.center_crop(2, 2).unwrap();
        assert_eq!((c.n, c.h, c.w), (2, 2, 2));
        assert_eq!(c.pixels, vec![5, 6, 9, 10, 21, 22, 25, 26]);
        assert!(im.center_crop(5, 4).is_none() && im.center_crop(0, 1).is_none());
    }

    #[test]
    fn idx_round_trip_and_bad_files() {
        let imgs = Images { pixels: (0..2 * 3 * 4).map(|i| i as u8 * 10).collect(), n: 2, c: 1, h: 3, w: 4 };
        let dir = std::env::temp_dir().join(format!("edadm-eval-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.idx");
        let mut bytes = Vec::new();
        imgs.write_idx(&mut bytes).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(Images::read(&p).unwrap(), imgs);
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Images::read(&p).unwrap_err().to_string().contains("need 40 bytes"));
        assert!(Images::read(&dir.join("missing")).is_err());
        std::fs::remove_file(&p).unwrap();
        assert!(Images::read(&dir).unwrap_err().to_string().contains("no .png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_f32_matches_the_png_writer_mapping() {
        let s = Images::from_f32(&[-1.0, 0.0, 1.0, 2.0], 1, 1, 2, 2, [-1.0, 1.0]);
        assert_eq!(s.pixels, vec![0, 128, 255, 255]);
    }
}
