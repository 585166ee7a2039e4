//! GGUF metadata values: borrowed views into the mapped file ([`Value`]) and owned values for
//! writing ([`MetaValue`]). Strings and arrays are never copied out of the file to be read;
//! a 49,152-entry vocabulary is walked in place.

use std::fmt;

use super::cursor::Cursor;
use super::error::GgufError;

/// The type tag of a metadata value, as numbered in the GGUF spec.
// The variants are GGUF's value types, named as its specification names them.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type of tag `tag`, if it is one of the specification's.
    pub fn from_u32(tag: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match tag {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Encoded size of a scalar, `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The smallest number of bytes a value of this type can take (bounds counts before loops).
    pub(crate) fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.fixed_size().unwrap_or(1),
        }
    }

    /// The specification's name of the type (`u8`, `string`, ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// Nesting depth of arrays we accept. Real files use 1; a hostile file could recurse forever.
pub(crate) const MAX_ARRAY_DEPTH: u32 = 4;

/// A metadata value borrowed from the file.
// The variants are GGUF's value types, named as its specification names them.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// Its type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short type description for error messages, e.g. `array of string`.
    pub fn describe_type(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.elem_type().name()),
            other => other.value_type().name().to_string(),
        }
    }

    /// Any integer value that is non-negative, widened to u64. Models disagree on which integer
    /// type a count is stored as, so readers should not insist on one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value, widened to i64 where it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float of either width (f64 narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<Array<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (arrays in full; non-finite floats become null).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match *self {
            Value::U8(v) => J::from(v),
            Value::I8(v) => J::from(v),
            Value::U16(v) => J::from(v),
            Value::I16(v) => J::from(v),
            Value::U32(v) => J::from(v),
            Value::I32(v) => J::from(v),
            Value::F32(v) => J::from(v),
            Value::Bool(v) => J::from(v),
            Value::String(s) => J::from(s),
            Value::Array(a) => J::Array(a.iter().map(|v| v.to_json()).collect()),
            Value::U64(v) => J::from(v),
            Value::I64(v) => J::from(v),
            Value::F64(v) => J::from(v),
        }
    }

    /// Copy into an owned value (for writing it to another file).
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::String(s) => MetaValue::String(s.to_string()),
            Value::Array(a) => MetaValue::Array(
                a.elem_type(),
                a.iter().map(|v| v.to_owned_value()).collect(),
            ),
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
        }
    }
}

/// Shows a value as a person wants to read it: long arrays are abbreviated.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(a) => {
                const SHOWN: usize = 6;
                write!(f, "[{} x {}: ", a.len(), a.elem_type().name())?;
                for (i, v) in a.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > SHOWN as u64 {
                    f.write_str(", ...")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// An array value: its element type, count, and the encoded elements (already validated when
/// the file was opened, so iterating cannot fail).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: u64,
    elements: &'a [u8],
}

impl<'a> Array<'a> {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// The number of elements.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, decoded one at a time from the file bytes.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            remaining: self.len,
            cursor: Cursor::new(self.elements),
        }
    }

    /// The elements of a string array, borrowed from the file; `None` for other element types.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::String).then(|| self.iter().filter_map(|v| v.as_str()))
    }
}

/// Iterator over an [`Array`]'s elements.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    elem: ValueType,
    remaining: u64,
    cursor: Cursor<'a>,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The bytes were validated at open; a failure here would mean the array is shorter than
        // its count, which validation rules out, so ending the iteration is the safe reading.
        read_value(&mut self.cursor, self.elem, 0).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// Decode one value of type `ty` at the cursor, validating as it goes.
pub(crate) fn read_value<'a>(
    c: &mut Cursor<'a>,
    ty: ValueType,
    depth: u32,
) -> Result<Value<'a>, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8("u8 value")?),
        ValueType::I8 => Value::I8(c.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array("u16 value")?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array("i16 value")?)),
        ValueType::U32 => Value::U32(c.u32("u32 value")?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array("i32 value")?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array("f32 value")?)),
        ValueType::Bool => {
            let at = c.offset();
            match c.u8("bool value")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(c.malformed(at, format!("bool value is {b}, not 0 or 1"))),
            }
        }
        ValueType::String => Value::String(c.string("string value")?),
        ValueType::U64 => Value::U64(c.u64("u64 value")?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array("i64 value")?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array("f64 value")?)),
        ValueType::Array => Value::Array(read_array(c, depth)?),
    })
}

fn read_array<'a>(c: &mut Cursor<'a>, depth: u32) -> Result<Array<'a>, GgufError> {
    let at = c.offset();
    if depth >= MAX_ARRAY_DEPTH {
        return Err(c.malformed(at, format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
    }
    let tag = c.u32("array element type")?;
    let elem = ValueType::from_u32(tag)
        .ok_or_else(|| c.malformed(at, format!("unknown array element type {tag}")))?;
    let len = c.u64("array length")?;
    // Bound the count by what the remaining bytes could hold before walking anything.
    let min_bytes = len.checked_mul(elem.min_size());
    if min_bytes.is_none_or(|b| b > c.remaining()) {
        return Err(c.malformed(
            at,
            format!(
                "array of {len} {} elements cannot fit in the {} bytes that remain",
                elem.name(),
                c.remaining()
            ),
        ));
    }
    let start = c.position();
    match elem.fixed_size() {
        Some(size) => {
            let elements_at = c.offset();
            let bytes = c.take(len * size, "array elements")?;
            if elem == ValueType::Bool {
                if let Some(p) = bytes.iter().position(|&b| b > 1) {
                    let what = format!("bool element {p} is {}, not 0 or 1", bytes[p]);
                    return Err(c.malformed(elements_at + p as u64, what));
                }
            }
        }
        None => {
            for _ in 0..len {
                read_value(c, elem, depth + 1)?;
            }
        }
    }
    Ok(Array {
        elem,
        len,
        elements: c.since(start),
    })
}

/// An owned metadata value, for writing.
// The variants are GGUF's value types, named as its specification names them.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements; every element must be of the element type.
    Array(ValueType, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Its type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(..) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> MetaValue {
        MetaValue::Array(
            ValueType::String,
            items
                .into_iter()
                .map(|s| MetaValue::String(s.into()))
                .collect(),
        )
    }

    /// An array of scalars of one type.
    pub fn array<T: Into<MetaValue>>(
        elem: ValueType,
        items: impl IntoIterator<Item = T>,
    ) -> MetaValue {
        MetaValue::Array(elem, items.into_iter().map(Into::into).collect())
    }
}

macro_rules! meta_from {
    ($($t:ty => $v:ident),*) => { $( impl From<$t> for MetaValue { fn from(x: $t) -> Self { MetaValue::$v(x) } } )* };
}
meta_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
           bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_string())
    }
}
