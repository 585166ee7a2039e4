//! The ggml tensor type table: ids, block sizes and bytes per block.
//!
//! Two numbering schemes exist in the wild. Upstream ggml (llama.cpp) retired ids 31-33 and 36-38
//! and gave 39+ to new types (MXFP4, ...). bitnet.cpp forked ggml before that and gave 36-39 to its
//! own ternary types (I2_S, I8_S, TL1, TL2), so id 39 means MXFP4 in one file and TL2 in another.
//! A file's [`TypeDialect`] is decided once from the whole file (see [`TypeDialect::detect`]) and
//! every id is then read in that dialect, never by id alone.

use std::fmt;

/// Which numbering of ggml type ids a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeDialect {
    /// Upstream ggml / llama.cpp.
    Ggml,
    /// microsoft/BitNet's fork: 36 = I2_S, 37 = I8_S, 38 = TL1, 39 = TL2.
    BitnetCpp,
}

impl TypeDialect {
    /// Decide the dialect of a file. Ids 36-38 are retired upstream, so a tensor with one of them
    /// can only come from bitnet.cpp; so can the architectures only bitnet.cpp writes. Everything
    /// else (including upstream's own `bitnet` arch with TQ1_0/TQ2_0) is upstream.
    pub fn detect(architecture: Option<&str>, raw_type_ids: impl IntoIterator<Item = u32>) -> Self {
        let bitnet_arch = matches!(architecture, Some("bitnet-b1.58" | "bitnet-25"));
        if bitnet_arch || raw_type_ids.into_iter().any(|id| (36..=38).contains(&id)) {
            TypeDialect::BitnetCpp
        } else {
            TypeDialect::Ggml
        }
    }
}

/// How many bytes a tensor of this type occupies, beyond the plain `elements / block * bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeRule {
    /// `n / block_elems * block_bytes`; the row length must be a multiple of the block.
    Blocks { elems: u32, bytes: u32 },
    /// bitnet.cpp I2_S and TL1: 2 bits per weight, then one f32 scale padded to 32 bytes.
    QuarterPlus32,
    /// bitnet.cpp TL2: its own formula over the first two dims (see `tensor_bytes`).
    Tl2,
}

macro_rules! ggml_types {
    ($( $variant:ident = $name:literal, ggml $gid:expr, bitnet $bid:expr, $rule:expr; )*) => {
        /// A ggml tensor element type (the variants are ggml's type names).
        #[allow(non_camel_case_types, missing_docs)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType { $( $variant, )* }

        impl GgmlType {
            /// Every known type, in table order.
            pub const ALL: &'static [GgmlType] = &[ $( GgmlType::$variant, )* ];

            /// The name llama.cpp prints for the type.
            pub fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// The id of the type in `dialect`, if the dialect has the type.
            pub fn id(self, dialect: TypeDialect) -> Option<u32> {
                let (g, b): (Option<u32>, Option<u32>) = match self { $( GgmlType::$variant => ($gid, $bid), )* };
                match dialect { TypeDialect::Ggml => g, TypeDialect::BitnetCpp => b }
            }

            fn size_rule(self) -> SizeRule {
                match self { $( GgmlType::$variant => $rule, )* }
            }
        }
    };
}

const fn blocks(elems: u32, bytes: u32) -> SizeRule {
    SizeRule::Blocks { elems, bytes }
}

