//! Opening a GGUF file: memory-map it, validate the whole header once, and hand out borrowed views.
//!
//! Everything a hostile file controls (counts, lengths, dims, type ids, offsets) is checked here,
//! before anything is allocated from it or any tensor byte is touched, so that later layers can
//! index tensor data without re-checking. Opening reads only the header pages of the mapping.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::cursor::Cursor;
use super::error::GgufError;
use super::types::{GgmlType, TypeDialect};
use super::value::{read_value, Array, Value, ValueType};

/// Default `general.alignment` when the key is absent (GGUF spec).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;

/// The smallest encoded metadata entry (empty key, u8 value) and tensor info (empty name, no
/// dims): used to reject counts that the file could not possibly hold before looping on them.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// One tensor's description, validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape; `dims[0]` is the row length (fastest-varying).
    pub dims: Vec<u64>,
    /// Its element type.
    pub ty: GgmlType,
    /// The type id as stored (its meaning depends on the file's [`TypeDialect`]).
    pub raw_type_id: u32,
    /// Offset relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte offset of the data in the file.
    pub file_offset: u64,
    /// Its data's size in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Its number of elements (the product of its dimensions).
    pub fn n_elements(&self) -> u64 {
        // Checked at open: the product does not overflow.
        self.dims.iter().product()
    }
}

/// Where a byte range of metadata lives in the file.
#[derive(Debug, Clone)]
struct KvEntry {
    key_start: usize,
    key_len: usize,
    ty: ValueType,
    value_start: usize,
}

/// The bytes behind a [`GgufFile`]: a read-only mapping, or a buffer (tests, fuzzing).
enum Source {
    /// Shared, so that a packed model's weights can be read in place after parsing.
    Mapped(Arc<Mmap>),
    Owned(Vec<u8>),
}

impl Deref for Source {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Source::Mapped(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    source: Source,
    path: Option<PathBuf>,
    version: u32,
    alignment: u64,
    dialect: TypeDialect,
    data_offset: u64,
    kvs: Vec<KvEntry>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("kv_count", &self.kvs.len())
            .field("tensor_count", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map `path` read-only and validate its header. Tensor bytes are not read.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        // SAFETY: the mapping is read-only and private to this process. Like every mmap reader we
        // rely on the file not being truncated or rewritten by another process while it is open;
        // qsparse itself only ever replaces model files by atomic rename, which leaves an open
        // mapping on the old inode intact.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        // Before the first byte is touched: the page cache then reads the file in 2 MB folios
        // where the file system allows (ext4 on Linux 6.16+), and a packed model's weights, read
        // in place, get huge pages as converted ones do (see `qsparse_kernels::memory`); advised
        // after the header's pages were read, most of the file stays in small folios. A refused
        // advice changes nothing else.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let mut parsed = Self::parse(Source::Mapped(Arc::new(map)))?;
        parsed.path = Some(path.to_path_buf());
        Ok(parsed)
    }

    /// Validate a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Source::Owned(bytes))
    }

    /// Validate a GGUF image without keeping it (fuzzing and corruption tests use this to avoid
    /// copying large buffers). Exactly the checks [`GgufFile::open`] makes.
    pub fn validate_bytes(bytes: &[u8]) -> Result<(), GgufError> {
        parse_header(bytes, false).map(|_| ())
    }

