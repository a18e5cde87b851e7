//! Fréchet distance between two raw feature files (little-endian f32, rows of 2048), as written
//! by `edadm eval --save-features`: the check against `tools/inception_numpy.py fid`.
//!
//! `cargo run --release -p edadm-eval --example fid_features -- A.f32 B.f32 [SPLIT]`
//! With SPLIT, A's first SPLIT rows are compared with its remaining rows (B is ignored).
//! `... --example fid_features -- stats A.f32 OUT.safetensors SOURCE` writes A's statistics in
//! the format `edadm eval --reference` reads (features saved earlier need no second pass).
use edadm_eval::frechet::{FeatureStats, frechet_distance};

fn read(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % (4 * 2048) != 0 {
        return Err(format!("{path}: {} bytes is not a whole number of 2048-d f32 rows", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: fid_features A.f32 B.f32 [SPLIT]".into());
    }
    if args[0] == "stats" {
        let [_, feats, out, source] = &args[..] else {
            return Err("usage: fid_features stats A.f32 OUT.safetensors SOURCE".into());
        };
        let a = read(feats)?;
        let s = FeatureStats::from_features(&a, a.len() / 2048, 2048).map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        let meta = std::collections::HashMap::from([("source".to_string(), source.clone())]);
        s.save(&mut bytes, &meta).map_err(|e| e.to_string())?;
        edadm_eval::cache::write_atomic(std::path::Path::new(out), &bytes).map_err(|e| e.to_string())?;
        println!("{} rows of {feats} -> {out}", s.n);
        return Ok(());
    }
    let a = read(&args[0])?;
    let (x, y) = match args.get(2) {
        Some(s) => {
            let split: usize = s.parse().map_err(|_| format!("SPLIT: not a count: {s}"))?;
            if split * 2048 >= a.len() {
                return Err(format!("SPLIT {split} leaves no rows in {}", args[0]));
            }
            let (p, q) = a.split_at(split * 2048);
            (p.to_vec(), q.to_vec())
        }
        None => (a, read(&args[1])?),
    };
    let sa = FeatureStats::from_features(&x, x.len() / 2048, 2048).map_err(|e| e.to_string())?;
    let sb = FeatureStats::from_features(&y, y.len() / 2048, 2048).map_err(|e| e.to_string())?;
    println!("{:.6}", frechet_distance(&sa, &sb).map_err(|e| e.to_string())?);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
