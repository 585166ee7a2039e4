//! The column-major weight layout every gather kernel reads, and packers into it.
//!
//! A linear layer y = W·x with W of shape [d_out, d_in] is stored input-channel-major: the weights
//! of input j (column j) are contiguous, so a sparse input needs only the columns it keeps.
//!
//! Geometry, in 64-byte lines. A *line* holds one column's weights for a fixed number of rows
//! (T2 256, I8 64, F16 32, F32 16). Rows are padded to whole lines and cut into tiles of up to
//! [`LINES_PER_TILE`] (61) lines; within a tile every column's lines form one contiguous *run* of
//! up to 3904 bytes, runs in column order. A sparse product reads whole runs, skips whole runs:
//!
//! ```text
//! tile 0: [col 0: line 0 .. line 60][col 1: line 0 .. line 60] ... [col d_in-1: ...]
//! tile 1: ... (the last tile may have fewer lines)
//! ```
//!
//! Why runs of 4 KiB: reading a random half of a buffer in runs of 64 B moved only ~6 GB/s of
//! useful data on the AVX2 development machine against ~19 GB/s sequential, in runs of 1 KiB ~12,
//! in runs of 4 KiB ~19 (`examples/run_length.rs`): DRAM and the hardware prefetchers work in
//! pages and streams, so skipping must be coarse to save time. A first layout with one 64-byte
//! line per column made a product at 50% sparsity exactly as slow as the dense one. Full tiles
//! have 61 lines, not 64: runs of exactly 4 KiB put every column's line s in the same cache set.
//!
//! | format | weights | rows per line |
//! |---|---|---|
//! | `T2`  | ternary {−1,0,+1} as 2-bit codes t+1 ∈ {0,1,2}, see below | 256 |
//! | `I8`  | int8, row r at byte r | 64 |
//! | `F16` | IEEE half, row r at element r | 32 |
//! | `F32` | f32, row r at element r | 16 |
//!
//! T2 codes in a line: 8 groups of 32 rows, 8 bytes each; in group g, bits 2q..2q+1 of byte k
//! hold row 32g + 8q + k. Shifting a whole 32-byte half line right by 2q (as 16-bit words) and
//! masking with 3 gives, in byte 8g + k, the code of row 32g + 8q + k: three immediate shifts and
//! four ANDs decode 128 rows (the AVX2 kernel; broadcasting one group and shifting lane q by 2q gives
//! them in row order, but variable shifts are slow on some AMD cores). The codes feed
//! `pmaddubsw` as unsigned bytes against signed activations; Σ_j x_j is subtracted once per
//! product (Σ (t+1)·x = Σ t·x + Σ x).
//!
//! Integer formats carry a per-output-row f32 scale (BitNet's single per-tensor α is the case
//! where all are equal). Padding rows are zero and never written out.

use half::f16;

use crate::memory::AlignedBytes;

/// Bytes of one line: one column's weights for [`Format::rows_per_line`] rows.
pub const LINE_BYTES: usize = 64;

/// Lines per column run in a full tile (runs of just under 4 KiB; see the module doc).
pub const LINES_PER_TILE: usize = 61;

/// The most rows one line holds (T2's).
pub const MAX_LINE_ROWS: usize = 256;

/// How weights are encoded in the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    T2,
    I8,
    F16,
    F32,
}

impl Format {
    /// Output rows one 64-byte line of a column holds.
    pub const fn rows_per_line(self) -> usize {
        LINE_BYTES * 8 / self.bits_per_weight()
    }

    /// Rows of a full tile.
    pub const fn tile_rows(self) -> usize {
        self.rows_per_line() * LINES_PER_TILE
    }

    /// Bits of storage per weight.
    pub const fn bits_per_weight(self) -> usize {
        match self {
            Format::T2 => 2,
            Format::I8 => 8,
            Format::F16 => 16,
            Format::F32 => 32,
        }
    }

    /// d_out rounded up to whole lines.
    pub const fn padded_rows(self, d_out: usize) -> usize {
        d_out.div_ceil(self.rows_per_line()) * self.rows_per_line()
    }

    /// Whether the format takes int8-quantized activations (else f32).
    pub const fn is_integer(self) -> bool {
        matches!(self, Format::T2 | Format::I8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::T2 => "T2",
            Format::I8 => "I8",
            Format::F16 => "F16",
            Format::F32 => "F32",
        }
    }

    /// Bytes of a [d_out, d_in] matrix in this layout.
    pub fn matrix_bytes(self, d_out: usize, d_in: usize) -> usize {
        self.padded_rows(d_out) / self.rows_per_line() * d_in * LINE_BYTES
    }
}

/// A weight matrix in the tiled column-major layout, borrowed (from a packed file's mapping, or
/// from a [`PackedMatrix`]). Sizes are checked once, at construction, so kernels can trust them.
#[derive(Debug, Clone, Copy)]
pub struct ColumnTiles<'a> {
    format: Format,
    d_out: usize,
    d_in: usize,
    data: &'a [u8],
    row_scale: &'a [f32],
}

