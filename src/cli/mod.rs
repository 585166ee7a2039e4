//! The `qsparse` command line: one file per subcommand, each thin (parse flags, call the library,
//! print). Errors go to stderr with exit code 1; usage errors exit with 2 (clap's convention).

mod bench;
mod common;
mod generate;
mod inspect;
mod perplexity;
mod pull;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "qsparse",
    version,
    about = "Run LLMs on the CPU with Q-Sparse: keep only the top-K activations before each \
             linear layer and read only the weight columns they need.",
    after_help = "Start with `qsparse pull` to fetch the default model, then `qsparse inspect smollm2-135m-instruct`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch a model listed in the manifest (default: smollm2-135m-instruct) and verify its sha256.
    Pull(pull::Args),
    /// Show what a GGUF model file holds: architecture, shapes, tensor types and sizes.
    Inspect(inspect::Args),
    /// Generate text from a prompt (stdout: the text only; stderr: speeds).
    Generate(generate::Args),
    /// Perplexity of a text file, in non-overlapping windows.
    Perplexity(perplexity::Args),
    /// Prompt-evaluation and decode speed (medians), and weight bytes read per token.
    Bench(bench::Args),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pull(args) => pull::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