    /// Like [`GgufFile::open`], but a tensor whose data runs past the end of the file is left
    /// out instead of failing the whole file: `inspect` shows what the header of a truncated
    /// file holds. Returns the file (every tensor it lists is whole) and the names left out.
    pub fn open_truncated(path: impl AsRef<Path>) -> Result<(GgufFile, Vec<String>), GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        // SAFETY: as in `open`: a read-only private mapping of a file nobody rewrites meanwhile.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        let source = Source::Mapped(Arc::new(map));
        let (header, cut) = parse_header(&source, true)?;
        let mut parsed = Self::from_header(source, header);
        parsed.path = Some(path.to_path_buf());
        Ok((parsed, cut))
    }

    fn parse(source: Source) -> Result<GgufFile, GgufError> {
        let (header, _) = parse_header(&source, false)?;
        Ok(Self::from_header(source, header))
    }

    fn from_header(source: Source, header: Header) -> GgufFile {
        GgufFile {
            source,
            path: None,
            version: header.version,
            alignment: header.alignment,
            dialect: header.dialect,
            data_offset: header.data_offset,
            kvs: header.kvs,
            kv_index: header.kv_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        }
    }

    /// The path it was opened from (None for a file held in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Which numbering of tensor types the file uses (upstream ggml or bitnet.cpp's).
    pub fn dialect(&self) -> TypeDialect {
        self.dialect
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.source.len() as u64
    }

    /// The number of metadata keys.
    pub fn kv_count(&self) -> usize {
        self.kvs.len()
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        self.kvs
            .iter()
            .filter_map(|kv| Some((self.key_of(kv), self.value_of(kv)?)))
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.kv_index
            .get(key)
            .and_then(|&i| self.value_of(&self.kvs[i]))
    }

    fn require(&self, key: &str) -> Result<Value<'_>, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong_type(key: &str, expected: &'static str, found: &Value<'_>) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: found.describe_type(),
        }
    }

    /// The string at `key`; an error naming the key when it is missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| Self::wrong_type(key, "a string", &v))
    }

    /// A non-negative integer of any stored width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong_type(key, "a non-negative integer", &v))
    }

    /// A non-negative integer that fits in usize (counts, sizes).
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.get_u64(key)?;
        usize::try_from(v).map_err(|_| GgufError::WrongType {
            key: key.to_string(),
            expected: "a count that fits in memory",
            found: v.to_string(),
        })
    }

    /// The f32 at `key` (any float type, converted); an error naming the key otherwise.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f32()
            .ok_or_else(|| Self::wrong_type(key, "a float", &v))
    }

    /// The boolean at `key`; an error naming the key otherwise.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool()
            .ok_or_else(|| Self::wrong_type(key, "a bool", &v))
    }

    /// The array at `key`; an error naming the key otherwise.
    pub fn get_array(&self, key: &str) -> Result<Array<'_>, GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| Self::wrong_type(key, "an array", &v))
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor `name`; an error naming it when the file lacks it.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            name: name.to_string(),
        })
    }

    /// The bytes of a tensor of this file, borrowed from the mapping (zero-copy).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked at open: file_offset + n_bytes <= file size, and both fit in usize.
        let start = info.file_offset as usize;
        &self.source[start..start + info.n_bytes as usize]
    }

    /// The file's mapping, for reading tensors in place beyond this value's lifetime (a packed
    /// model's weights); None for a file held in memory. Tensor `info` lies at
    /// `info.file_offset .. + info.n_bytes` of it.
    pub fn mapping(&self) -> Option<&Arc<Mmap>> {
        match &self.source {
            Source::Mapped(m) => Some(m),
            Source::Owned(_) => None,
        }
    }

    /// Map the pages of file bytes `range` now (read-only, from the page cache or the disk), as
    /// reading them would: so that how the OS mapped them can be seen before the first use. A
    /// hint: ignored where unsupported (before Linux 5.14, other systems, a file held in memory).
    pub fn populate(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        if let Source::Mapped(map) = &self.source {
            let end = range.end.min(map.len());
            let start = range.start.min(end);
            let _ = map.advise_range(memmap2::Advice::PopulateRead, start, end - start);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = range;
    }

    /// Let the OS unmap the pages of file bytes `range` (they stay in the page cache and are
    /// mapped again when read): after a packed model's matrices were copied out of them, so
    /// they are not counted twice. A hint, as [`GgufFile::populate`].
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Source::Mapped(map) = &self.source {
            let end = range.end.min(map.len());
            let start = range.start.min(end);
            // SAFETY: the mapping is private and read-only, so none of its pages is a written
            // copy: dropping them only makes later reads fault the same file bytes back in (the
            // standing assumption of `open`: the file is not modified while mapped). Borrowed
            // views of the mapping stay valid and see the same bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    fn key_of(&self, kv: &KvEntry) -> &str {
        // Validated as UTF-8 at open.
        std::str::from_utf8(&self.source[kv.key_start..kv.key_start + kv.key_len]).unwrap_or("")
    }

    fn value_of(&self, kv: &KvEntry) -> Option<Value<'_>> {
        read_value(&mut Cursor::at(&self.source, kv.value_start), kv.ty, 0).ok()
    }
}