/// Why bytes cannot be viewed as a [`ColumnTiles`] matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{format:?} [{d_out} x {d_in}] needs {expected} bytes of weights, got {got}")]
    Size {
        format: Format,
        d_out: usize,
        d_in: usize,
        expected: usize,
        got: usize,
    },
    #[error("{format:?} weights must start on a 64-byte boundary")]
    Misaligned { format: Format },
    #[error("{format:?} [{d_out} x {d_in}] needs {expected} row scales, got {got}")]
    Scales {
        format: Format,
        d_out: usize,
        d_in: usize,
        expected: usize,
        got: usize,
    },
}

impl<'a> ColumnTiles<'a> {
    /// View `data` as a [d_out, d_in] matrix. Integer formats need `d_out` row scales; float
    /// formats take none (pass an empty slice).
    pub fn new(
        format: Format,
        d_out: usize,
        d_in: usize,
        data: &'a [u8],
        row_scale: &'a [f32],
    ) -> Result<Self, LayoutError> {
        let expected = format.matrix_bytes(d_out, d_in);
        if data.len() != expected {
            return Err(LayoutError::Size {
                format,
                d_out,
                d_in,
                expected,
                got: data.len(),
            });
        }
        if !(data.as_ptr() as usize).is_multiple_of(64) {
            return Err(LayoutError::Misaligned { format });
        }
        let scales = if format.is_integer() { d_out } else { 0 };
        if row_scale.len() != scales {
            return Err(LayoutError::Scales {
                format,
                d_out,
                d_in,
                expected: scales,
                got: row_scale.len(),
            });
        }
        Ok(ColumnTiles {
            format,
            d_out,
            d_in,
            data,
            row_scale,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output lines (d_out rounded up to whole lines).
    pub fn n_lines(&self) -> usize {
        self.format.padded_rows(self.d_out) / self.format.rows_per_line()
    }

    pub fn n_tiles(&self) -> usize {
        self.n_lines().div_ceil(LINES_PER_TILE)
    }

    pub fn row_scale(&self) -> &'a [f32] {
        self.row_scale
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Lines in tile `t` (64, or fewer in the last tile): also the run length of each column.
    pub fn tile_lines(&self, t: usize) -> usize {
        (self.n_lines() - t * LINES_PER_TILE).min(LINES_PER_TILE)
    }

    /// The bytes of tile `t`: d_in runs of `tile_lines(t)` lines.
    pub fn tile(&self, t: usize) -> &'a [u8] {
        let start = t * LINES_PER_TILE * self.d_in * LINE_BYTES;
        &self.data[start..start + self.tile_lines(t) * self.d_in * LINE_BYTES]
    }

    /// Bytes of weights a product reads when `kept` of the d_in columns are used.
    pub fn bytes_read(&self, kept: usize) -> usize {
        self.n_lines() * kept * LINE_BYTES
    }
}

/// Where (row, column) of a [d_out, d_in] matrix lives: byte offset of its line, row in the line.
fn locate(format: Format, d_in: usize, d_out: usize, row: usize, j: usize) -> (usize, usize) {
    let rpl = format.rows_per_line();
    let n_lines = format.padded_rows(d_out) / rpl;
    let (line, r) = (row / rpl, row % rpl);
    let (t, s) = (line / LINES_PER_TILE, line % LINES_PER_TILE);
    let tile_lines = (n_lines - t * LINES_PER_TILE).min(LINES_PER_TILE);
    let at = (t * LINES_PER_TILE * d_in + j * tile_lines + s) * LINE_BYTES;
    (at, r)
}

/// Where row `r` (0..256) of a T2 line lives: (byte, bit shift) of its 2-bit code.
#[inline(always)]
pub fn t2_position(r: usize) -> (usize, u32) {
    let (g, q, k) = (r / 32, (r % 32) / 8, r % 8);
    (8 * g + k, 2 * q as u32)
}

/// An owned matrix in the tiled layout (made by the packers below).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub format: Format,
    pub d_out: usize,
    pub d_in: usize,
    pub data: AlignedBytes,
    pub row_scale: Vec<f32>,
}

impl PackedMatrix {
    pub fn view(&self) -> ColumnTiles<'_> {
        ColumnTiles {
            format: self.format,
            d_out: self.d_out,
            d_in: self.d_in,
            data: self.data.as_slice(),
            row_scale: &self.row_scale,
        }
    }

    fn zeroed(format: Format, d_out: usize, d_in: usize, row_scale: Vec<f32>) -> Self {
        PackedMatrix {
            format,
            d_out,
            d_in,
            data: AlignedBytes::zeroed(format.matrix_bytes(d_out, d_in)),
            row_scale,
        }
    }

    /// The line holding (row, column j), and the row's index in that line.
    fn chunk_mut(&mut self, row: usize, j: usize) -> (&mut [u8], usize) {
        let (at, r) = locate(self.format, self.d_in, self.d_out, row, j);
        (&mut self.data.as_mut_slice()[at..at + LINE_BYTES], r)
    }

