//! Training text: the default corpus (the reStructuredText sources of Python 3.11's
//! documentation, from Debian's `python3.11-doc` package, fetched with apt and verified by
//! sha256) or the user's files, split into training and held-out documents and tokenized.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::hub::sha256_file;
use crate::tokenizer::Tokenizer;

/// Debian's package of the default corpus, pinned to the release in bookworm's main archive.
pub const CORPUS_PACKAGE: &str = "python3.11-doc";
/// Its version.
pub const CORPUS_VERSION: &str = "3.11.2-6+deb12u8";
/// The sha256 of its .deb.
pub const CORPUS_SHA256: &str = "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b";
/// Where the package keeps the documentation's sources.
const CORPUS_MEMBER: &str = "usr/share/doc/python3.11/html/_sources";
/// One document in this many is held out (by a hash of its path) for evaluation.
pub const HELD_OUT_ONE_IN: u64 = 20;

/// The default corpus's directory under `models_dir`, fetched first if it is not there.
pub fn default_corpus(models_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dest = models_dir
        .join("corpora")
        .join(format!("{CORPUS_PACKAGE}_{CORPUS_VERSION}"));
    if dest.join(".complete").is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(models_dir.join("corpora"))
        .with_context(|| format!("cannot create {}", models_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-corpus-")
        .tempdir_in(models_dir.join("corpora"))
        .context("cannot create a temp dir for the corpus")?;
    log(&format!(
        "fetching the training corpus: Debian's {CORPUS_PACKAGE} {CORPUS_VERSION} (13 MB) with apt-get"
    ));
    let spec = format!("{CORPUS_PACKAGE}={CORPUS_VERSION}");
    let status = Command::new("apt-get")
        .args(["download", "-qq", &spec])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the default training corpus is Debian's {CORPUS_PACKAGE} package, fetched with \
             apt-get, which this machine does not have; pass your own text with --data FILE..."
        ),
        Err(e) => return Err(e).context("cannot run apt-get"),
        Ok(s) if !s.success() => {
            bail!("`apt-get download {spec}` failed ({s}); pass your own text with --data FILE...")
        }
        Ok(_) => {}
    }
    let deb = fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get downloaded no .deb")?;
    let actual = sha256_file(&deb)?;
    if actual != CORPUS_SHA256 {
        bail!(
            "{} has sha256 {actual}, expected {CORPUS_SHA256}",
            deb.display()
        );
    }
    let unpacked = tmp.path().join("x");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .stdin(Stdio::null())
        .output()
        .context("cannot run dpkg-deb to unpack the corpus")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb could not unpack {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sources = unpacked.join(CORPUS_MEMBER);
    fs::write(sources.join(".complete"), CORPUS_SHA256)?;
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    fs::rename(&sources, &dest).with_context(|| format!("cannot move to {}", dest.display()))?;
    Ok(dest)
}

/// One text to train on: its path, shown in errors, and the name that decides its split.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file.
    pub path: PathBuf,
    /// The path relative to the directory it was found in (the file name for a file given).
    pub key: String,
}

/// The text files of `inputs`: each file as given, each directory's `.txt` files (recursively),
/// sorted by path so the order does not depend on the file system.
pub fn documents(inputs: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for input in inputs {
        let meta =
            fs::metadata(input).with_context(|| format!("cannot read {}", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            if found.is_empty() {
                bail!("{} holds no .txt file", input.display());
            }
            for path in found {
                let key = path
                    .strip_prefix(input)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                docs.push(Document { path, key });
            }
        } else {
            let key = input
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            docs.push(Document {
                path: input.clone(),
                key,
            });
        }
    }
    Ok(docs)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a document is held out: one in [`HELD_OUT_ONE_IN`], by an FNV-1a hash of its key (the
/// same split on every machine).
pub fn is_held_out(key: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.is_multiple_of(HELD_OUT_ONE_IN)
}

/// The corpus as token ids: (training, held-out), documents joined by the end-of-text token.
/// With too few documents for the hash to hold one out, the last twentieth of the training
/// tokens is held out instead.
pub fn tokenize(
    docs: &[Document],
    tokenizer: &Tokenizer,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<u32>, Vec<u32>)> {
    let sep = tokenizer.eos().unwrap_or(0);
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, doc) in docs.iter().enumerate() {
        progress(i, docs.len());
        let bytes =
            fs::read(&doc.path).with_context(|| format!("cannot read {}", doc.path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        if text.trim().is_empty() {
            continue;
        }
        let ids = tokenizer
            .encode(&text)
            .with_context(|| format!("cannot tokenize {}", doc.path.display()))?;
        let into = if is_held_out(&doc.key) {
            &mut held
        } else {
            &mut train
        };
        into.extend(ids);
        into.push(sep);
    }
    progress(docs.len(), docs.len());
    if train.is_empty() {
        bail!("the training text is empty");
    }
    if held.is_empty() {
        let cut = train.len() - train.len() / 20;
        held = train.split_off(cut);
    }
    Ok((train, held))
}
