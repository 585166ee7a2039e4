//! GGUF: reading (memory-mapped, zero-copy, validated once) and writing (streamed, atomic).
//! The first layer of the flow file -> mmap tensors -> kernels -> executor; it knows nothing of
//! models, only of the container format and ggml's tensor types.

mod cursor;
mod dequant;
mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use dequant::{dequantize, dequantize_row, DequantError, SUPPORTED as DEQUANT_SUPPORTED};
pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use types::{GgmlType, TypeDialect};
pub use value::{Array, ArrayIter, MetaValue, Value, ValueType};
pub use writer::{new_file_builder, GgufWriter, TensorSpec};