// Sizes checked against ggml's type_traits and the Python `gguf` package's GGML_QUANT_SIZES.
ggml_types! {
    F32 = "F32", ggml Some(0), bitnet Some(0), blocks(1, 4);
    F16 = "F16", ggml Some(1), bitnet Some(1), blocks(1, 2);
    Q4_0 = "Q4_0", ggml Some(2), bitnet Some(2), blocks(32, 18);
    Q4_1 = "Q4_1", ggml Some(3), bitnet Some(3), blocks(32, 20);
    Q5_0 = "Q5_0", ggml Some(6), bitnet Some(6), blocks(32, 22);
    Q5_1 = "Q5_1", ggml Some(7), bitnet Some(7), blocks(32, 24);
    Q8_0 = "Q8_0", ggml Some(8), bitnet Some(8), blocks(32, 34);
    // ggml's C struct: two f16 (d, s) + 32 int8. Never stored in model files.
    Q8_1 = "Q8_1", ggml Some(9), bitnet Some(9), blocks(32, 36);
    Q2_K = "Q2_K", ggml Some(10), bitnet Some(10), blocks(256, 84);
    Q3_K = "Q3_K", ggml Some(11), bitnet Some(11), blocks(256, 110);
    Q4_K = "Q4_K", ggml Some(12), bitnet Some(12), blocks(256, 144);
    Q5_K = "Q5_K", ggml Some(13), bitnet Some(13), blocks(256, 176);
    Q6_K = "Q6_K", ggml Some(14), bitnet Some(14), blocks(256, 210);
    Q8_K = "Q8_K", ggml Some(15), bitnet Some(15), blocks(256, 292);
    IQ2_XXS = "IQ2_XXS", ggml Some(16), bitnet Some(16), blocks(256, 66);
    IQ2_XS = "IQ2_XS", ggml Some(17), bitnet Some(17), blocks(256, 74);
    IQ3_XXS = "IQ3_XXS", ggml Some(18), bitnet Some(18), blocks(256, 98);
    IQ1_S = "IQ1_S", ggml Some(19), bitnet Some(19), blocks(256, 50);
    IQ4_NL = "IQ4_NL", ggml Some(20), bitnet Some(20), blocks(32, 18);
    IQ3_S = "IQ3_S", ggml Some(21), bitnet Some(21), blocks(256, 110);
    IQ2_S = "IQ2_S", ggml Some(22), bitnet Some(22), blocks(256, 82);
    IQ4_XS = "IQ4_XS", ggml Some(23), bitnet Some(23), blocks(256, 136);
    I8 = "I8", ggml Some(24), bitnet Some(24), blocks(1, 1);
    I16 = "I16", ggml Some(25), bitnet Some(25), blocks(1, 2);
    I32 = "I32", ggml Some(26), bitnet Some(26), blocks(1, 4);
    I64 = "I64", ggml Some(27), bitnet Some(27), blocks(1, 8);
    F64 = "F64", ggml Some(28), bitnet Some(28), blocks(1, 8);
    IQ1_M = "IQ1_M", ggml Some(29), bitnet Some(29), blocks(256, 56);
    BF16 = "BF16", ggml Some(30), bitnet Some(30), blocks(1, 2);
    TQ1_0 = "TQ1_0", ggml Some(34), bitnet Some(34), blocks(256, 54);
    TQ2_0 = "TQ2_0", ggml Some(35), bitnet Some(35), blocks(256, 66);
    MXFP4 = "MXFP4", ggml Some(39), bitnet None, blocks(32, 17);
    NVFP4 = "NVFP4", ggml Some(40), bitnet None, blocks(64, 36);
    Q1_0 = "Q1_0", ggml Some(41), bitnet None, blocks(128, 18);
    I2_S = "I2_S", ggml None, bitnet Some(36), SizeRule::QuarterPlus32;
    I8_S = "I8_S", ggml None, bitnet Some(37), blocks(1, 1);
    TL1 = "TL1", ggml None, bitnet Some(38), SizeRule::QuarterPlus32;
    TL2 = "TL2", ggml None, bitnet Some(39), SizeRule::Tl2;
}

