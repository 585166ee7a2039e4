//! The `qsparse` command line: one file per subcommand, each thin (parse flags, call the library,
//! print). Errors go to stderr with exit code 1; usage errors exit with 2 (clap's convention).

/// `println!` to stdout that returns an error instead of panicking when stdout is gone (e.g. the
/// reader of a pipe quit); `main` treats that as a quiet end.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod bench;
mod calibrate;
mod chat;
mod common;
mod finetune;
pub use common::models_dir;
mod generate;
mod inspect;
mod list;
mod pack;
mod perplexity;
mod plot;
mod pull;
mod scaling;
mod serve;
mod sweep;

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
    /// Chat with a model in the terminal (multi-turn, streamed; /help inside for commands).
    Chat(chat::Args),
    /// An OpenAI-compatible HTTP server (chat/completions, completions, models, tokenize,
    /// health). One request generates at a time; the others wait in a FIFO queue (--queue).
    Serve(serve::Args),
    /// Fetch a model listed in the manifest (default: smollm2-135m-instruct) and verify its sha256.
    Pull(pull::Args),
    /// The models in the models directory: size, architecture, parameters, and whether packed,
    /// fine-tuned or carrying a sparsity profile.
    List(list::Args),
    /// Show what a GGUF model file holds: architecture, shapes, tensor types and sizes.
    Inspect(inspect::Args),
    /// Convert a model once into the kernels' layout: a GGUF file that runs map in place.
    Pack(pack::Args),
    /// Generate text from a prompt (stdout: the text only; stderr: speeds).
    Generate(generate::Args),
    /// Perplexity of a text file, in non-overlapping windows.
    Perplexity(perplexity::Args),
    /// Prompt-evaluation and decode speed (medians), and weight bytes read per token.
    Bench(bench::Args),
    /// Bytes read, speed and quality across sparsity ratios: table, JSON/CSV and a plot.
    Sweep(sweep::Args),
    /// The Q-Sparse paper's inference-optimal sparsity, and model size vs sparsity at a budget.
    Scaling(scaling::Args),
    /// Sparsity ratios per layer and projection input (q/k/v, o, gate/up, down) calibrated on a
    /// text, at the bytes of a uniform S (a JSON profile for --sparsity-profile).
    Calibrate(calibrate::Args),
    /// Train a model to keep its quality at sparsity S (Q-Sparse fine-tuning, with PyTorch):
    /// writes a GGUF that every command runs.
    Finetune(finetune::Args),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(args) => chat::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => pull::run(args),
        Command::List(args) => list::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Pack(args) => pack::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Scaling(args) => scaling::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Finetune(args) => finetune::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our stdout went away (`qsparse ... | head`): stop quietly.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
