//! Writes a `bitnet` model with random ternary weights (`qsparse::synthetic`), for the llama.cpp
//! fixture (`scripts/make_bitnet_fixture.py`) and the speed comparison (`scripts/bench_bitnet.py`).
//!
//!     cargo run --release --example bitnet_model -- OUT [--shape small|2b4t] [--f32|--i2s]
//!
//! The tokenizer is SmolLM2's (`qsparse pull` first).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use qsparse::gguf::GgufFile;
use qsparse::synthetic::{write_bitnet, BitnetOptions, BitnetShape};

fn main() -> Result<()> {
    let (mut out, mut shape, mut options) = (None, BitnetShape::SMALL, BitnetOptions::default());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--f32" => options.f32_projections = true,
            "--i2s" => options.i2_s_projections = true,
            "--shape" => {
                shape = match args.next().as_deref() {
                    Some("small") => BitnetShape::SMALL,
                    Some("2b4t") => BitnetShape::B2_4T,
                    other => bail!("--shape takes small or 2b4t, not {other:?}"),
                }
            }
            _ if out.is_none() && !a.starts_with('-') => out = Some(PathBuf::from(a)),
            _ => bail!("usage: bitnet_model OUT [--shape small|2b4t] [--f32|--i2s]"),
        }
    }
    let out = out.context("usage: bitnet_model OUT [--shape small|2b4t] [--f32|--i2s]")?;
    let tokenizer = GgufFile::open(qsparse::hub::resolve(
        "smollm2-135m-instruct",
        &qsparse::cli::models_dir(),
    )?)?;
    write_bitnet(&out, shape, &tokenizer, &options)?;
    Ok(())
}
