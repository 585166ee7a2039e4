//! Scalar dequantization of ggml block types to f32: the reference the loader converts weights
//! with (at load, once), and what tests compare against the Python `gguf` package's dequantizer.
//! Layouts follow ggml's `dequantize_row_*` (and bitnet.cpp's for I2_S); each block's layout is
//! written out next to its decoder.

use half::{bf16, f16};

use super::types::GgmlType;

/// Why a buffer cannot be dequantized.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("dequantizing {ty} is not supported")]
    Unsupported { ty: GgmlType },
    #[error("{ty}: {n} values need {expected} bytes, got {got}")]
    Size {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },
}

/// The types [`dequantize`] decodes.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::I2_S,
];

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decode `out.len()` values of type `ty` from `data` (a whole tensor for I2_S, whose scale sits
/// after its codes; any whole number of blocks otherwise).
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let n = out.len();
    let expected = ty
        .tensor_bytes(&[n as u64])
        .map_err(|_| DequantError::Size {
            ty,
            n,
            expected: 0,
            got: data.len(),
        })? as usize;
    if data.len() != expected {
        return Err(DequantError::Size {
            ty,
            n,
            expected,
            got: data.len(),
        });
    }
    let block = ty.block_elems() as usize;
    let bytes = ty.block_bytes().unwrap_or(0) as usize;
    let mut blocks = |decode: fn(&[u8], &mut [f32])| {
        for (b, y) in data
            .chunks_exact(bytes.max(1))
            .zip(out.chunks_exact_mut(block))
        {
            decode(b, y);
        }
    };
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks(q4_0),
        GgmlType::Q4_1 => blocks(q4_1),
        GgmlType::Q5_0 => blocks(q5_0),
        GgmlType::Q5_1 => blocks(q5_1),
        GgmlType::Q8_0 => blocks(q8_0),
        GgmlType::Q2_K => blocks(q2_k),
        GgmlType::Q3_K => blocks(q3_k),
        GgmlType::Q4_K => blocks(q4_k),
        GgmlType::Q5_K => blocks(q5_k),
        GgmlType::Q6_K => blocks(q6_k),
        GgmlType::TQ1_0 => blocks(tq1_0),
        GgmlType::TQ2_0 => blocks(tq2_0),
        GgmlType::I2_S => i2_s(data, out),
        _ => return Err(DequantError::Unsupported { ty }),
    }
    Ok(())
}

/// Decode row `r` (`out.len()` values) of a row-major tensor of type `ty` whose bytes are
/// `tensor`: block types slice the row's own blocks; I2_S, whose blocks run across rows and whose
/// one scale follows all the codes, decodes the row's elements from the whole tensor.
pub fn dequantize_row(
    ty: GgmlType,
    tensor: &[u8],
    rows: usize,
    r: usize,
    out: &mut [f32],
) -> Result<(), DequantError> {
    let d = out.len();
    let size_error = |expected| DequantError::Size {
        ty,
        n: d * rows,
        expected,
        got: tensor.len(),
    };
    if ty == GgmlType::I2_S {
        let n = d * rows;
        let expected = ty.tensor_bytes(&[n as u64]).map_err(|_| size_error(0))? as usize;
        if tensor.len() != expected || r >= rows {
            return Err(size_error(expected));
        }
        i2_s_range(tensor, n, r * d, out);
        return Ok(());
    }
    if rows == 0 || !tensor.len().is_multiple_of(rows) || r >= rows {
        return Err(size_error(tensor.len()));
    }
    let row_bytes = tensor.len() / rows;
    dequantize(ty, &tensor[r * row_bytes..(r + 1) * row_bytes], out)
}

/// Q4_0 (18 bytes / 32): f16 d, qs[16]; low nibbles are elements 0-15, high nibbles 16-31;
/// value (q − 8)·d.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        y[j] = (i32::from(b[2 + j] & 0xF) - 8) as f32 * d;
        y[j + 16] = (i32::from(b[2 + j] >> 4) - 8) as f32 * d;
    }
}

/// Q4_1 (20 bytes / 32): f16 d, f16 m, qs[16] as Q4_0; value q·d + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        y[j] = f32::from(b[4 + j] & 0xF) * d + m;
        y[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
    }
}

