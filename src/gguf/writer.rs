//! Writing GGUF files: metadata and tensor infos first, then tensor data streamed tensor by tensor
//! (so `pack` never holds a whole model in memory), each aligned to `general.alignment`.
//! Files are written to a temporary file beside the target and renamed into place, so a failed or
//! interrupted write never leaves a partial model behind.

use std::collections::HashSet;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::error::GgufError;
use super::reader::{DEFAULT_ALIGNMENT, MAX_DIMS};
use super::types::{GgmlType, TypeDialect};
use super::value::{MetaValue, MAX_ARRAY_DEPTH};

/// A tensor to be written: its name, type and shape (`dims[0]` is the row length).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub ty: GgmlType,
    /// Its dimensions, innermost first (GGUF's order).
    pub dims: Vec<u64>,
}

impl TensorSpec {
    /// The bytes its data takes; an error for a shape the type cannot hold.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        self.ty
            .tensor_bytes(&self.dims)
            .map_err(|what| GgufError::Write {
                what: format!("tensor `{}`: {what}", self.name),
            })
    }
}

/// Builds a GGUF file. Add metadata and tensor specs, then write once with a callback that
/// produces each tensor's bytes in order.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    dialect: TypeDialect,
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A GGUF v3 writer with the default 32-byte alignment and upstream type ids.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            dialect: TypeDialect::Ggml,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Align tensor data to `alignment` bytes (a power of two; qsparse's packed files use 64 so
    /// that kernel loads never straddle a cache line). Records `general.alignment` when not 32.
    pub fn with_alignment(mut self, alignment: u64) -> Result<Self, GgufError> {
        if !alignment.is_power_of_two() {
            return Err(GgufError::Write {
                what: format!("alignment {alignment} is not a power of two"),
            });
        }
        self.alignment = alignment;
        Ok(self)
    }

    /// Number type ids as `dialect` does (bitnet.cpp files keep bitnet.cpp ids).
    pub fn with_dialect(mut self, dialect: TypeDialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Write GGUF version 2 instead of 3 (the two differ only in what readers accept).
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Add a metadata key (written in the order added).
    pub fn add_kv(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> &mut Self {
        self.kvs.push((key.into(), value.into()));
        self
    }

    /// Add a tensor's description; its data is written by `write_file`'s callback, in the order added.
    pub fn add_tensor(&mut self, name: impl Into<String>, ty: GgmlType, dims: &[u64]) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            ty,
            dims: dims.to_vec(),
        });
        self
    }

    /// The tensors added so far.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Write the file to `path` atomically: a temp file in the same directory, renamed on success.
    /// `data(i, spec, out)` must write exactly the bytes of tensor `i`.
    pub fn write_file<F>(&self, path: impl AsRef<Path>, data: F) -> Result<u64, GgufError>
    where
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = new_file_builder(".qsparse-write-")
            .tempfile_in(dir)
            .map_err(|e| GgufError::io(dir, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let written = self.write_to(&mut out, data)?;
        out.flush().map_err(|e| GgufError::io(path, e))?;
        drop(out);
        tmp.as_file()
            .sync_all()
            .map_err(|e| GgufError::io(path, e))?;
        #[cfg(target_os = "linux")]
        drop_cached_pages(tmp.as_file());
        tmp.persist(path)
            .map_err(|e| GgufError::io(path, e.error))?;
        Ok(written)
    }

    /// Write the file image to `out`; returns the number of bytes written.
    pub fn write_to<W, F>(&self, out: &mut W, mut data: F) -> Result<u64, GgufError>
    where
        W: Write,
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        self.validate()?;
        let io_err = |e: io::Error| GgufError::Write {
            what: e.to_string(),
        };
        let mut w = Counting {
            inner: out,
            count: 0,
        };

        let mut kvs: Vec<(&str, MetaValue)> = self
            .kvs
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let has_alignment_key = kvs.iter().any(|(k, _)| *k == "general.alignment");
        if self.alignment != DEFAULT_ALIGNMENT && !has_alignment_key {
            kvs.push(("general.alignment", MetaValue::U32(self.alignment as u32)));
        }

        w.write_all(b"GGUF").map_err(io_err)?;
        w.write_all(&self.version.to_le_bytes()).map_err(io_err)?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())
            .map_err(io_err)?;
        w.write_all(&(kvs.len() as u64).to_le_bytes())
            .map_err(io_err)?;
        for (key, value) in &kvs {
            write_str(&mut w, key).map_err(io_err)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())
                .map_err(io_err)?;
            write_value(&mut w, value).map_err(io_err)?;
        }

        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let n_bytes = t.n_bytes()?;
            let id = t.ty.id(self.dialect).ok_or_else(|| GgufError::Write {
                what: format!("type {} has no id in {:?} numbering", t.ty, self.dialect),
            })?;
            write_str(&mut w, &t.name).map_err(io_err)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())
                .map_err(io_err)?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes()).map_err(io_err)?;
            }
            w.write_all(&id.to_le_bytes()).map_err(io_err)?;
            w.write_all(&offset.to_le_bytes()).map_err(io_err)?;
            sizes.push(n_bytes);
            offset = (offset + n_bytes).div_ceil(self.alignment) * self.alignment;
        }

        for (i, (t, &n_bytes)) in self.tensors.iter().zip(&sizes).enumerate() {
            pad_to(&mut w, self.alignment).map_err(io_err)?;
            let before = w.count;
            data(i, t, &mut w).map_err(|e| GgufError::Write {
                what: format!("tensor `{}`: {e}", t.name),
            })?;
            let got = w.count - before;
            if got != n_bytes {
                return Err(GgufError::Write {
                    what: format!(
                        "tensor `{}`: {got} bytes of data written, {n_bytes} expected",
                        t.name
                    ),
                });
            }
        }
        if self.tensors.is_empty() {
            pad_to(&mut w, self.alignment).map_err(io_err)?;
        }
        Ok(w.count)
    }

    fn validate(&self) -> Result<(), GgufError> {
        let err = |what: String| Err(GgufError::Write { what });
        if !(2..=3).contains(&self.version) {
            return err(format!("cannot write GGUF version {}", self.version));
        }
        let mut keys = HashSet::new();
        for (k, v) in &self.kvs {
            if !keys.insert(k.as_str()) {
                return err(format!("metadata key `{k}` added twice"));
            }
            check_value(v, 0).map_err(|what| GgufError::Write {
                what: format!("metadata key `{k}`: {what}"),
            })?;
        }
        let mut names = HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return err(format!("tensor `{}` added twice", t.name));
            }
            if t.dims.len() > MAX_DIMS {
                return err(format!(
                    "tensor `{}` has more than {MAX_DIMS} dimensions",
                    t.name
                ));
            }
        }
        Ok(())
    }
}

