//! `qsparse inspect MODEL`: what a person wants to know about a model file at a glance.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::gguf::{GgufFile, TypeDialect, Value};
use crate::hub;
use crate::model::pack::{self, PackInfo};
use crate::model::ModelConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A GGUF file path, or a model name from the manifest (e.g. smollm2-135m-instruct).
    model: String,
    /// Print one JSON document instead of text (keys are documented in README.md).
    #[arg(long)]
    json: bool,
    /// Also list every tensor: name, type, shape, bytes, offset.
    #[arg(long)]
    tensors: bool,
    /// Also list every metadata key with its value (long arrays abbreviated).
    #[arg(long)]
    metadata: bool,
    /// Print only the value of this metadata key (arrays in full).
    #[arg(long, value_name = "KEY")]
    meta: Option<String>,
}

#[derive(Debug, Serialize)]
struct TypeSummary {
    #[serde(rename = "type")]
    ty: String,
    tensors: usize,
    parameters: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct TensorRow {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<u64>,
    bytes: u64,
    offset: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    path: String,
    file_size: u64,
    gguf_version: u32,
    alignment: u64,
    type_ids: &'static str,
    architecture: Option<String>,
    name: Option<String>,
    parameters: u64,
    tensor_count: usize,
    kv_count: usize,
    model: Option<ModelConfig>,
    model_error: Option<String>,
    /// What sets the architecture apart (biases, fused tensors, RoPE variants, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    specifics: Vec<String>,
    /// Why qsparse cannot run the model, when it cannot (an unsupported architecture or tensor).
    #[serde(skip_serializing_if = "Option::is_none")]
    unsupported: Option<String>,
    types: Vec<TypeSummary>,
    packed: Option<PackInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensors: Option<Vec<TensorRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    /// Of a truncated file only: the tensors whose data runs past its end (the rest of the
    /// report covers the whole ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    truncated_tensors: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let path = hub::resolve(&args.model, &super::common::models_dir())?;
    let file = match GgufFile::open(&path) {
        Ok(file) => file,
        Err(e) => {
            // A truncated file: show what its header holds, then fail naming the tensor.
            if let Ok((file, cut)) = GgufFile::open_truncated(&path) {
                if !cut.is_empty() && args.meta.is_none() {
                    let mut report = build_report(&path, &file, &args);
                    report.truncated_tensors = cut;
                    print_report(&report, &file, &args)?;
                }
            }
            return Err(anyhow!(e).context(format!("cannot read {}", path.display())));
        }
    };

    if let Some(key) = &args.meta {
        let value = file
            .get(key)
            .ok_or_else(|| anyhow!("{} has no metadata key `{key}`", path.display()))?;
        print_value(&value, args.json)?;
        return Ok(());
    }

    let report = build_report(&path, &file, &args);
    print_report(&report, &file, &args)
}

fn print_report(report: &Report, file: &GgufFile, args: &Args) -> Result<()> {
    if args.json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_text(report, file, args.metadata)?;
    }
    Ok(())
}

fn build_report(path: &Path, file: &GgufFile, args: &Args) -> Report {
    let mut by_type: BTreeMap<&str, TypeSummary> = BTreeMap::new();
    for t in file.tensors() {
        let s = by_type.entry(t.ty.name()).or_insert_with(|| TypeSummary {
            ty: t.ty.name().to_string(),
            tensors: 0,
            parameters: 0,
            bytes: 0,
        });
        s.tensors += 1;
        s.parameters += t.n_elements();
        s.bytes += t.n_bytes;
    }
    let mut types: Vec<TypeSummary> = by_type.into_values().collect();
    types.sort_by_key(|t| std::cmp::Reverse(t.bytes));

    let (model, model_error) = match ModelConfig::from_gguf(file) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (specifics, unsupported) = match &model {
        Some(c) => (
            crate::model::specifics(file, c),
            crate::model::check_supported(file, c)
                .err()
                .map(|e| e.to_string()),
        ),
        None => (Vec::new(), None),
    };
    let str_key = |k: &str| file.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let packed = pack::info(file);
    let parameters = match (&model, &packed) {
        (Some(config), Some(_)) => pack::parameters(file, config),
        _ => file.tensors().iter().map(|t| t.n_elements()).sum(),
    };
    Report {
        path: path.display().to_string(),
        file_size: file.file_size(),
        gguf_version: file.version(),
        alignment: file.alignment(),
        type_ids: match file.dialect() {
            TypeDialect::Ggml => "ggml",
            TypeDialect::BitnetCpp => "bitnet.cpp",
        },
        architecture: str_key("general.architecture"),
        name: str_key("general.name"),
        parameters,
        tensor_count: file.tensors().len(),
        kv_count: file.kv_count(),
        model,
        model_error,
        specifics,
        unsupported,
        types,
        packed,
        tensors: args.tensors.then(|| {
            file.tensors()
                .iter()
                .map(|t| TensorRow {
                    name: t.name.clone(),
                    ty: t.ty.name().to_string(),
                    shape: t.dims.clone(),
                    bytes: t.n_bytes,
                    offset: t.file_offset,
                })
                .collect()
        }),
        metadata: (args.metadata && args.json).then(|| {
            file.metadata()
                .map(|(k, v)| (k.to_string(), v.to_json()))
                .collect()
        }),
        truncated_tensors: Vec::new(),
    }
}