struct Header {
    version: u32,
    alignment: u64,
    dialect: TypeDialect,
    data_offset: u64,
    kvs: Vec<KvEntry>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A tensor info as read, before its type id is resolved in the file's dialect.
struct RawTensorInfo {
    info_offset: u64,
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

/// The header of a GGUF image, every tensor's data checked to lie inside it; with `lenient`, a
/// tensor whose data runs past the end is left out (its name in the returned list) instead.
fn parse_header(buf: &[u8], lenient: bool) -> Result<(Header, Vec<String>), GgufError> {
    let mut c = Cursor::new(buf);
    let (version, n_tensors, n_kv) = read_preamble(&mut c, buf)?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = metadata.alignment;
    let raw = read_tensor_infos(&mut c, n_tensors)?;
    let dialect = TypeDialect::detect(metadata.architecture, raw.iter().map(|t| t.type_id));

    let header_end = c.offset();
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if !raw.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            offset: header_end,
            what: "padding before the tensor data".into(),
            needed: data_offset - header_end,
            available: file_len - header_end,
        });
    }
    let layout = DataLayout {
        dialect,
        alignment,
        data_offset,
        file_len,
    };
    let (tensors, tensor_index, cut) = resolve_tensors(raw, &layout, lenient)?;
    check_no_overlap(&tensors)?;

    let header = Header {
        version,
        alignment,
        dialect,
        data_offset,
        kvs: metadata.kvs,
        kv_index: metadata.kv_index,
        tensors,
        tensor_index,
    };
    Ok((header, cut))
}

/// The magic, the version and the two counts, checked against the bytes that follow: (version,
/// tensors, metadata entries).
fn read_preamble(c: &mut Cursor<'_>, buf: &[u8]) -> Result<(u32, u64, u64), GgufError> {
    let magic = buf.get(..4).unwrap_or(buf);
    if magic != b"GGUF" {
        return Err(GgufError::NotGguf {
            found: magic.to_vec(),
        });
    }
    c.take(4, "magic")?;
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let counts_at = c.offset();
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let min_bytes = n_kv
        .checked_mul(MIN_KV_BYTES)
        .zip(n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES))
        .and_then(|(a, b)| a.checked_add(b));
    if min_bytes.is_none_or(|b| b > c.remaining()) {
        return Err(c.malformed(
            counts_at,
            format!(
                "{n_tensors} tensors and {n_kv} metadata entries cannot fit in the {} bytes that follow",
                c.remaining()
            ),
        ));
    }
    Ok((version, n_tensors, n_kv))
}

/// The metadata entries as read, with the two keys the rest of the header needs.
struct Metadata<'a> {
    kvs: Vec<KvEntry>,
    kv_index: HashMap<String, usize>,
    alignment: u64,
    architecture: Option<&'a str>,
}

/// The `n_kv` metadata entries: where each key and value lies, checked (value types, nesting,
/// duplicates, the alignment).
fn read_metadata<'a>(c: &mut Cursor<'a>, n_kv: u64) -> Result<Metadata<'a>, GgufError> {
    let mut kvs = Vec::with_capacity(n_kv as usize);
    let mut kv_index = HashMap::with_capacity(n_kv as usize);
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut architecture = None;
    for _ in 0..n_kv {
        let entry_at = c.offset();
        let key = c.string("metadata key")?;
        let key_start = c.position() - key.len();
        let tag_at = c.offset();
        let tag = c.u32("metadata value type")?;
        let ty = ValueType::from_u32(tag).ok_or_else(|| {
            c.malformed(
                tag_at,
                format!("metadata key `{key}` has unknown value type {tag}"),
            )
        })?;
        let value_start = c.position();
        let value = read_value(c, ty, 0).map_err(|e| match e {
            GgufError::Malformed { offset, what } => GgufError::Malformed {
                offset,
                what: format!("metadata key `{key}`: {what}"),
            },
            e => e,
        })?;
        if kv_index.insert(key.to_string(), kvs.len()).is_some() {
            return Err(c.malformed(entry_at, format!("metadata key `{key}` appears twice")));
        }
        match key {
            "general.alignment" => {
                alignment = value
                    .as_u64()
                    .filter(|a| a.is_power_of_two())
                    .ok_or_else(|| {
                        c.malformed(
                            entry_at,
                            format!("general.alignment must be a power of two, got {value}"),
                        )
                    })?;
            }
            "general.architecture" => architecture = value.as_str(),
            _ => {}
        }
        kvs.push(KvEntry {
            key_start,
            key_len: key.len(),
            ty,
            value_start,
        });
    }
    Ok(Metadata {
        kvs,
        kv_index,
        alignment,
        architecture,
    })
}