fn check_value(v: &MetaValue, depth: u32) -> Result<(), String> {
    if let MetaValue::Array(elem, items) = v {
        // Mirrors the reader: an array at nesting depth MAX_ARRAY_DEPTH is refused.
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
        }
        for item in items {
            if item.value_type() != *elem {
                return Err(format!(
                    "array of {} holds a {}",
                    elem.name(),
                    item.value_type().name()
                ));
            }
            check_value(item, depth + 1)?;
        }
    }
    Ok(())
}

/// Drop a complete, synced file's pages from the page cache (clean pages: nothing is lost), so
/// that the next process mapping it reads it back in 2 MB folios rather than in the pieces the
/// writes left: a packed model's weights, read in place, then get huge pages (SmolLM2 int8:
/// 47 of 166 MB mapped huge right after `pack`, 158 after this).
#[cfg(target_os = "linux")]
fn drop_cached_pages(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise reads only its integer arguments; the descriptor is open throughout.
    // Advice only: a failure leaves the pages cached, which is equally correct.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &MetaValue) -> io::Result<()> {
    match v {
        MetaValue::U8(x) => w.write_all(&[*x]),
        MetaValue::I8(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::Bool(x) => w.write_all(&[u8::from(*x)]),
        MetaValue::String(s) => write_str(w, s),
        MetaValue::U64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::Array(elem, items) => {
            w.write_all(&(*elem as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(w, item))
        }
    }
}

fn pad_to<W: Write>(w: &mut Counting<W>, alignment: u64) -> io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    let mut pad = w.count.div_ceil(alignment) * alignment - w.count;
    while pad > 0 {
        let n = pad.min(ZEROS.len() as u64);
        w.write_all(&ZEROS[..n as usize])?;
        pad -= n;
    }
    Ok(())
}

/// Counts bytes so that offsets and per-tensor sizes can be checked while streaming.
struct Counting<'w, W: Write> {
    inner: &'w mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A temp-file builder whose files get the permissions `File::create` gives (read and write for
/// all, less the process's umask) instead of a temp file's owner-only ones: what is renamed into
/// place is an ordinary output file.
pub fn new_file_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
}