    /// Pack ternary weights given as codes in {−1, 0, +1} (row-major `[d_out][d_in]`) with a
    /// per-row scale. Codes outside {−1, 0, +1} are clamped.
    pub fn t2_from_codes(codes: &[i8], d_out: usize, d_in: usize, row_scale: Vec<f32>) -> Self {
        assert_eq!(
            codes.len(),
            d_out * d_in,
            "t2_from_codes: codes are not d_out x d_in"
        );
        assert_eq!(row_scale.len(), d_out, "t2_from_codes: one scale per row");
        let mut m = Self::zeroed(Format::T2, d_out, d_in, row_scale);
        for i in 0..d_out {
            for j in 0..d_in {
                let c = codes[i * d_in + j].signum();
                let (chunk, r) = m.chunk_mut(i, j);
                let (byte, shift) = t2_position(r);
                chunk[byte] |= ((c + 1) as u8) << shift;
            }
        }
        m
    }

    /// Ternarize f32 weights as BitNet b1.58 does: α = mean|W| over the whole tensor,
    /// W_t = round(clamp(W/α, −1, 1)), every row scaled by α.
    pub fn t2_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "t2_from_f32: weights are not d_out x d_in"
        );
        let alpha =
            (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len().max(1) as f64) as f32;
        let inv = if alpha > 0.0 { 1.0 / alpha } else { 0.0 };
        let codes: Vec<i8> = w
            .iter()
            .map(|&v| (v * inv).clamp(-1.0, 1.0).round() as i8)
            .collect();
        Self::t2_from_codes(&codes, d_out, d_in, vec![alpha; d_out])
    }

    /// int8 weights with a per-row absmax scale: s_i = max|W_i|/127, q = round(W/s_i).
    pub fn i8_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "i8_from_f32: weights are not d_out x d_in"
        );
        let mut scales = Vec::with_capacity(d_out);
        let mut q = vec![0i8; w.len()];
        for i in 0..d_out {
            let rows = i * d_in..(i + 1) * d_in;
            scales.push(crate::quant::quantize_block_absmax(
                &w[rows.clone()],
                &mut q[rows],
            ));
        }
        Self::i8_from_codes(&q, d_out, d_in, scales)
    }

    /// int8 weights given directly (row-major) with a per-row scale.
    pub fn i8_from_codes(q: &[i8], d_out: usize, d_in: usize, row_scale: Vec<f32>) -> Self {
        assert_eq!(
            q.len(),
            d_out * d_in,
            "i8_from_codes: weights are not d_out x d_in"
        );
        assert_eq!(row_scale.len(), d_out, "i8_from_codes: one scale per row");
        let mut m = Self::zeroed(Format::I8, d_out, d_in, row_scale);
        m.fill_from_rows(|k| [q[k] as u8]);
        m
    }

    /// Fills an I8, F16 or F32 matrix from row-major source elements, `bytes(k)` giving element
    /// k = row·d_in + j: line by line, column by column, so that a line's source rows stay in the
    /// caches while their columns are gathered. (Element by element through `chunk_mut`, the
    /// transposition took about half of SmolLM2's int8 load: 1.30-1.49 s, now 0.62-0.66.)
    fn fill_from_rows<const B: usize>(&mut self, bytes: impl Fn(usize) -> [u8; B]) {
        debug_assert_eq!(self.format.rows_per_line() * B, LINE_BYTES);
        let (d_out, d_in) = (self.d_out, self.d_in);
        let rpl = LINE_BYTES / B;
        let tile_bytes = LINES_PER_TILE * d_in * LINE_BYTES;
        for (t, tile) in self
            .data
            .as_mut_slice()
            .chunks_mut(tile_bytes.max(1))
            .enumerate()
        {
            let lines = tile.len() / (d_in * LINE_BYTES).max(1);
            for s in 0..lines {
                let row0 = (t * LINES_PER_TILE + s) * rpl;
                let rows = d_out.saturating_sub(row0).min(rpl);
                for j in 0..d_in {
                    let at = (j * lines + s) * LINE_BYTES;
                    for (r, e) in tile[at..at + rows * B].chunks_exact_mut(B).enumerate() {
                        e.copy_from_slice(&bytes((row0 + r) * d_in + j));
                    }
                }
            }
        }
    }

    pub fn f16_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "f16_from_f32: weights are not d_out x d_in"
        );
        let mut m = Self::zeroed(Format::F16, d_out, d_in, Vec::new());
        m.fill_from_rows(|k| f16::from_f32(w[k]).to_le_bytes());
        m
    }

    pub fn f32_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "f32_from_f32: weights are not d_out x d_in"
        );
        let mut m = Self::zeroed(Format::F32, d_out, d_in, Vec::new());
        m.fill_from_rows(|k| w[k].to_le_bytes());
        m
    }
}
