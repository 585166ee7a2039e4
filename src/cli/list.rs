//! `qsparse list`: the models in the models directory (as `ollama list` shows them): every GGUF
//! file there, its size, architecture and parameters, and what qsparse added to it (a packed
//! layout, a fine-tuning sparsity, a stored sparsity profile).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::gguf::GgufFile;
use crate::hub::Manifest;
use crate::model::{pack, ModelConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document: {"models_dir", "models": [...]}.
    #[arg(long)]
    json: bool,
}

/// One model file of the directory.
#[derive(Debug, Serialize)]
struct Entry {
    /// The file name (what `-m` takes, with the directory, or the manifest name).
    file: String,
    /// Its manifest name, if it is a manifest model.
    name: Option<String>,
    bytes: u64,
    /// `general.architecture`, or null when the file does not open.
    architecture: Option<String>,
    /// Tensor elements (null when the file does not open).
    parameters: Option<u64>,
    /// `qsparse pack`'s weight format, if packed.
    packed: Option<String>,
    /// The sparsity a `qsparse finetune` model was trained for, and how
    /// (`qsparse.finetune.method`: topk-ste, topk-ste-distill, topk-ste-from-scratch).
    finetuned_sparsity: Option<f64>,
    finetune_method: Option<String>,
    /// Whether a sparsity profile is stored in it (`pack --sparsity-profile`).
    sparsity_profile: bool,
    /// Why the file does not open, if it does not.
    error: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let dir = super::common::models_dir();
    let manifest = Manifest::builtin();
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "gguf"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    files.sort();
    let entries: Vec<Entry> = files.iter().map(|path| entry(path, &manifest)).collect();
    if args.json {
        let out = serde_json::json!({"models_dir": dir, "models": entries});
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if entries.is_empty() {
        outln!(
            "no models in {} yet: `qsparse pull` fetches the default one",
            dir.display()
        );
        return Ok(());
    }
    outln!(
        "{:<40} {:>9} {:>9} {:>10}  notes",
        "model",
        "size",
        "arch",
        "params"
    );
    for e in &entries {
        let mut notes = Vec::new();
        if let Some(name) = &e.name {
            notes.push(format!("`{name}`"));
        }
        if let Some(w) = &e.packed {
            notes.push(format!("packed {w}"));
        }
        if let Some(s) = e.finetuned_sparsity {
            let how = match e.finetune_method.as_deref() {
                Some("topk-ste-from-scratch") => "trained from scratch",
                _ => "fine-tuned",
            };
            notes.push(format!("{how} at S = {s}"));
        }
        if e.sparsity_profile {
            notes.push("runs its stored sparsity profile".into());
        }
        if let Some(err) = &e.error {
            notes.push(format!("does not open: {err}"));
        }
        outln!(
            "{:<40} {:>6} MB {:>9} {:>9}M  {}",
            e.file,
            e.bytes / 1_000_000,
            e.architecture.as_deref().unwrap_or("-"),
            e.parameters
                .map_or("-".to_string(), |p| format!("{:.1}", p as f64 / 1e6)),
            notes.join(", ")
        );
    }
    outln!("models directory: {}", dir.display());
    Ok(())
}

fn entry(path: &Path, manifest: &Manifest) -> Entry {
    let file = path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let name = manifest
        .models
        .iter()
        .find(|m| m.file == file)
        .map(|m| m.name.clone());
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut e = Entry {
        file,
        name,
        bytes,
        architecture: None,
        parameters: None,
        packed: None,
        finetuned_sparsity: None,
        finetune_method: None,
        sparsity_profile: false,
        error: None,
    };
    match GgufFile::open(path) {
        Ok(f) => {
            e.architecture = f
                .get("general.architecture")
                .and_then(|v| v.as_str().map(str::to_string));
            e.parameters = Some(match (ModelConfig::from_gguf(&f), pack::info(&f)) {
                (Ok(config), Some(_)) => pack::parameters(&f, &config),
                _ => f.tensors().iter().map(|t| t.n_elements()).sum(),
            });
            e.packed = pack::weight_format(&f).map(|w| w.name().to_string());
            e.finetuned_sparsity = f
                .get("qsparse.finetune.sparsity")
                .and_then(|v| v.as_f32())
                .map(f64::from);
            e.finetune_method = f
                .get("qsparse.finetune.method")
                .and_then(|v| v.as_str().map(str::to_string));
            e.sparsity_profile = f.get(pack::KEY_SPARSITY_PROFILE).is_some();
        }
        Err(err) => e.error = Some(err.to_string()),
    }
    e
}
