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
use half::slice::HalfFloatSliceExt;

use crate::memory::{as_i8_mut, AlignedBytes};

/// Bytes of one line: one column's weights for [`Format::rows_per_line`] rows.
pub const LINE_BYTES: usize = 64;

/// Lines per column run in a full tile (runs of just under 4 KiB; see the module doc).
pub const LINES_PER_TILE: usize = 61;

/// The most rows one line holds (T2's).
pub const MAX_LINE_ROWS: usize = 256;

/// How weights are encoded in the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Ternary codes, 2 bits a weight, with a scale per row.
    T2,
    /// int8 with a scale per row.
    I8,
    /// Half precision.
    F16,
    /// Single precision.
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

    /// The format's name (`t2`, `i8`, `f16`, `f32`).
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
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
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

    /// The weights' format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Rows (outputs).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Columns (inputs).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output lines (d_out rounded up to whole lines).
    pub fn n_lines(&self) -> usize {
        self.format.padded_rows(self.d_out) / self.format.rows_per_line()
    }

    /// Tiles of rows.
    pub fn n_tiles(&self) -> usize {
        self.n_lines().div_ceil(LINES_PER_TILE)
    }

    /// Per-row scales (integer formats; empty otherwise).
    pub fn row_scale(&self) -> &'a [f32] {
        self.row_scale
    }

    /// The tiles' bytes.
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

/// `fill` for the row-fed packers ([`PackedMatrix::from_rows`], `RowsQ8::from_rows`) from
/// row-major f32 weights.
pub(crate) fn copy_row(
    w: &[f32],
    d_in: usize,
) -> impl Fn(usize, &mut [f32]) -> Result<(), std::convert::Infallible> + Sync + '_ {
    move |r, out| {
        out.copy_from_slice(&w[r * d_in..(r + 1) * d_in]);
        Ok(())
    }
}

/// The value of a result that cannot fail (a packer fed from memory).
pub(crate) fn infallible<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
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
    /// The weights' format.
    pub format: Format,
    /// Rows (outputs).
    pub d_out: usize,
    /// Columns (inputs).
    pub d_in: usize,
    /// The tiles' bytes.
    pub data: AlignedBytes,
    /// Per-row scales (integer formats; empty otherwise).
    pub row_scale: Vec<f32>,
}