/// The `n_tensors` tensor infos, with type ids still raw: their meaning depends on the whole
/// file.
fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> Result<Vec<RawTensorInfo>, GgufError> {
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let info_offset = c.offset();
        let name = c.string("tensor name")?;
        let dims_at = c.offset();
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.malformed(
                dims_at,
                format!("tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} are allowed"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let type_id = c.u32("tensor type")?;
        let offset = c.u64("tensor data offset")?;
        raw.push(RawTensorInfo {
            info_offset,
            name: name.to_string(),
            dims,
            type_id,
            offset,
        });
    }
    Ok(raw)
}

/// Where tensor data lies in a file, and how its type ids are numbered.
struct DataLayout {
    dialect: TypeDialect,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

/// Each raw tensor info resolved (type, size, place in the file, all checked), and the index by
/// name; with `lenient`, tensors whose data runs past the end are left out and named instead.
type Resolved = (Vec<TensorInfo>, HashMap<String, usize>, Vec<String>);
fn resolve_tensors(
    raw: Vec<RawTensorInfo>,
    layout: &DataLayout,
    lenient: bool,
) -> Result<Resolved, GgufError> {
    let DataLayout {
        dialect,
        alignment,
        data_offset,
        file_len,
    } = *layout;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut tensor_index = HashMap::with_capacity(raw.len());
    let mut cut = Vec::new();
    for r in raw {
        let bad = |what: String| GgufError::BadTensor {
            tensor: r.name.clone(),
            what,
        };
        let ty = GgmlType::from_id(r.type_id, dialect).ok_or_else(|| GgufError::UnknownType {
            tensor: r.name.clone(),
            id: r.type_id,
            offset: r.info_offset,
            dialect,
        })?;
        let n_bytes = ty.tensor_bytes(&r.dims).map_err(&bad)?;
        if r.offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                r.offset
            )));
        }
        let Some(end) = data_offset
            .checked_add(r.offset)
            .and_then(|s| s.checked_add(n_bytes))
            .filter(|&e| e <= file_len)
        else {
            if lenient {
                cut.push(r.name.clone());
                continue;
            }
            return Err(bad(format!(
                "{n_bytes} bytes of {ty} data at data offset {} run past the end of the file ({file_len} bytes)",
                r.offset
            )));
        };
        if tensor_index.insert(r.name.clone(), tensors.len()).is_some() {
            return Err(bad(format!(
                "tensor name appears twice (info at byte {})",
                r.info_offset
            )));
        }
        tensors.push(TensorInfo {
            name: r.name,
            dims: r.dims,
            ty,
            raw_type_id: r.type_id,
            offset: r.offset,
            file_offset: end - n_bytes,
            n_bytes,
        });
    }
    Ok((tensors, tensor_index, cut))
}

/// Two tensors sharing bytes would let a write through one corrupt the other; real files never
/// do it, so it is a sign of a corrupt or hostile file.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.file_offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.file_offset + a.n_bytes > b.file_offset {
            return Err(GgufError::BadTensor {
                tensor: b.name.clone(),
                what: format!(
                    "data at byte {} overlaps tensor `{}` (bytes {}..{})",
                    b.file_offset,
                    a.name,
                    a.file_offset,
                    a.file_offset + a.n_bytes
                ),
            });
        }
    }
    Ok(())
}