/// Q5_0 (22 bytes / 32): f16 d, u32 qh (fifth bits), qs[16]; value (q − 16)·d.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((u32::from(b[6 + j] & 0xF) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = ((u32::from(b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1 (24 bytes / 32): f16 d, f16 m, u32 qh, qs[16]; value q·d + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (u32::from(b[8 + j] & 0xF) | h0) as f32 * d + m;
        y[j + 16] = (u32::from(b[8 + j] >> 4) | h1) as f32 * d + m;
    }
}

/// Q8_0 (34 bytes / 32): f16 d, int8 qs[32]; value q·d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Q2_K (84 bytes / 256): scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0xF), dmin * f32::from(sc >> 4));
                for l in 0..16 {
                    let v = f32::from((q[16 * half + l] >> shift) & 3);
                    y[128 * n + 32 * j + 16 * half + l] = dl * v - ml;
                }
            }
        }
    }
}

/// Q3_K (110 bytes / 256): hmask[32], qs[64], scales[12] (16 six-bit scales), f16 d.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    // Unpack the 16 six-bit scales (ggml's kmask1/kmask2 shuffle).
    let a = |i: usize| u32::from_le_bytes([sc[4 * i], sc[4 * i + 1], sc[4 * i + 2], sc[4 * i + 3]]);
    let (a0, a1, tmp) = (a(0), a(1), a(2));
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let aux = [
        (a0 & K2) | ((tmp & K1) << 4),
        (a1 & K2) | (((tmp >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((tmp >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((tmp >> 6) & K1) << 4),
    ];
    let scales: Vec<i32> = aux
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|s| i32::from(s as i8) - 32)
        .collect();
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let i = 16 * half + l;
                    let low = i32::from((q[i] >> shift) & 3);
                    let high = if hmask[i] & m != 0 { 0 } else { 4 };
                    y[128 * n + 32 * j + i] = dl * (low - high) as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// The j-th (scale, min) pair of the 12 packed six-bit K-quant scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K (144 bytes / 256): f16 d, f16 dmin, scales[12], qs[128]; per 64 elements, low nibbles
/// then high nibbles, each 32 with its own scale and min.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            y[64 * c + l] = d1 * f32::from(q[l] & 0xF) - m1;
            y[64 * c + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// Q5_K (176 bytes / 256): f16 d, f16 dmin, scales[12], qh[32], qs[128]; as Q4_K plus a fifth bit.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * c + l] = d1 * f32::from((q[l] & 0xF) + h1) - m1;
            y[64 * c + 32 + l] = d2 * f32::from((q[l] >> 4) + h2) - m2;
        }
    }
}

/// Q6_K (210 bytes / 256): ql[128], qh[64], int8 scales[16], f16 d; values centred by −32.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            let base = 128 * n;
            y[base + l] = s(0) * q1 as f32;
            y[base + l + 32] = s(2) * q2 as f32;
            y[base + l + 64] = s(4) * q3 as f32;
            y[base + l + 96] = s(6) * q4 as f32;
        }
    }
}

/// TQ1_0 (54 bytes / 256): qs[48] with 5 trits per byte, qh[4] with 4 trits per byte (stored as
/// ceil(v·256/243)), f16 d; value (t − 1)·d. Trit n of byte q is ((q·3^n mod 256)·3) >> 8.
fn tq1_0(b: &[u8], y: &mut [f32]) {
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    let (qs, qh) = (&b[0..48], &b[48..52]);
    let d = f16_at(b, 52);
    let trit = |q: u8, n: usize| (((u16::from(q.wrapping_mul(POW3[n]))) * 3) >> 8) as i32 - 1;
    let mut i = 0;
    for (start, width) in [(0, 32), (32, 16)] {
        for n in 0..5 {
            for m in 0..width {
                y[i] = trit(qs[start + m], n) as f32 * d;
                i += 1;
            }
        }
    }
    for n in 0..4 {
        for &q in qh {
            y[i] = trit(q, n) as f32 * d;
            i += 1;
        }
    }
}