impl PackedMatrix {
    /// A view for the kernels.
    pub fn view(&self) -> ColumnTiles<'_> {
        ColumnTiles {
            format: self.format,
            d_out: self.d_out,
            d_in: self.d_in,
            data: self.data.as_slice(),
            row_scale: &self.row_scale,
        }
    }

    /// A matrix from bytes already in the layout (a packed model file's tensor, read in place),
    /// checked as [`ColumnTiles::new`] checks a view: size, alignment, scale count.
    pub fn from_parts(
        format: Format,
        d_out: usize,
        d_in: usize,
        data: AlignedBytes,
        row_scale: Vec<f32>,
    ) -> Result<Self, LayoutError> {
        ColumnTiles::new(format, d_out, d_in, data.as_slice(), &row_scale)?;
        Ok(PackedMatrix {
            format,
            d_out,
            d_in,
            data,
            row_scale,
        })
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
        infallible(Self::from_rows(Format::I8, d_out, d_in, copy_row(w, d_in)))
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
        infallible(m.pack_lines(|row0, bytes: &mut [u8]| {
            for (b, &v) in bytes.iter_mut().zip(&q[row0 * d_in..]) {
                *b = v as u8;
            }
            Ok(())
        }));
        m
    }

    /// A row-major [d_out, d_in] f32 matrix `w` packed as f16 tiles.
    pub fn f16_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "f16_from_f32: weights are not d_out x d_in"
        );
        infallible(Self::from_rows(Format::F16, d_out, d_in, copy_row(w, d_in)))
    }

    /// A row-major [d_out, d_in] f32 matrix `w` packed as f32 tiles.
    pub fn f32_from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "f32_from_f32: weights are not d_out x d_in"
        );
        infallible(Self::from_rows(Format::F32, d_out, d_in, copy_row(w, d_in)))
    }

    /// An I8, F16 or F32 matrix whose row r `fill(r, out)` writes as d_in f32 values (int8 with
    /// a per-row absmax scale, as [`PackedMatrix::i8_from_f32`]), one line's rows at a time: a
    /// model loader dequantizes straight from the file, never holding a whole matrix in f32
    /// (Llama-7B's 11008 x 4096 FFN matrices would take 180 MB each). The first error ends it.
    pub fn from_rows<E>(
        format: Format,
        d_out: usize,
        d_in: usize,
        mut fill: impl FnMut(usize, &mut [f32]) -> Result<(), E>,
    ) -> Result<Self, E> {
        assert!(
            format != Format::T2,
            "from_rows: ternary needs the whole tensor's mean"
        );
        let mut m = Self::zeroed(format, d_out, d_in, Vec::new());
        let mut row = vec![0f32; d_in];
        let mut halves = vec![f16::ZERO; if format == Format::F16 { d_in } else { 0 }];
        let mut scales = Vec::with_capacity(if format == Format::I8 { d_out } else { 0 });
        m.pack_lines(|row0, bytes: &mut [u8]| {
            let size = format.bits_per_weight() / 8;
            for (k, out) in bytes.chunks_exact_mut(d_in * size).enumerate() {
                fill(row0 + k, &mut row)?;
                match format {
                    Format::I8 => {
                        let q = as_i8_mut(out);
                        scales.push(crate::quant::quantize_block_absmax(&row, q));
                    }
                    Format::F16 => {
                        // The slice conversion picks F16C at run time (`f16::from_f32` one by
                        // one is software on baseline x86-64: SmolLM2's f16 load took 0.88 s).
                        halves.convert_from_f32_slice(&row);
                        for (b, h) in out.chunks_exact_mut(2).zip(&halves) {
                            b.copy_from_slice(&h.to_le_bytes());
                        }
                    }
                    _ => {
                        for (b, &v) in out.chunks_exact_mut(4).zip(&row) {
                            b.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            Ok(())
        })?;
        m.row_scale = scales;
        Ok(m)
    }

    /// Fills an I8, F16 or F32 matrix line by line: `rows(row0, bytes)` writes the row-major
    /// element bytes of the line's rows row0.. (as many as `bytes` holds, d_in elements each),
    /// which are then gathered column by column while they stay in the caches. (Element by
    /// element through `chunk_mut`, the transposition took about half of SmolLM2's int8 load:
    /// 1.30-1.49 s, then 0.62-0.66.)
    fn pack_lines<E>(
        &mut self,
        mut rows: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (d_out, d_in) = (self.d_out, self.d_in);
        let size = self.format.bits_per_weight() / 8;
        let rpl = self.format.rows_per_line();
        debug_assert_eq!(rpl * size, LINE_BYTES);
        let tile_bytes = LINES_PER_TILE * d_in * LINE_BYTES;
        let mut staged = vec![0u8; rpl * d_in * size];
        for (t, tile) in self
            .data
            .as_mut_slice()
            .chunks_mut(tile_bytes.max(1))
            .enumerate()
        {
            let lines = tile.len() / (d_in * LINE_BYTES).max(1);
            for s in 0..lines {
                let row0 = (t * LINES_PER_TILE + s) * rpl;
                let n = d_out.saturating_sub(row0).min(rpl);
                let staged = &mut staged[..n * d_in * size];
                rows(row0, staged)?;
                match size {
                    1 => gather_line::<1>(tile, staged, lines, s, n, d_in),
                    2 => gather_line::<2>(tile, staged, lines, s, n, d_in),
                    _ => gather_line::<4>(tile, staged, lines, s, n, d_in),
                }
            }
        }
        Ok(())
    }
}

/// Line s of every column of a tile (`lines` lines per run) from n staged row-major rows of
/// d_in elements of S bytes. S is a constant so that each element moves as one load and store
/// (a runtime size made every element a `memcpy` call); int8 moves 8 x 8 blocks through
/// registers ([`transpose8x8`]). SmolLM2's int8 conversion (all matrices, two workers): 590 ms
/// with the `memcpy`s, 405 with constant sizes; the blocks then took this step from 150-195 to
/// 129-140 ms of the cores' time (its first writes' page faults included).
fn gather_line<const S: usize>(
    tile: &mut [u8],
    staged: &[u8],
    lines: usize,
    s: usize,
    n: usize,
    d_in: usize,
) {
    let at = |j: usize| (j * lines + s) * LINE_BYTES;
    // int8: whole 8 x 8 blocks (8 rows of 8 columns) first.
    let (j8, r8) = if S == 1 {
        (d_in / 8 * 8, n / 8 * 8)
    } else {
        (0, 0)
    };
    for j0 in (0..j8).step_by(8) {
        for r0 in (0..r8).step_by(8) {
            let mut block: [u64; 8] = std::array::from_fn(|k| {
                let from = (r0 + k) * d_in + j0;
                u64::from_le_bytes(staged[from..from + 8].try_into().expect("8 bytes"))
            });
            transpose8x8(&mut block);
            for (c, w) in block.iter().enumerate() {
                tile[at(j0 + c) + r0..][..8].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    // The rest element by element: columns past the blocks, and the rows past them.
    for j in 0..d_in {
        let r_start = if j < j8 { r8 } else { 0 };
        for r in r_start..n {
            let (to, from) = (at(j) + r * S, (r * d_in + j) * S);
            tile[to..to + S].copy_from_slice(&staged[from..from + S]);
        }
    }
}

/// Transposes the 8 x 8 bytes of `m` (byte c of word r is element (r, c)) in three rounds of
/// masked swaps between word pairs: 4-byte blocks, then 2-byte, then single bytes.
fn transpose8x8(m: &mut [u64; 8]) {
    for (shift, mask, step) in [
        (32, 0x0000_0000_FFFF_FFFFu64, 4),
        (16, 0x0000_FFFF_0000_FFFF, 2),
        (8, 0x00FF_00FF_00FF_00FF, 1),
    ] {
        for r in 0..8 {
            if r & step == 0 {
                let (a, b) = (m[r], m[r + step]);
                let t = ((a >> shift) ^ b) & mask;
                m[r + step] = b ^ t;
                m[r] = a ^ (t << shift);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed element (row, j) of an I8 or F32 matrix, read back through `locate`.
    fn element(m: &PackedMatrix, row: usize, j: usize) -> f32 {
        let (at, r) = locate(m.format, m.d_in, m.d_out, row, j);
        let line = &m.data.as_slice()[at..at + LINE_BYTES];
        match m.format {
            Format::I8 => f32::from(line[r] as i8),
            Format::F32 => f32::from_le_bytes(line[4 * r..4 * r + 4].try_into().unwrap()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn transpose8x8_moves_every_byte_to_its_mirror() {
        let mut m: [u64; 8] = std::array::from_fn(|r| {
            u64::from_le_bytes(std::array::from_fn(|c| (16 * r + c) as u8))
        });
        transpose8x8(&mut m);
        for (c, w) in m.iter().enumerate() {
            assert_eq!(
                w.to_le_bytes(),
                std::array::from_fn(|r| (16 * r + c) as u8),
                "word {c}"
            );
        }
    }

    #[test]
    fn rows_land_where_the_layout_says_across_tiles_and_partial_lines() {
        // 4000 int8 rows: 63 lines, two tiles, the last line partial.
        for (d_out, d_in) in [(1, 1), (65, 3), (4000, 5), (4000, 21), (70, 16)] {
            let w: Vec<f32> = (0..d_out * d_in)
                .map(|k| ((k * 7919) % 255) as f32 - 127.0 + 0.25)
                .collect();
            let f = PackedMatrix::f32_from_f32(&w, d_out, d_in);
            let q = PackedMatrix::i8_from_f32(&w, d_out, d_in);
            assert_eq!(q.row_scale.len(), d_out);
            for i in 0..d_out {
                let row = &w[i * d_in..(i + 1) * d_in];
                let s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                assert_eq!(q.row_scale[i], s);
                for (j, &v) in row.iter().enumerate() {
                    assert_eq!(element(&f, i, j), v);
                    assert_eq!(element(&q, i, j), (v / s).round());
                }
            }
        }
    }

    #[test]
    fn from_rows_stops_at_the_first_error() {
        let mut asked = Vec::new();
        let r = PackedMatrix::from_rows(Format::I8, 200, 3, |r, out: &mut [f32]| {
            asked.push(r);
            out.fill(1.0);
            if r == 70 {
                Err(r)
            } else {
                Ok(())
            }
        });
        assert_eq!(r.err(), Some(70));
        assert_eq!(asked, (0..=70).collect::<Vec<_>>());
    }
}
