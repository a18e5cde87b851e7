//! `edadm`: the command line of the edadm toolkit.
#![forbid(unsafe_code)]

mod bench;
mod calibrate;
mod demo;
mod eval;
mod import_cmd;
mod inspect;
mod output;
mod quantize;
mod sample;
mod sampler_args;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edadm_format::{FormatError, MappedModel};

#[derive(Parser, Debug)]
#[command(name = "edadm", version, about = "Quantize diffusion models with EDA-DM and run them with integer kernels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Import a checkpoint (ddpm, diffusers, mnist-unet) as an f32/f16 .edq model.
    Import(import_cmd::ImportArgs),
    /// Sample FP trajectories and select a calibration set (TDAC or a baseline).
    Calibrate(calibrate::CalibrateArgs),
    /// Quantize an FP model with EDA-DM (TDAC + FBR) or a baseline and export the integer model.
    Quantize(Box<quantize::QuantizeArgs>),
    /// Generate samples with a model and write them as a PNG grid.
    Sample(sample::SampleArgs),
    /// Measure a model: latency per evaluation, step and image, peak memory, kernels per op.
    Bench(bench::BenchArgs),
    /// Train a DDPM UNet from scratch on IDX images (ε-prediction, Adam, EMA, checkpoints).
    Train(train::TrainArgs),
    /// Quantize a model with EDA-DM at quick settings, sample FP and W8A8 from the same noise,
    /// and write both grids with a speed/memory/PSNR report.
    Demo(demo::DemoArgs),
    /// FID against a reference set (standard Inception network), fidelity to the FP model
    /// from the same noise (PSNR, SSIM, ε-MSE per step).
    Eval(eval::EvalArgs),
    /// Show what an .edq file holds: header, metadata, graph, tensors, size by dtype.
    /// Verifies every checksum; a damaged file exits with status 2.
    Inspect {
        /// The .edq file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print long metadata values in full.
        #[arg(long)]
        full: bool,
    },
}

/// A failure with the exit status it maps to.
struct Failure {
    status: u8,
    message: String,
}

/// The exit convention of every command: 2 for an invalid input file (an `.edq` that fails
/// validation, whatever command read it), 1 for every other failure (a file that cannot be read,
/// an impossible option, a run that fails).
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        let invalid = |f: &FormatError| !matches!(f, FormatError::Io { .. });
        let runtime =
            |r: &edadm_runtime::RuntimeError| matches!(r, edadm_runtime::RuntimeError::Format(f) if invalid(f));
        let invalid_file = e.chain().any(|c| {
            c.downcast_ref::<FormatError>().is_some_and(invalid)
                || c.downcast_ref::<edadm_runtime::RuntimeError>().is_some_and(runtime)
                || matches!(c.downcast_ref::<edadm_quantizer::error::QuantError>(),
                    Some(edadm_quantizer::error::QuantError::Runtime(r)) if runtime(r))
        });
        Failure { status: if invalid_file { 2 } else { 1 }, message: format!("{e:#}") }
    }
}

/// An invalid file exits 2; a file that cannot be read exits 1.
fn file_failure(path: &std::path::Path, e: FormatError) -> Failure {
    match e {
        FormatError::Io { .. } => Failure { status: 1, message: e.to_string() },
        e => Failure { status: 2, message: format!("{}: invalid .edq file: {e}", path.display()) },
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Import(a) => Ok(import_cmd::run(a)?),
        Command::Calibrate(a) => Ok(calibrate::run(a)?),
        Command::Sample(a) => Ok(sample::run(a)?),
        Command::Quantize(a) => Ok(quantize::run(*a)?),
        Command::Bench(a) => Ok(bench::run(a)?),
        Command::Train(a) => Ok(train::run(a)?),
        Command::Demo(a) => Ok(demo::run(a)?),
        Command::Eval(a) => Ok(eval::run(a)?),
        Command::Inspect { file, json, full } => {
            let model = MappedModel::open(&file).map_err(|e| file_failure(&file, e))?;
            model.verify().map_err(|e| file_failure(&file, e))?;
            let path = file.display().to_string();
            let out = if json {
                serde_json::to_string_pretty(&inspect::json(&model, &path)).map_err(anyhow::Error::from)? + "\n"
            } else {
                inspect::text(&model, &path, full)
            };
            write_stdout(&out)
        }
    }
}

/// Writes to stdout; a closed pipe (`edadm inspect m.edq | head`) is not an error.
/// `--device`: `cpu`, or `cuda[:N]` (no CUDA backend is built yet: the session refuses it).
pub(crate) fn device(s: &str) -> anyhow::Result<edadm_runtime::Device> {
    edadm_runtime::Device::parse(s).ok_or_else(|| anyhow::anyhow!("--device {s:?}: expected cpu, cuda or cuda:N"))
}

/// A byte size: a number with an optional `K`, `M`, `G` or `T` suffix (powers of 1024; `KiB`,
/// `MB`, … read the same), e.g. `512M`, `1.5G`, `4096`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: expected a size such as 512M or 4G"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (K, M, G or T)")),
    };
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("{s:?}: the size must be at least one byte and fit this machine's addresses"));
    }
    Ok(bytes as usize)
}

fn write_stdout(s: &str) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::from(e).into()),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print in full and succeed.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A usage error is one line, like every other error (exit 2, as an invalid input).
        Err(e) => {
            // clap's message without its usage block: the lines before the first blank one.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(|l| l.trim().trim_start_matches("error: "))
                .collect();
            eprintln!("error: {} (see `edadm --help`)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line, whatever the error.
            eprintln!("error: {}", f.message.replace('\n', " "));
            ExitCode::from(f.status)
        }
    }
}
