//! Dense row-major Q8 matvec for the lm_head: weights and activation both in blocks of
//! [`Q8_BLOCK`] int8 values with one scale per block (ggml's Q8_0), so
//! y_r = Σ_b (s_rb · d_b) · Σ_{i in b} W_ri · q_i.
//!
//! Why a second int8 product next to the column gather: the lm_head (49152 x 576 for SmolLM2, the
//! largest matrix a token reads) is read whole unless its input is sparsified, so it needs no
//! columns. Row-major, it keeps the file's Q8_0 blocks exactly (the per-row int8 of the column
//! layout re-rounded them: +0.44% perplexity from the head alone on SmolLM2), a block-scaled
//! activation keeps an outlier from flattening more than its own 31 neighbours, and both operands
//! stay int8: `vpsignb` moves the activation's signs onto the weights and `vpmaddubsw` multiplies
//! |q| by them. On SmolLM2's head it is a little faster than the column product, on Llama-7B's
//! 4096 x 32000 head a little slower (`examples/head_speed.rs`; see [`RowsQ8`] on its scales).
//!
//! Block sums are exact integers; their scaled sum is f32 in lane order, so SIMD differs from the
//! scalar reference by rounding only: tests bound |y − y_ref| by 1e-5 · Σ_b |s_rb·d_b|·Σ|W·q|.
//!
//! The weights may also be held as 4-bit codes ([`CodeBits::Four`]: ±7 steps of a block scale,
//! two to a byte), a lighter head where it is a large part of a token (a sparse ternary model's); the
//! kernels unpack them to int8 and multiply as above. With AVX-512 VNNI, 4-bit codes and long
//! 8-bit rows take a `vpdpbusd` form instead (the codes + 8 or + 128 its unsigned side, that
//! offset times Σq removed per block).

use rayon::prelude::*;

use crate::isa::Isa;
use crate::layout::{copy_row, infallible};
use crate::memory::{as_i8, as_i8_mut, AlignedBytes};
use crate::quant::{check_finite, quantize_block_absmax, NonFinite};

/// Values per quantization block (of weights and of the activation).
pub const Q8_BLOCK: usize = 32;

/// Below this many weight bytes, stay on one thread.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// Rows ahead of the current group of four whose bytes are prefetched: a group is one contiguous
/// stretch (4 x 576 bytes for SmolLM2) read as four interleaved 9-line streams, too short for the
/// hardware prefetchers to ramp up (without it the head takes twice as long,
/// `examples/head_speed.rs`). Non-temporal, as the gather's runs: they are read once a token.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 16;

/// From this many codes a row, 8-bit heads take the VNNI kernel (see `rows`).
#[cfg(target_arch = "x86_64")]
const VNNI_MIN_ROW: usize = 2048;

/// Int8 blocks of [`Q8_BLOCK`] values, each with its own scale: v_i ≈ d_b · q_i, q within ±127
/// (`vpsignb` cannot negate −128). Quantizing reuses the buffers (no allocation once sized).
#[derive(Debug, Default, Clone)]
pub struct BlockQ8 {
    /// The quantized values, in blocks of 32.
    pub values: Vec<i8>,
    /// One scale per block of 32.
    pub scales: Vec<f32>,
}

impl BlockQ8 {
    /// Quantize `x` block by block as ggml's Q8_0 does: d_b = max|x_b|/127, q = round(x/d_b); the
    /// last block padded with zeros, an all-zero block all zeros. A NaN or infinity is an error
    /// naming the first one.
    pub fn quantize(&mut self, x: &[f32]) -> Result<(), NonFinite> {
        check_finite(x)?;
        self.values.clear();
        self.values.resize(x.len().div_ceil(Q8_BLOCK) * Q8_BLOCK, 0);
        self.scales.clear();
        for (b, q) in x
            .chunks(Q8_BLOCK)
            .zip(self.values.chunks_exact_mut(Q8_BLOCK))
        {
            self.scales.push(quantize_block_absmax(b, q));
        }
        Ok(())
    }

    /// Values the blocks hold (the input length rounded up to whole blocks).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// How many bits each weight code of a [`RowsQ8`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeBits {
    /// int8 codes within ±127 (Q8_0's).
    Eight,
    /// 4-bit codes within ±7 (−8 read as such, never written), stored + 8: byte j of a block
    /// holds code j in its low nibble and code j + 16 in its high one (ggml's Q4_0 order).
    Four,
}

impl CodeBits {
    /// Bytes one block of [`Q8_BLOCK`] codes takes.
    pub fn block_bytes(self) -> usize {
        match self {
            CodeBits::Eight => Q8_BLOCK,
            CodeBits::Four => Q8_BLOCK / 2,
        }
    }
}

/// Weights `[d_out][d_in]` as int8 blocks of [`Q8_BLOCK`] along each row, one f32 scale per block;
/// rows padded with zeros to whole blocks. f32, not Q8_0's f16: widening f16 scales per group of
/// rows made SmolLM2's head 0.90-0.97x the column product's speed instead of 1.04-1.10x; they
/// would help long rows, whose bytes dominate (Llama-7B's 4096 x 32000 head: 0.97-1.0x against
/// 0.83-0.92x with f32 scales, 12% more bytes), but there the head is ~2% of a token. Built from f32 rows by Q8_0's quantization, which gives
/// back a Q8_0 tensor's own codes and scales exactly (its values are scale · q with max|q| = 127).
#[derive(Debug, Clone)]
pub struct RowsQ8 {
    codes: AlignedBytes,
    /// [d_out][blocks per row].
    scales: Vec<f32>,
    d_out: usize,
    d_in: usize,
    bits: CodeBits,
}