fn print_value(value: &Value<'_>, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&value.to_json())?);
    } else if let Some(a) = value.as_array() {
        for v in a.iter() {
            match v.as_str() {
                Some(s) => outln!("{s}"),
                None => outln!("{v}"),
            }
        }
    } else {
        match value.as_str() {
            Some(s) => outln!("{s}"),
            None => outln!("{value}"),
        }
    }
    Ok(())
}

/// Human-readable byte counts (MiB with one decimal, or bytes when small).
fn human_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The model's shape, as `inspect` prints it.
fn print_model(m: &crate::model::ModelConfig) -> Result<()> {
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    outln!("layers         {}", m.n_layers);
    outln!("d_model        {}", m.d_model);
    outln!(
        "d_ff           {} ({}-gated{})",
        m.d_ff,
        match m.ffn_activation {
            crate::model::FfnActivation::Silu => "SiLU",
            crate::model::FfnActivation::Relu2 => "squared-ReLU",
        },
        if m.sub_norms {
            "; sub-norms before o and down"
        } else {
            ""
        }
    );
    outln!(
        "heads          {} query / {} kv, head dim {}",
        m.n_heads,
        m.n_kv_heads,
        m.head_dim
    );
    outln!("context        {}", m.context_length);
    outln!(
        "rope           base {}, dim {}{}",
        m.rope_base,
        m.rope_dim,
        if m.rope_neox { ", NeoX pairs" } else { "" }
    );
    outln!("rms eps        {:e}", m.rms_eps);
    outln!(
        "vocab          {} ({} tokenizer, pre-tokenizer {})",
        m.vocab_size,
        opt(&m.tokenizer_model),
        opt(&m.tokenizer_pre)
    );
    outln!(
        "chat template  {}",
        if m.has_chat_template { "yes" } else { "no" }
    );
    Ok(())
}

fn print_text(r: &Report, file: &GgufFile, metadata: bool) -> Result<()> {
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    outln!("file           {}", r.path);
    outln!(
        "size           {} ({} bytes), GGUF v{}, alignment {}, {} type ids",
        human_bytes(r.file_size),
        r.file_size,
        r.gguf_version,
        r.alignment,
        r.type_ids
    );
    outln!("architecture   {}", opt(&r.architecture));
    outln!("name           {}", opt(&r.name));
    outln!(
        "parameters     {} ({})",
        human_count(r.parameters),
        r.parameters
    );
    outln!(
        "tensors        {}   metadata keys {}",
        r.tensor_count,
        r.kv_count
    );
    if !r.truncated_tensors.is_empty() {
        outln!(
            "TRUNCATED      the data of {} more tensor(s) runs past the end of the file: {}",
            r.truncated_tensors.len(),
            r.truncated_tensors.join(", ")
        );
    }
    match (&r.model, &r.model_error) {
        (Some(m), _) => {
            print_model(m)?;
            if !r.specifics.is_empty() {
                outln!("specifics      {}", r.specifics.join("; "));
            }
            if let Some(why) = &r.unsupported {
                outln!("NOT SUPPORTED  {why}");
            }
        }
        (None, Some(e)) => outln!("model shape    unavailable: {e}"),
        (None, None) => {}
    }
    match &r.packed {
        Some(p) => outln!(
            "packed         {} weights, lm_head {} (layout version {}; runs read it in place)",
            opt(&p.weights),
            opt(&p.lm_head),
            p.version.map_or("-".into(), |v| v.to_string())
        ),
        None => outln!("packed         no (a plain GGUF; `qsparse pack` makes a packed one)"),
    }
    outln!();
    outln!(
        "{:<10} {:>8} {:>14} {:>12}",
        "type",
        "tensors",
        "parameters",
        "size"
    );
    for t in &r.types {
        outln!(
            "{:<10} {:>8} {:>14} {:>12}",
            t.ty,
            t.tensors,
            human_count(t.parameters),
            human_bytes(t.bytes)
        );
    }
    if let Some(rows) = &r.tensors {
        outln!();
        outln!(
            "{:<40} {:<8} {:<20} {:>12} {:>12}",
            "tensor",
            "type",
            "shape",
            "bytes",
            "offset"
        );
        for t in rows {
            let shape = t
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" x ");
            outln!(
                "{:<40} {:<8} {:<20} {:>12} {:>12}",
                t.name,
                t.ty,
                shape,
                t.bytes,
                t.offset
            );
        }
    }
    if metadata {
        outln!();
        for (k, v) in file.metadata() {
            let mut shown = v.to_string();
            if shown.chars().count() > 160 {
                shown = shown.chars().take(157).collect::<String>() + "...";
            }
            outln!("{k:<44} {shown}");
        }
    }
    Ok(())
}