impl GgmlType {
    /// The type with `id` in `dialect`, or `None` for an id the dialect does not define.
    pub fn from_id(id: u32, dialect: TypeDialect) -> Option<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.id(dialect) == Some(id))
    }

    /// The type named `name` (case-insensitive), as llama.cpp prints it.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for plain scalar types and bitnet.cpp's whole-tensor formats).
    pub fn block_elems(self) -> u32 {
        match self.size_rule() {
            SizeRule::Blocks { elems, .. } => elems,
            SizeRule::QuarterPlus32 | SizeRule::Tl2 => 1,
        }
    }

    /// Bytes per block, where the type is a plain block format.
    pub fn block_bytes(self) -> Option<u32> {
        match self.size_rule() {
            SizeRule::Blocks { bytes, .. } => Some(bytes),
            SizeRule::QuarterPlus32 | SizeRule::Tl2 => None,
        }
    }

    /// Bytes a tensor of this type and shape occupies, or why the shape cannot hold this type.
    /// `dims[0]` is the row length. Every product is checked: counts come from untrusted files.
    pub fn tensor_bytes(self, dims: &[u64]) -> Result<u64, String> {
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("element count of shape {dims:?} overflows u64"))?;
        let row = dims.first().copied().unwrap_or(1);
        match self.size_rule() {
            SizeRule::Blocks { elems, bytes } => {
                if row % u64::from(elems) != 0 {
                    return Err(format!(
                        "row length {row} is not a multiple of the {} block size {elems}",
                        self.name()
                    ));
                }
                (n / u64::from(elems))
                    .checked_mul(u64::from(bytes))
                    .ok_or_else(|| format!("byte size of shape {dims:?} overflows u64"))
            }
            SizeRule::QuarterPlus32 => Ok(n / 4 + 32),
            SizeRule::Tl2 => {
                // bitnet.cpp: the first 256 columns in one code, the rest 3 weights per 5 bits;
                // rounded up to 32 bytes, then 32 bytes of scale.
                let ne1 = dims.get(1).copied().unwrap_or(1);
                if row < 256 {
                    return Err(format!(
                        "TL2 needs rows of at least 256 elements, got {row}"
                    ));
                }
                let a = (row - 256)
                    .checked_mul(ne1)
                    .map(|v| v / 3 * 5 / 8)
                    .ok_or_else(|| format!("byte size of shape {dims:?} overflows u64"))?;
                let b = 256u64.checked_mul(ne1).map(|v| v / 2 * 4 / 8);
                let total = b
                    .and_then(|b| a.checked_add(b))
                    .ok_or_else(|| "TL2 size overflows".to_string())?;
                Ok(total.div_ceil(32) * 32 + 32)
            }
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_within_each_dialect() {
        for dialect in [TypeDialect::Ggml, TypeDialect::BitnetCpp] {
            let mut ids: Vec<u32> = GgmlType::ALL.iter().filter_map(|t| t.id(dialect)).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "duplicate id in {dialect:?}");
        }
    }

    #[test]
    fn id_39_depends_on_dialect() {
        assert_eq!(
            GgmlType::from_id(39, TypeDialect::Ggml),
            Some(GgmlType::MXFP4)
        );
        assert_eq!(
            GgmlType::from_id(39, TypeDialect::BitnetCpp),
            Some(GgmlType::TL2)
        );
        assert_eq!(GgmlType::from_id(36, TypeDialect::Ggml), None);
        assert_eq!(
            GgmlType::from_id(36, TypeDialect::BitnetCpp),
            Some(GgmlType::I2_S)
        );
    }

    #[test]
    fn dialect_detection() {
        assert_eq!(
            TypeDialect::detect(Some("llama"), [0, 2, 39]),
            TypeDialect::Ggml
        );
        assert_eq!(
            TypeDialect::detect(Some("bitnet"), [34, 35]),
            TypeDialect::Ggml
        );
        assert_eq!(
            TypeDialect::detect(Some("bitnet"), [0, 36]),
            TypeDialect::BitnetCpp
        );
        assert_eq!(
            TypeDialect::detect(Some("bitnet-b1.58"), [0, 1]),
            TypeDialect::BitnetCpp
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(
            GgmlType::Q4_1.tensor_bytes(&[576, 1536]),
            Ok(576 * 1536 / 32 * 20)
        );
        assert_eq!(GgmlType::BF16.tensor_bytes(&[3, 5]), Ok(30));
        assert_eq!(
            GgmlType::I2_S.tensor_bytes(&[2560, 6912]),
            Ok(2560 * 6912 / 4 + 32)
        );
        assert!(GgmlType::Q4_K.tensor_bytes(&[576, 10]).is_err());
        assert!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]).is_err());
        assert!(GgmlType::F64.tensor_bytes(&[u64::MAX / 4]).is_err());
    }
}