impl RowsQ8 {
    /// Quantize f32 weights given row-major `[d_out][d_in]` (parallel over rows).
    pub fn from_f32(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "RowsQ8: weights are not d_out x d_in"
        );
        infallible(Self::from_rows(d_out, d_in, copy_row(w, d_in)))
    }

    /// [`RowsQ8::from_f32`] with `bits`-bit codes.
    pub fn from_f32_bits(w: &[f32], d_out: usize, d_in: usize, bits: CodeBits) -> Self {
        assert_eq!(
            w.len(),
            d_out * d_in,
            "RowsQ8: weights are not d_out x d_in"
        );
        infallible(Self::from_rows_bits(d_out, d_in, bits, copy_row(w, d_in)))
    }

    /// Quantize weights whose row r (d_in f32 values) `fill(r, out)` writes, parallel over
    /// blocks of rows: a worker holds one row in f32 at a time (a whole lm_head in f32 would be
    /// 113 MB for SmolLM2, 524 MB for Llama-7B). The first error ends the build.
    pub fn from_rows<E: Send>(
        d_out: usize,
        d_in: usize,
        fill: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        Self::from_rows_bits(d_out, d_in, CodeBits::Eight, fill)
    }

    /// [`RowsQ8::from_rows`] with `bits`-bit codes: each block's scale is its largest magnitude
    /// over the largest code, each code the nearest (4-bit: d = max|w|/7, q = round(w/d)).
    pub fn from_rows_bits<E: Send>(
        d_out: usize,
        d_in: usize,
        bits: CodeBits,
        fill: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        /// Rows per parallel task.
        const BLOCK_ROWS: usize = 256;
        let stride = Self::stride_of(d_in, bits);
        let blocks = d_in.div_ceil(Q8_BLOCK);
        let mut codes = AlignedBytes::zeroed(d_out * stride);
        let mut scales = vec![0f32; d_out * blocks];
        if d_in > 0 {
            codes
                .as_mut_slice()
                .par_chunks_mut(BLOCK_ROWS * stride)
                .zip(scales.par_chunks_mut(BLOCK_ROWS * blocks))
                .enumerate()
                .try_for_each(|(c, (out, s))| {
                    let mut row = vec![0f32; d_in];
                    for (k, (out, s)) in out
                        .chunks_exact_mut(stride)
                        .zip(s.chunks_exact_mut(blocks))
                        .enumerate()
                    {
                        fill(c * BLOCK_ROWS + k, &mut row)?;
                        match bits {
                            CodeBits::Eight => {
                                let out = as_i8_mut(out);
                                for ((b, q), s) in row
                                    .chunks(Q8_BLOCK)
                                    .zip(out.chunks_exact_mut(Q8_BLOCK))
                                    .zip(s)
                                {
                                    *s = quantize_block_absmax(b, q);
                                }
                            }
                            CodeBits::Four => {
                                for ((b, q), s) in row
                                    .chunks(Q8_BLOCK)
                                    .zip(out.chunks_exact_mut(Q8_BLOCK / 2))
                                    .zip(s)
                                {
                                    *s = quantize_block_q4(b, q);
                                }
                            }
                        }
                    }
                    Ok(())
                })?;
        }
        Ok(RowsQ8 {
            codes,
            scales,
            d_out,
            d_in,
            bits,
        })
    }

    /// A head from its parts as [`RowsQ8::code_bytes`] and [`RowsQ8::scales`] give them (a packed
    /// model file's tensors, the codes read in place). None when a size does not fit the shape.
    pub fn from_parts(
        codes: AlignedBytes,
        scales: Vec<f32>,
        d_out: usize,
        d_in: usize,
        bits: CodeBits,
    ) -> Option<Self> {
        let stride = Self::stride_of(d_in, bits);
        let fits = d_out.checked_mul(stride) == Some(codes.len())
            && d_out.checked_mul(d_in.div_ceil(Q8_BLOCK)) == Some(scales.len());
        fits.then_some(RowsQ8 {
            codes,
            scales,
            d_out,
            d_in,
            bits,
        })
    }

    /// Bits per weight code.
    pub fn bits(&self) -> CodeBits {
        self.bits
    }

    /// The int8 codes, `[d_out][stride]` bytes.
    pub fn code_bytes(&self) -> &[u8] {
        self.codes.as_slice()
    }

    /// The block scales, `[d_out][blocks per row]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    fn stride_of(d_in: usize, bits: CodeBits) -> usize {
        d_in.div_ceil(Q8_BLOCK) * bits.block_bytes()
    }

    /// Bytes between rows (d_in rounded up to whole blocks).
    pub fn stride(&self) -> usize {
        Self::stride_of(self.d_in, self.bits)
    }

    /// Blocks of [`Q8_BLOCK`] codes per row (the activation's blocks).
    pub fn blocks(&self) -> usize {
        self.d_in.div_ceil(Q8_BLOCK)
    }

    /// Rows (outputs).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Columns (inputs).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// The bytes a product reads: codes and scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    /// The codes' storage, to place it in memory (huge pages) with the other matrices.
    pub fn storage_mut(&mut self) -> &mut AlignedBytes {
        &mut self.codes
    }

    /// The weight (row, column) as stored: scale · code.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let (blocks, (b, i)) = (self.blocks(), (col / Q8_BLOCK, col % Q8_BLOCK));
        let bytes = &self.codes.as_slice()[row * self.stride()..];
        let code = match self.bits {
            CodeBits::Eight => bytes[col] as i8,
            CodeBits::Four => q4_code(bytes[b * Q8_BLOCK / 2 + i % 16], i >= 16),
        };
        self.scales[row * blocks + b] * f32::from(code)
    }

    fn codes(&self) -> &[i8] {
        as_i8(self.codes.as_slice())
    }
}

