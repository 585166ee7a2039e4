//! Writes a random model of one of llama.cpp's architectures (`qsparse::synthetic::
//! write_architecture`), for the llama.cpp fixture (`scripts/make_arch_fixtures.py`) and the
//! speed comparison (`scripts/bench_architectures.py`).
//!
//!     cargo run --release --example arch_model -- NAME OUT [--shape small|1b] [--f16]
//!
//! NAME: llama3, llama-linear, qwen2, qwen3, phi3, phi3-longrope. `--shape 1b` is the architecture's ~1B model's
//! shape; `--f16` stores the matrices in F16. The tokenizer is SmolLM2's (`qsparse pull` first).

use anyhow::{bail, Context, Result};
use qsparse::gguf::GgufFile;
use qsparse::synthetic::{write_architecture, ArchShape, TestArchitecture};

fn main() -> Result<()> {
    let usage = "usage: arch_model NAME OUT [--shape small|1b] [--f16] \
                 (NAME: llama3, llama-linear, qwen2, qwen3, phi3, phi3-longrope)";
    let (mut positional, mut one_b, mut f16) = (Vec::new(), false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--f16" => f16 = true,
            "--shape" => {
                one_b = match args.next().as_deref() {
                    Some("small") => false,
                    Some("1b") => true,
                    other => bail!("--shape takes small or 1b, not {other:?}"),
                }
            }
            _ if !a.starts_with('-') => positional.push(a),
            _ => bail!("{usage}"),
        }
    }
    let [name, out] = <[String; 2]>::try_from(positional).ok().context(usage)?;
    let arch = TestArchitecture::from_name(&name).context(usage)?;
    let shape = if one_b {
        ArchShape::one_b(arch)
    } else {
        ArchShape::small(arch)
    };
    let tokenizer = GgufFile::open(qsparse::hub::resolve(
        "smollm2-135m-instruct",
        &qsparse::cli::models_dir(),
    )?)?;
    write_architecture(out.as_ref(), arch, shape, f16, &tokenizer)?;
    Ok(())
}