/// TQ2_0 (66 bytes / 256): qs[64], f16 d; in each 32-byte chunk byte m holds elements m, m+32,
/// m+64, m+96 at bits 1:0, 3:2, 5:4, 7:6; value (q − 1)·d.
fn tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for j in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                let q = (b[32 * j + m] >> (2 * l)) & 3;
                y[128 * j + 32 * l + m] = (i32::from(q) - 1) as f32 * d;
            }
        }
    }
}

/// bitnet.cpp I2_S (x86 layout): 2-bit codes w+1 in 128-element blocks of 32 bytes, byte j
/// holding elements j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0; one f32 scale for the whole
/// tensor right after the n/4 code bytes (then padding to 32 bytes).
fn i2_s(data: &[u8], out: &mut [f32]) {
    i2_s_range(data, out.len(), 0, out)
}

/// Elements start.. (out.len() of them) of an I2_S tensor of n elements (`data` is all of it,
/// sizes checked by the caller).
fn i2_s_range(data: &[u8], n: usize, start: usize, out: &mut [f32]) {
    let at = n / 4;
    let scale = f32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    for (k, o) in out.iter_mut().enumerate() {
        let (blk, pos) = ((start + k) / 128, (start + k) % 128);
        let q = (data[32 * blk + pos % 32] >> (6 - 2 * (pos / 32))) & 3;
        *o = (i32::from(q) - 1) as f32 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        let mut out = vec![0.0; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out),
            Err(DequantError::Size { expected: 34, .. })
        ));
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).is_ok());
        let mut odd = vec![0.0; 31];
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut odd).is_err());
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0.0; 256]),
            Err(DequantError::Unsupported { .. })
        ));
    }

    #[test]
    fn i2_s_rows_are_decoded_from_the_whole_tensor() {
        // 3 rows of 160: rows straddle the 128-element blocks, the scale follows all codes.
        let (rows, d) = (3, 160);
        let n = rows * d;
        let codes: Vec<u8> = (0..n).map(|i| ((i * 5 + i / 7) % 3) as u8).collect();
        let mut data = vec![0u8; GgmlType::I2_S.tensor_bytes(&[n as u64]).unwrap() as usize];
        for (i, &c) in codes.iter().enumerate() {
            let (blk, e) = (i / 128, i % 128);
            data[32 * blk + e % 32] |= c << (6 - 2 * (e / 32));
        }
        data[n / 4..n / 4 + 4].copy_from_slice(&0.25f32.to_le_bytes());
        let mut whole = vec![0.0; n];
        dequantize(GgmlType::I2_S, &data, &mut whole).unwrap();
        let mut row = vec![0.0; d];
        for r in 0..rows {
            dequantize_row(GgmlType::I2_S, &data, rows, r, &mut row).unwrap();
            assert_eq!(row, whole[r * d..(r + 1) * d], "row {r}");
        }
        assert!(dequantize_row(GgmlType::I2_S, &data[1..], rows, 0, &mut row).is_err());
        assert!(dequantize_row(GgmlType::I2_S, &data, rows, rows, &mut row).is_err());
        // Block types: the row's own bytes.
        let q8: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
        let mut all = vec![0.0; 64];
        dequantize(GgmlType::Q8_0, &q8, &mut all).unwrap();
        let mut one = vec![0.0; 32];
        dequantize_row(GgmlType::Q8_0, &q8, 2, 1, &mut one).unwrap();
        assert_eq!(one, all[32..]);
    }

    #[test]
    fn i2_s_layout_round_trips() {
        // Elements j, j+32, j+64, j+96 of a block share byte j, highest bits first.
        let n = 256;
        let codes: Vec<u8> = (0..n).map(|i| ((i * 7) % 3) as u8).collect();
        let mut data = vec![0u8; n / 4 + 32];
        for (i, &c) in codes.iter().enumerate() {
            let (blk, e) = (i / 128, i % 128);
            data[32 * blk + e % 32] |= c << (6 - 2 * (e / 32));
        }
        data[n / 4..n / 4 + 4].copy_from_slice(&0.5f32.to_le_bytes());
        let mut out = vec![0.0; n];
        dequantize(GgmlType::I2_S, &data, &mut out).unwrap();
        for (o, &c) in out.iter().zip(&codes) {
            assert_eq!(*o, (f32::from(c) - 1.0) * 0.5);
        }
    }
}