/// y = W·x. Panics when `y` is not d_out long or `x` does not hold W's blocks per row
/// (programming errors, checked once so the kernels read without bounds checks).
pub fn matvec_rows_q8(isa: Isa, w: &RowsQ8, x: &BlockQ8, y: &mut [f32]) {
    check_input(w, x);
    assert_eq!(
        y.len(),
        w.d_out,
        "matvec_rows_q8: y has {} rows, W has {}",
        y.len(),
        w.d_out
    );
    let xs = std::slice::from_ref(x);
    let threads = rayon::current_num_threads();
    if threads <= 1 || w.bytes() < PARALLEL_MIN_BYTES {
        rows(isa, w, xs, 0, &mut [y]);
    } else {
        let per = rows_per_worker(w, threads);
        y.par_chunks_mut(per)
            .enumerate()
            .for_each(|(c, ys)| rows(isa, w, xs, c * per, &mut [ys]));
    }
}

/// `ys[t · d_out .. (t + 1) · d_out] = W·xs[t]` for several activations at once (a batch of
/// tokens being scored): each row is read from memory once for all of them, and each token's
/// outputs are bit for bit what [`matvec_rows_q8`] gives it alone (the same sums in the same
/// order). Panics on inconsistent sizes, as `matvec_rows_q8`.
pub fn matvec_rows_q8_batch(isa: Isa, w: &RowsQ8, xs: &[BlockQ8], ys: &mut [f32]) {
    for x in xs {
        check_input(w, x);
    }
    assert_eq!(
        ys.len(),
        xs.len() * w.d_out,
        "matvec_rows_q8_batch: ys has {} values, want {} x {}",
        ys.len(),
        xs.len(),
        w.d_out
    );
    if xs.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads();
    let per = if threads <= 1 || w.bytes() < PARALLEL_MIN_BYTES {
        w.d_out.max(1)
    } else {
        rows_per_worker(w, threads)
    };
    // Worker c's share: rows c·per .. of every token's output.
    let mut shares: Vec<Vec<&mut [f32]>> = Vec::new();
    for y in ys.chunks_exact_mut(w.d_out.max(1)) {
        for (c, part) in y.chunks_mut(per).enumerate() {
            if shares.len() <= c {
                shares.push(Vec::with_capacity(xs.len()));
            }
            shares[c].push(part);
        }
    }
    shares
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut ys)| rows(isa, w, xs, c * per, &mut ys));
}

/// The activation holds W's blocks per row, one scale per block.
fn check_input(w: &RowsQ8, x: &BlockQ8) {
    assert_eq!(
        x.len(),
        w.blocks() * Q8_BLOCK,
        "matvec_rows_q8: the activation has {} values, W's rows {}",
        x.len(),
        w.blocks() * Q8_BLOCK
    );
    assert_eq!(
        x.scales.len() * Q8_BLOCK,
        x.len(),
        "matvec_rows_q8: one activation scale per block"
    );
}

/// One contiguous stretch of rows per worker (a multiple of 4, the kernels' row group).
fn rows_per_worker(w: &RowsQ8, threads: usize) -> usize {
    w.d_out.div_ceil(threads).div_ceil(4) * 4
}

