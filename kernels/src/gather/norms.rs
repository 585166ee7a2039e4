//! Column norms of a packed matrix: ‖W[:, j]‖₂ for every input column j, decoded from the tiles
//! (with the row scales of integer formats). Weight-informed selection scores an input by its
//! magnitude times its column's norm; computed once per matrix at load, so plain scalar code.

use half::f16;

use super::runs::for_each_segment;
use super::scalar::run_line;
use crate::layout::{t2_position, ColumnTiles, Format};

/// ‖W[:, j]‖₂ for every column j of `w` (sums of squares in f64).
pub fn column_norms(w: &ColumnTiles<'_>) -> Vec<f32> {
    let (format, d_out) = (w.format(), w.d_out());
    let rpl = format.rows_per_line();
    let scales = w.row_scale();
    let scale = |row: usize| {
        if format.is_integer() {
            scales[row]
        } else {
            1.0
        }
    };
    let mut sq = vec![0f64; w.d_in()];
    for_each_segment(w, 0, w.n_lines(), |seg, n, at| {
        for (j, sq) in sq.iter_mut().enumerate() {
            for s in 0..n {
                let line = run_line(&seg, j as u32, s);
                let row0 = (at + s) * rpl;
                for r in 0..rpl.min(d_out.saturating_sub(row0)) {
                    let v = match format {
                        Format::T2 => {
                            let (byte, shift) = t2_position(r);
                            f32::from((line[byte] >> shift) & 3) - 1.0
                        }
                        Format::I8 => f32::from(line[r] as i8),
                        Format::F16 => f16::from_le_bytes([line[2 * r], line[2 * r + 1]]).to_f32(),
                        Format::F32 => {
                            let b = &line[4 * r..4 * r + 4];
                            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                        }
                    } * scale(row0 + r);
                    *sq += f64::from(v) * f64::from(v);
                }
            }
        }
    });
    sq.into_iter().map(|s| s.sqrt() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PackedMatrix;

    /// The norms of a matrix packed in every format equal the norms of the values it holds.
    #[test]
    fn column_norms_equal_the_held_values_norms() {
        let (d_out, d_in) = (300, 37);
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect();
        let naive = |v: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
            (0..d_in)
                .map(|j| {
                    let s: f64 = (0..d_out).map(|r| f64::from(v(r, j)).powi(2)).sum();
                    s.sqrt() as f32
                })
                .collect()
        };
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{what} column {j}: {x} vs {y}"
                );
            }
        };
        let f32m = PackedMatrix::f32_from_f32(&w, d_out, d_in);
        close(
            &column_norms(&f32m.view()),
            &naive(&|r, j| w[r * d_in + j]),
            "f32",
        );
        let f16m = PackedMatrix::f16_from_f32(&w, d_out, d_in);
        let h = |r: usize, j: usize| f16::from_f32(w[r * d_in + j]).to_f32();
        close(&column_norms(&f16m.view()), &naive(&h), "f16");
        let codes: Vec<i8> = (0..d_out * d_in)
            .map(|i| ((i * 31 % 255) as i32 - 127) as i8)
            .collect();
        let scales: Vec<f32> = (0..d_out).map(|r| 0.01 + r as f32 * 1e-4).collect();
        let i8m = PackedMatrix::i8_from_codes(&codes, d_out, d_in, scales.clone());
        let q = |r: usize, j: usize| f32::from(codes[r * d_in + j]) * scales[r];
        close(&column_norms(&i8m.view()), &naive(&q), "i8");
        let ternary: Vec<i8> = codes.iter().map(|&c| c.signum()).collect();
        let t2m = PackedMatrix::t2_from_codes(&ternary, d_out, d_in, scales.clone());
        let t = |r: usize, j: usize| f32::from(ternary[r * d_in + j]) * scales[r];
        close(&column_norms(&t2m.view()), &naive(&t), "t2");
    }
}
