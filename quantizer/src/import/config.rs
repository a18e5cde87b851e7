//! Configuration files: JSON, or the YAML subset the ddim repository's `configs/*.yml` use
//! (nested `key: value` mappings by indentation, scalars, flow lists `[1, 2, 2, 2]`, comments),
//! read into a JSON value. And the β schedules configurations name.

use std::path::Path;

use serde_json::{Map, Value};

use super::ImportError;

/// Reads a `.json`, `.yml` or `.yaml` configuration.
pub fn read_config(path: &Path) -> Result<Value, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImportError::io(path, &e))?;
    let source = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "yml" || ext == "yaml" {
        parse_simple_yaml(&text).map_err(|detail| ImportError::Config { origin: source, detail })
    } else {
        serde_json::from_str(&text)
            .map_err(|e| ImportError::Config { origin: source, detail: format!("invalid JSON: {e}") })
    }
}

fn scalar(s: &str) -> Value {
    let s = s.trim();
    let unq = |q: char| s.len() >= 2 && s.starts_with(q) && s.ends_with(q);
    if unq('"') || unq('\'') {
        return Value::String(s[1..s.len() - 1].to_string());
    }
    match s {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        "null" | "None" | "~" | "" => return Value::Null,
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        return Value::from(f);
    }
    Value::String(s.to_string())
}

/// The YAML subset of ddim-style configs. Anything outside it is an error naming the line.
pub fn parse_simple_yaml(text: &str) -> Result<Value, String> {
    // Stack of (indent, map) for the open mappings.
    let mut stack: Vec<(usize, Map<String, Value>, String)> = vec![(0, Map::new(), String::new())];
    let mut pending: Option<(usize, String)> = None; // a key with no value yet: a nested map follows
    for (lineno, raw) in text.lines().enumerate() {
        let line = match raw.find(" #") {
            Some(i) => &raw[..i],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if content.starts_with("- ") || content.contains('{') || content.starts_with('&') || content.contains(": |") {
            return Err(format!(
                "line {}: block lists, flow maps, anchors and block scalars are not supported",
                lineno + 1
            ));
        }
        let (key, rest) =
            content.split_once(':').ok_or_else(|| format!("line {}: expected `key: value`", lineno + 1))?;
        let key = key.trim().trim_matches('"').to_string();
        if let Some((pi, pk)) = pending.take() {
            if indent > pi {
                stack.push((indent, Map::new(), pk));
            } else {
                stack.last_mut().expect("root").1.insert(pk, Value::Null);
            }
        }
        while stack.len() > 1 && indent < stack.last().expect("non-empty").0 {
            let (_, map, name) = stack.pop().expect("non-empty");
            stack.last_mut().expect("root").1.insert(name, Value::Object(map));
        }
        let rest = rest.trim();
        if rest.is_empty() {
            pending = Some((indent, key));
            continue;
        }
        let value = if rest.starts_with('[') {
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| format!("line {}: unterminated list", lineno + 1))?;
            Value::Array(inner.split(',').filter(|s| !s.trim().is_empty()).map(scalar).collect())
        } else {
            scalar(rest)
        };
        stack.last_mut().expect("root").1.insert(key, value);
    }
    if let Some((_, pk)) = pending {
        stack.last_mut().expect("root").1.insert(pk, Value::Null);
    }
    while stack.len() > 1 {
        let (_, map, name) = stack.pop().expect("non-empty");
        stack.last_mut().expect("root").1.insert(name, Value::Object(map));
    }
    Ok(Value::Object(stack.pop().expect("root").1))
}

/// β schedules of the ddim repository (`get_beta_schedule`), computed in f64 and rounded to f32
/// as the model saw them (`torch.from_numpy(betas).float()`).
pub fn ddim_betas(kind: &str, start: f64, end: f64, t: usize) -> Result<Vec<f64>, String> {
    use edadm_runtime::sampler::linspace;
    let b: Vec<f64> = match kind {
        "linear" => linspace(start, end, t),
        "quad" => linspace(start.sqrt(), end.sqrt(), t).into_iter().map(|x| x * x).collect(),
        "const" => vec![end; t],
        "jsd" => linspace(t as f64, 1.0, t).into_iter().map(|x| 1.0 / x).collect(),
        "sigmoid" => {
            linspace(-6.0, 6.0, t).into_iter().map(|x| 1.0 / (1.0 + (-x).exp()) * (end - start) + start).collect()
        }
        other => return Err(format!("unknown beta schedule {other:?} (linear, quad, const, jsd, sigmoid)")),
    };
    Ok(b.into_iter().map(|x| f64::from(x as f32)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ddim_cifar10_config_layout() {
        let yml = "data:\n    dataset: \"CIFAR10\"\n    image_size: 32\n    random_flip: true\n\nmodel:\n    type: \"simple\"  # comment\n    ch: 128\n    ch_mult: [1, 2, 2, 2]\n    attn_resolutions: [16, ]\n    dropout: 0.1\n    ema: True\n    resamp_with_conv: True\n\ndiffusion:\n    beta_schedule: linear\n    beta_start: 0.0001\n    num_diffusion_timesteps: 1000\n";
        let v = parse_simple_yaml(yml).unwrap();
        assert_eq!(v["data"]["image_size"], 32);
        assert_eq!(v["data"]["dataset"], "CIFAR10");
        assert_eq!(v["model"]["ch_mult"], serde_json::json!([1, 2, 2, 2]));
        assert_eq!(v["model"]["attn_resolutions"], serde_json::json!([16]));
        assert_eq!(v["model"]["dropout"], 0.1);
        assert_eq!(v["model"]["ema"], true);
        assert_eq!(v["diffusion"]["beta_schedule"], "linear");
        assert_eq!(v["diffusion"]["num_diffusion_timesteps"], 1000);
        assert!(parse_simple_yaml("a:\n  - 1\n").is_err());
        assert!(parse_simple_yaml("just text\n").is_err());
    }

    #[test]
    fn beta_schedules() {
        let b = ddim_betas("linear", 1e-4, 0.02, 1000).unwrap();
        assert_eq!((b[0], b[999]), (f64::from(1e-4f32), f64::from(0.02f32)));
        let q = ddim_betas("quad", 1e-4, 0.02, 3).unwrap();
        assert!((q[1] - f64::from(((1e-4f64.sqrt() + 0.02f64.sqrt()) / 2.0).powi(2) as f32)).abs() < 1e-12);
        assert!(ddim_betas("cosine", 0.0, 0.0, 10).is_err());
    }
}