/// Rows r0 .. r0 + n of every activation's product at the chosen ISA: ys[t] (n values each) for
/// xs[t].
fn rows(isa: Isa, w: &RowsQ8, xs: &[BlockQ8], r0: usize, ys: &mut [&mut [f32]]) {
    let n = ys.first().map_or(0, |y| y.len());
    assert!(ys.len() == xs.len() && ys.iter().all(|y| y.len() == n));
    let (stride, blocks) = (w.stride(), w.blocks());
    let rows = Rows {
        codes: &w.codes()[r0 * stride..(r0 + n) * stride],
        scales: &w.scales[r0 * blocks..(r0 + n) * blocks],
        stride,
        blocks,
    };
    let four = w.bits == CodeBits::Four;
    match isa {
        // VNNI for 4-bit codes (the AVX2 kernel's unpacking made it compute-bound: 2x on 2B4T's
        // 2560 x 49152 head, on par on SmolLM2's 576 x 49152) and for long 8-bit rows (1.25x on
        // 2B4T's; SmolLM2's short rows read faster through AVX2's four-row groups):
        // `examples/head_speed.rs [d_in d_out]` under QSPARSE_ISA=avx2 and avx512, alternated.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512
            if (four || blocks * Q8_BLOCK >= VNNI_MIN_ROW)
                && crate::isa::x86::v4().is_some()
                && crate::isa::x86::Vnni::detect().is_some() =>
        {
            // SAFETY: the V4 token and Vnni prove AVX-512 F/BW/VL and VNNI; sizes as below.
            unsafe {
                if four {
                    avx512::rows::<true>(rows, xs, ys)
                } else {
                    avx512::rows::<false>(rows, xs, ys)
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if crate::isa::x86::v3().is_some() => {
            // SAFETY: the V3 token proves AVX2 and FMA; `rows` holds n rows of `stride` bytes
            // (`blocks` blocks of codes of W's width) and `blocks` scales each, every x holds
            // `blocks` blocks of 32 values and their scales (checked by the callers), every y n
            // values (checked above).
            unsafe {
                if four {
                    avx2::rows::<true>(rows, xs, ys)
                } else {
                    avx2::rows::<false>(rows, xs, ys)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if pulp::aarch64::Neon::try_new().is_some() => {
            // SAFETY: NEON is present; sizes as above.
            unsafe {
                if four {
                    neon::rows::<true>(rows, xs, ys)
                } else {
                    neon::rows::<false>(rows, xs, ys)
                }
            }
        }
        _ => {
            for (x, y) in xs.iter().zip(ys.iter_mut()) {
                rows_scalar(rows, four, x, y)
            }
        }
    }
}

/// Quantize one block of up to [`Q8_BLOCK`] values to 4-bit codes (into `out`, 16 bytes, the
/// missing values as 0): d = max|v|/7, q = round(v/d) within ±7, stored + 8. Returns d. (Choosing
/// d per block for the least squared error among max/6..max/9 cost SmolLM2 more perplexity from
/// its head, 37.80 against 37.50: `qsparse perplexity -f data/prose.txt --lm-head-bits 4`.)
fn quantize_block_q4(block: &[f32], out: &mut [u8]) -> f32 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 7.0;
    let inv = if d > 0.0 && d.is_normal() {
        1.0 / d
    } else {
        0.0
    };
    let nibble = |i: usize| -> u8 {
        let v = block.get(i).copied().unwrap_or(0.0);
        ((v * inv).round().clamp(-7.0, 7.0) as i8 + 8) as u8
    };
    for (j, o) in out.iter_mut().enumerate() {
        *o = nibble(j) | (nibble(j + 16) << 4);
    }
    if inv == 0.0 {
        0.0
    } else {
        d
    }
}

/// The 4-bit code a byte holds in its low (`high` false) or high nibble.
fn q4_code(byte: u8, high: bool) -> i8 {
    let nibble = if high { byte >> 4 } else { byte & 0x0F };
    nibble as i8 - 8
}

/// Some consecutive rows of a [`RowsQ8`].
#[derive(Clone, Copy)]
struct Rows<'a> {
    codes: &'a [i8],
    scales: &'a [f32],
    /// Bytes per row.
    stride: usize,
    /// Blocks of 32 codes per row.
    blocks: usize,
}

/// The reference: per row, each block's exact integer sum times the two scales, added in block
/// order.
fn rows_scalar(w: Rows<'_>, four: bool, x: &BlockQ8, ys: &mut [f32]) {
    let block_bytes = if four { Q8_BLOCK / 2 } else { Q8_BLOCK };
    for ((y, row), s) in ys
        .iter_mut()
        .zip(w.codes.chunks_exact(w.stride.max(1)))
        .zip(w.scales.chunks_exact(w.blocks.max(1)))
    {
        let mut sum = 0.0f32;
        for (((wb, qb), &d), &s) in row
            .chunks_exact(block_bytes)
            .zip(x.values.chunks_exact(Q8_BLOCK))
            .zip(&x.scales)
            .zip(s)
        {
            let code = |i: usize| -> i8 {
                if four {
                    q4_code(wb[i % 16] as u8, i >= 16)
                } else {
                    wb[i]
                }
            };
            let dot: i32 = qb
                .iter()
                .enumerate()
                .map(|(i, &b)| i32::from(code(i)) * i32::from(b))
                .sum();
            sum += dot as f32 * (s * d);
        }
        *y = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8, Rows, PREFETCH_ROWS, Q8_BLOCK};

    /// Four rows at a time share each activation block's loads; per block and row: `vpsignb`,
    /// `vpmaddubsw` (|q| · ±w in int16 pairs, at most 2·127·127: no saturation), `vpmaddwd` by
    /// ones (int32 per four weights), convert, and one FMA by the two scales' product. Several
    /// activations (a batch) take each group of rows in turn while it is in L1: read from
    /// memory once, prefetched once.
    /// With `FOUR`, each block's 16 bytes are unpacked to 32 int8 codes first (low nibbles, then
    /// high ones, less 8).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows<const FOUR: bool>(w: Rows<'_>, xs: &[BlockQ8], ys: &mut [&mut [f32]]) {
        let (stride, blocks) = (w.stride, w.blocks);
        let block_bytes = if FOUR { Q8_BLOCK / 2 } else { Q8_BLOCK };
        let ones = _mm256_set1_epi16(1);
        let (low, eight) = (_mm_set1_epi8(0x0F), _mm256_set1_epi8(8));
        let (wp, sp) = (w.codes.as_ptr(), w.scales.as_ptr());
        let n = ys.first().map_or(0, |y| y.len());
        let full = n / 4 * 4;
        let end = wp.wrapping_add(n * stride);
        // SAFETY: (all blocks below) rows r < n have `stride` bytes at wp + r·stride and `blocks`
        // scales at sp + r·blocks; every activation has `blocks` blocks of 32 values and scales,
        // every y n values. Prefetches are hints, issued only for addresses inside the rows.
        unsafe {
            let load = |w: *const i8| -> __m256i {
                if FOUR {
                    let raw = _mm_loadu_si128(w as *const __m128i);
                    let lo = _mm_and_si128(raw, low);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), low);
                    _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight)
                } else {
                    _mm256_loadu_si256(w as *const __m256i)
                }
            };
            let block = |acc: &mut __m256, w: *const i8, xv: __m256i, ax: __m256i, d: f32| {
                let wv = load(w);
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                *acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d), *acc);
            };
            let mut r = 0;
            while r < full {
                let ahead = wp.wrapping_add((r + PREFETCH_ROWS) * stride);
                for (t, (x, y)) in xs.iter().zip(ys.iter_mut()).enumerate() {
                    let (xp, dp) = (x.values.as_ptr(), x.scales.as_ptr());
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for b in 0..blocks {
                        if t == 0 {
                            // The group's 4·stride bytes, 4·block_bytes per block (a line or two).
                            for l in (0..4 * block_bytes).step_by(64) {
                                let p = ahead.wrapping_add(4 * block_bytes * b + l);
                                if p < end {
                                    _mm_prefetch::<_MM_HINT_NTA>(p);
                                }
                            }
                        }
                        let xv = _mm256_loadu_si256(xp.add(b * Q8_BLOCK) as *const __m256i);
                        let ax = _mm256_abs_epi8(xv);
                        let d = *dp.add(b);
                        for (k, a) in acc.iter_mut().enumerate() {
                            let row = r + k;
                            let s = *sp.add(row * blocks + b);
                            block(a, wp.add(row * stride + b * block_bytes), xv, ax, s * d);
                        }
                    }
                    // [row 0 .. row 3] sums: two rounds of pairwise adds, then the two halves.
                    let h01 = _mm256_hadd_ps(acc[0], acc[1]);
                    let h23 = _mm256_hadd_ps(acc[2], acc[3]);
                    let h = _mm256_hadd_ps(h01, h23);
                    let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                    _mm_storeu_ps(y.as_mut_ptr().add(r), sums);
                }
                r += 4;
            }
            for r in full..n {
                for (x, y) in xs.iter().zip(ys.iter_mut()) {
                    let (xp, dp) = (x.values.as_ptr(), x.scales.as_ptr());
                    let mut acc = _mm256_setzero_ps();
                    for b in 0..blocks {
                        let xv = _mm256_loadu_si256(xp.add(b * Q8_BLOCK) as *const __m256i);
                        let s = *sp.add(r * blocks + b) * *dp.add(b);
                        let row = wp.add(r * stride + b * block_bytes);
                        block(&mut acc, row, xv, _mm256_abs_epi8(xv), s);
                    }
                    let h =
                        _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
                    let h = _mm_hadd_ps(h, h);
                    y[r] = _mm_cvtss_f32(_mm_hadd_ps(h, h));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockQ8, Rows, PREFETCH_ROWS, Q8_BLOCK};

    /// One activation's part for a group of 64 code bytes (four blocks of 4-bit codes, two of
    /// 8-bit ones), laid out as the codes' bytes are multiplied: for 4-bit codes each block's
    /// first 16 values in the block's 128-bit lane of `x[0]`, its last 16 in `x[1]`, for 8-bit
    /// ones the values in order in `x[0]`; the offset the unsigned codes add to each int32 lane;
    /// each lane's block scale.
    #[derive(Clone, Copy)]
    struct Group {
        x: [__m512i; 2],
        offset: __m512i,
        scale: __m512,
    }

    /// Per row 64 code bytes at a time (four blocks of 4-bit codes, two of 8-bit ones): the
    /// codes `vpdpbusd`'s unsigned side (4-bit ones as stored, + 8, low and high nibbles each a
    /// multiply; 8-bit ones + 128), the activation its signed side; each int32 lane less its
    /// share of that offset times its block's Σq (exact), converted and fused by the two
    /// scales' product. The AVX2 kernel spends ~12 instructions a 4-bit block, this one ~13 a
    /// group of four. Each row is read from memory once for every activation, its codes
    /// prefetched `PREFETCH_ROWS` rows ahead group by group (a whole row at once read slower).
    ///
    /// Safety: AVX-512 F/BW/VL and VNNI present; as `avx2::rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows<const FOUR: bool>(w: Rows<'_>, xs: &[BlockQ8], ys: &mut [&mut [f32]]) {
        let (stride, blocks) = (w.stride, w.blocks);
        // Blocks per group of 64 code bytes, and the group count.
        let per = if FOUR { 4 } else { 2 };
        let groups = blocks.div_ceil(per);
        let tail_bytes = stride - 64 * groups.saturating_sub(1);
        let tail: __mmask64 = if tail_bytes >= 64 {
            !0
        } else {
            (1u64 << tail_bytes) - 1
        };
        let mut prepared: Vec<Vec<Group>> = Vec::with_capacity(xs.len());
        for x in xs {
            let mut groups_of_x = Vec::with_capacity(groups);
            for k in 0..groups {
                // SAFETY: AVX-512 F is present (this function's target features).
                groups_of_x.push(unsafe { prepare::<FOUR>(x, k, blocks) });
            }
            prepared.push(groups_of_x);
        }
        // Lane l of a group takes block l / (16 / per)'s scale.
        let spread = if FOUR {
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
        } else {
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
        };
        let (nibble, flip) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(i8::MIN));
        let (wp, sp) = (w.codes.as_ptr(), w.scales.as_ptr());
        let n = ys.first().map_or(0, |y| y.len());
        // SAFETY: (all below) rows r < n have `stride` bytes at wp + r·stride and `blocks`
        // scales at sp + r·blocks (the masks keep each row's last group and scales inside it);
        // every y holds n values. Prefetches are hints, issued only inside the rows.
        unsafe {
            for r in 0..n {
                let ahead = r + PREFETCH_ROWS;
                if ahead < n {
                    for l in (0..4 * blocks).step_by(64) {
                        _mm_prefetch::<_MM_HINT_NTA>((sp.add(ahead * blocks) as *const i8).add(l));
                    }
                }
                let (row, scales) = (wp.add(r * stride), sp.add(r * blocks));
                for (t, (x, y)) in prepared.iter().zip(ys.iter_mut()).enumerate() {
                    let mut acc = _mm512_setzero_ps();
                    for (k, g) in x.iter().enumerate() {
                        if t == 0 && ahead < n {
                            _mm_prefetch::<_MM_HINT_NTA>(wp.add(ahead * stride + 64 * k));
                        }
                        let last = k + 1 == groups;
                        let raw =
                            _mm512_maskz_loadu_epi8(if last { tail } else { !0 }, row.add(64 * k));
                        let dot = if FOUR {
                            let lo = _mm512_and_si512(raw, nibble);
                            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nibble);
                            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, g.x[0]);
                            _mm512_dpbusd_epi32(dot, hi, g.x[1])
                        } else {
                            let codes = _mm512_xor_si512(raw, flip);
                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, g.x[0])
                        };
                        let dot = _mm512_sub_epi32(dot, g.offset);
                        let count = if last { blocks - per * k } else { per };
                        let s = _mm512_maskz_loadu_ps((1u16 << count) - 1, scales.add(per * k));
                        let s = _mm512_mul_ps(_mm512_permutexvar_ps(spread, s), g.scale);
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
                    }
                    y[r] = _mm512_reduce_add_ps(acc);
                }
            }
        }
    }

    /// Group k of activation x (see [`Group`]); blocks past the last are zeros.
    ///
    /// Safety: AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    unsafe fn prepare<const FOUR: bool>(x: &BlockQ8, k: usize, blocks: usize) -> Group {
        let (per, lanes) = if FOUR { (4, 4) } else { (2, 8) };
        let mut bytes = [[0i8; 64]; 2];
        let mut offset = [0i32; 16];
        let mut scale = [0f32; 16];
        for j in 0..per {
            let b = per * k + j;
            if b >= blocks {
                break;
            }
            let q = &x.values[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
            if FOUR {
                bytes[0][16 * j..16 * j + 16].copy_from_slice(&q[..16]);
                bytes[1][16 * j..16 * j + 16].copy_from_slice(&q[16..]);
            } else {
                bytes[0][32 * j..32 * j + 32].copy_from_slice(q);
            }
            // Codes + 8 (4-bit) or + 128 (8-bit) add that times Σq to the block's lanes' sum:
            // 2·Σq or 16·Σq a lane.
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            offset[lanes * j..lanes * (j + 1)].fill(if FOUR { 2 * sum } else { 16 * sum });
            scale[lanes * j..lanes * (j + 1)].fill(x.scales[b]);
        }
        // SAFETY: the arrays hold 64 bytes, 16 int32 and 16 f32; AVX-512 F is present.
        unsafe {
            Group {
                x: bytes.map(|b| _mm512_loadu_si512(b.as_ptr().cast())),
                offset: _mm512_loadu_si512(offset.as_ptr().cast()),
                scale: _mm512_loadu_ps(scale.as_ptr()),
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{BlockQ8, Rows, Q8_BLOCK};

    /// Per row and block: four widening int8 multiplies (int16, at most 127·127), pairwise
    /// widening adds into int32, convert, and one fused multiply-add by the scales' product.
    /// Several activations take each row in turn.
    /// With `FOUR`, each block's 16 bytes are unpacked to 32 int8 codes first.
    #[target_feature(enable = "neon")]
    pub unsafe fn rows<const FOUR: bool>(w: Rows<'_>, xs: &[BlockQ8], ys: &mut [&mut [f32]]) {
        let (stride, blocks) = (w.stride, w.blocks);
        let block_bytes = if FOUR { Q8_BLOCK / 2 } else { Q8_BLOCK };
        let wp = w.codes.as_ptr();
        let n = ys.first().map_or(0, |y| y.len());
        for r in 0..n {
            for (x, y) in xs.iter().zip(ys.iter_mut()) {
                let xp = x.values.as_ptr();
                // SAFETY: row r has `stride` bytes at wp + r·stride and `blocks` scales; the
                // activation has `blocks` blocks of 32 values.
                unsafe {
                    let mut acc = vdupq_n_f32(0.0);
                    for b in 0..blocks {
                        let (wb, qb) = (wp.add(r * stride + b * block_bytes), xp.add(b * Q8_BLOCK));
                        let (w0, w1) = if FOUR {
                            let raw = vld1q_u8(wb as *const u8);
                            let lo = vandq_u8(raw, vdupq_n_u8(0x0F));
                            let hi = vshrq_n_u8::<4>(raw);
                            let eight = vdupq_n_s8(8);
                            (
                                vsubq_s8(vreinterpretq_s8_u8(lo), eight),
                                vsubq_s8(vreinterpretq_s8_u8(hi), eight),
                            )
                        } else {
                            (vld1q_s8(wb), vld1q_s8(wb.add(16)))
                        };
                        let (q0, q1) = (vld1q_s8(qb), vld1q_s8(qb.add(16)));
                        let mut s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(q0)));
                        s = vpadalq_s16(s, vmull_high_s8(w0, q0));
                        s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(q1)));
                        s = vpadalq_s16(s, vmull_high_s8(w1, q1));
                        let scale = w.scales[r * blocks + b] * x.scales[b];
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), scale);
                    }
                    y[r] = vaddvq_f32(acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The code of weight (r, j) as stored.
    fn code(m: &RowsQ8, r: usize, j: usize) -> i32 {
        let row = &m.code_bytes()[r * m.stride()..];
        i32::from(match m.bits() {
            CodeBits::Eight => row[j] as i8,
            CodeBits::Four => q4_code(row[j / Q8_BLOCK * 16 + j % 16], j % Q8_BLOCK >= 16),
        })
    }

    /// |y − y_ref| <= 1e-5 · Σ_b |s_rb·d_b| · Σ_i |W_ri·q_i|.
    fn check(isa: Isa, d_out: usize, d_in: usize, seed: u64, outlier: bool, bits: CodeBits) {
        let mut s = seed;
        let w: Vec<f32> = (0..d_out * d_in).map(|_| lcg(&mut s)).collect();
        let mut x: Vec<f32> = (0..d_in).map(|_| lcg(&mut s) * 3.0).collect();
        if outlier {
            x[d_in / 2] = 900.0;
        }
        let m = RowsQ8::from_f32_bits(&w, d_out, d_in, bits);
        let mut q = BlockQ8::default();
        q.quantize(&x).unwrap();
        let blocks = m.blocks();
        let all = Rows {
            codes: m.codes(),
            scales: &m.scales,
            stride: m.stride(),
            blocks,
        };
        let mut want = vec![0f32; d_out];
        rows_scalar(all, bits == CodeBits::Four, &q, &mut want);
        let mut got = vec![f32::NAN; d_out];
        matvec_rows_q8(isa, &m, &q, &mut got);
        for r in 0..d_out {
            let bound: f32 = (0..blocks)
                .map(|b| {
                    let dot: i32 = (0..Q8_BLOCK)
                        .map(|i| {
                            let j = b * Q8_BLOCK + i;
                            let c = if j < d_in { code(&m, r, j) } else { 0 };
                            (c * i32::from(q.values[j])).abs()
                        })
                        .sum();
                    (m.scales[r * blocks + b] * q.scales[b]).abs() * dot as f32
                })
                .sum();
            assert!(
                (got[r] - want[r]).abs() <= 1e-5 * bound,
                "{isa:?} {bits:?} {d_out}x{d_in} row {r}: {} vs {}",
                got[r],
                want[r]
            );
        }
    }

    #[test]
    fn every_isa_matches_the_scalar_reference() {
        for isa in Isa::available() {
            for &(d_out, d_in) in &[
                (1, 1),
                (3, 31),
                (4, 32),
                (5, 33),
                (7, 100),
                (64, 576),
                (130, 64),
                (2048, 576),
                // Rows long enough for the VNNI kernel's 8-bit form, and one past whole groups.
                (9, 2048),
                (6, 2100),
            ] {
                for bits in [CodeBits::Eight, CodeBits::Four] {
                    let seed = (d_out * 1000 + d_in) as u64;
                    check(isa, d_out, d_in, seed, false, bits);
                    check(isa, d_out, d_in, seed + 7, true, bits);
                }
            }
        }
    }

    /// 4-bit weights: each code is the nearest of ±7 steps of its block's max/7, so every value
    /// is within half a step of the f32 weight, and the product within the activation's error
    /// of the exact one on the stored weights.
    #[test]
    fn four_bit_weights_are_within_half_a_step() {
        let (d_out, d_in) = (9, 100);
        let mut s = 3;
        let w: Vec<f32> = (0..d_out * d_in).map(|_| lcg(&mut s)).collect();
        let m = RowsQ8::from_f32_bits(&w, d_out, d_in, CodeBits::Four);
        assert_eq!(m.stride(), 4 * 16);
        assert_eq!(m.bytes(), d_out * (64 + 4 * 4));
        for r in 0..d_out {
            for b in 0..m.blocks() {
                let cols = b * Q8_BLOCK..((b + 1) * Q8_BLOCK).min(d_in);
                let max = cols
                    .clone()
                    .map(|c| w[r * d_in + c].abs())
                    .fold(0f32, f32::max);
                for c in cols {
                    let err = (m.get(r, c) - w[r * d_in + c]).abs();
                    assert!(err <= max / 7.0 / 2.0 + 1e-6, "({r}, {c}): {err}");
                }
            }
        }
        product_is_within_the_activation_error(&m, &mut s);
    }

    /// Each activation of a batch gets, bit for bit, its own product, at every ISA, on 1-3
    /// threads, for row counts around the kernels' groups of four and the parallel split.
    #[test]
    fn a_batch_gives_each_activation_its_own_product() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for &(d_out, d_in) in &[(1, 32), (5, 33), (7, 64), (2051, 96), (4099, 64), (6, 2100)] {
            let mut s = (d_out * 7 + d_in) as u64;
            let w: Vec<f32> = (0..d_out * d_in).map(|_| lcg(&mut s)).collect();
            for bits in [CodeBits::Eight, CodeBits::Four] {
                let m = RowsQ8::from_f32_bits(&w, d_out, d_in, bits);
                for batch in [0, 1, 2, 3, 8] {
                    let xs: Vec<BlockQ8> = (0..batch)
                        .map(|t| {
                            let mut x: Vec<f32> = (0..d_in).map(|_| lcg(&mut s) * 2.0).collect();
                            if t == 1 {
                                x[d_in / 3] = 500.0;
                            }
                            let mut q = BlockQ8::default();
                            q.quantize(&x).unwrap();
                            q
                        })
                        .collect();
                    for isa in Isa::available() {
                        let want: Vec<f32> = xs
                            .iter()
                            .flat_map(|x| {
                                let mut y = vec![0f32; d_out];
                                matvec_rows_q8(isa, &m, x, &mut y);
                                y
                            })
                            .collect();
                        for threads in [1, 2, 3] {
                            let mut got = vec![f32::NAN; batch * d_out];
                            pool(threads).install(|| matvec_rows_q8_batch(isa, &m, &xs, &mut got));
                            assert!(
                                got.iter()
                                    .zip(&want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{isa:?} {bits:?} {d_out}x{d_in} batch {batch}, {threads} threads"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q8_0_values_come_back_exactly() {
        // A Q8_0 tensor's values: an f16 scale times codes whose largest magnitude is 127.
        let (d_out, d_in) = (3, 64);
        let mut s = 11;
        let mut w = vec![0f32; d_out * d_in];
        for blk in w.chunks_mut(Q8_BLOCK) {
            let scale = half::f16::from_f32(lcg(&mut s).abs() * 0.01 + 1e-4).to_f32();
            for (i, v) in blk.iter_mut().enumerate() {
                let code = if i == 5 {
                    -127.0
                } else {
                    (lcg(&mut s) * 127.0).round()
                };
                *v = scale * code;
            }
        }
        let m = RowsQ8::from_f32(&w, d_out, d_in);
        for r in 0..d_out {
            for c in 0..d_in {
                assert_eq!(m.get(r, c), w[r * d_in + c], "({r}, {c})");
            }
        }
    }

    /// On a random activation, each output is within the activation's quantization error of
    /// the exact product of the stored weights: |Σ w·(x − d·q)| <= Σ |w|·d_b/2.
    fn product_is_within_the_activation_error(m: &RowsQ8, seed: &mut u64) {
        let (d_out, d_in) = (m.d_out(), m.d_in());
        let x: Vec<f32> = (0..d_in).map(|_| lcg(seed)).collect();
        let mut q = BlockQ8::default();
        q.quantize(&x).unwrap();
        let mut y = vec![0f32; d_out];
        matvec_rows_q8(Isa::Scalar, m, &q, &mut y);
        for (r, &got) in y.iter().enumerate() {
            let exact: f32 = (0..d_in).map(|j| m.get(r, j) * x[j]).sum();
            let bound: f32 = (0..d_in)
                .map(|j| m.get(r, j).abs() * q.scales[j / Q8_BLOCK] / 2.0)
                .sum::<f32>()
                + 1e-4;
            assert!((got - exact).abs() <= bound, "row {r}: {got} vs {exact}");
        }
    }

    #[test]
    fn the_product_is_close_to_the_f32_one() {
        // Within the activation's quantization error (the weights here are exact Q8 values):
        // |Σ w·(x − d·q)| <= Σ |w|·d_b/2.
        let (d_out, d_in) = (16, 200);
        let mut s = 5;
        let w0: Vec<f32> = (0..d_out * d_in).map(|_| lcg(&mut s)).collect();
        let m = RowsQ8::from_f32(&w0, d_out, d_in);
        product_is_within_the_activation_error(&m, &mut s);
    }

    #[test]
    fn quantization_keeps_zero_blocks_zero_and_reports_non_finite_input() {
        let mut q = BlockQ8::default();
        let mut x = vec![0f32; 40];
        x[35] = -2.0;
        q.quantize(&x).unwrap();
        assert_eq!(q.len(), 64);
        assert_eq!(q.scales, vec![0.0, 2.0 / 127.0]);
        assert_eq!(q.values[35], -127);
        assert!(q.values[..32].iter().all(|&v| v == 0));
        x[3] = f32::NAN;
        assert_eq!(q.quantize(&x).unwrap_err().index, 3);
        x[3] = 1e-40; // a subnormal maximum: the block is zero, not infinite codes
        q.quantize(&x).unwrap();
        assert_eq!(q.scales[0], 0.0);
        assert!(q.values[..32].iter().all(|&v| v == 0));
    }
}
