//! Errors of the GGUF layer. Each names what was wrong and where: the byte offset, the key or the
//! tensor, so that a bad file can be diagnosed from the message alone.

use std::path::PathBuf;

use super::types::TypeDialect;

/// Why a GGUF file could not be read or written: each error names the byte offset, key or tensor.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a GGUF file: the first 4 bytes are {found:02x?}, expected \"GGUF\" (47 47 55 46)"
    )]
    NotGguf { found: Vec<u8> },
    #[error("unsupported GGUF version {version} (qsparse reads versions 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error(
        "file truncated: {what} at byte {offset} needs {needed} bytes, only {available} remain"
    )]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("malformed GGUF at byte {offset}: {what}")]
    Malformed { offset: u64, what: String },
    #[error("tensor `{tensor}` (info at byte {offset}) has unknown ggml type id {id} ({dialect:?} numbering)")]
    UnknownType {
        tensor: String,
        id: u32,
        offset: u64,
        dialect: TypeDialect,
    },
    #[error("tensor `{tensor}`: {what}")]
    BadTensor { tensor: String, what: String },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("no tensor named `{name}`")]
    MissingTensor { name: String },
    #[error("cannot write GGUF: {what}")]
    Write { what: String },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }
}
