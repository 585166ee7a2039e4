//! Exact Top-K by magnitude, and compaction of the kept (index, value) pairs.
//!
//! Q-Sparse keeps the K = round((1−S)·d) entries of largest |x| before each projection. Ties at the
//! threshold are broken by lowest index, so exactly K survive and every ISA keeps the same set.
//! The kept pairs come out in ascending index order, so the gather walks weight columns forward.
//!
//! Two selectors find the threshold: a 128-bin histogram for int8 magnitudes (one O(d) pass),
//! and introselect (std's `select_nth_unstable`) on f32 magnitudes, narrowed first to the
//! entries above a coarse bar when K is small.

use crate::isa::Isa;
use crate::quant::all_finite;

/// K for a sparsity ratio S over d inputs: round((1−S)·d), clamped to [0, d].
pub fn keep_count(d: usize, sparsity: f32) -> usize {
    let k = ((1.0 - f64::from(sparsity)) * d as f64).round();
    if k.is_nan() || k <= 0.0 {
        0
    } else {
        (k as usize).min(d)
    }
}

/// The kept entries of one activation vector, in ascending index order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sparse<T> {
    /// The kept positions.
    pub indices: Vec<u32>,
    /// Their values.
    pub values: Vec<T>,
}

impl<T: Copy> Sparse<T> {
    /// An empty list with room for `d` entries.
    pub fn with_capacity(d: usize) -> Self {
        Sparse {
            indices: Vec::with_capacity(d),
            values: Vec::with_capacity(d),
        }
    }

    /// The number of kept entries.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Every entry of `x` (the dense case, K = d).
    pub fn dense(&mut self, x: &[T]) {
        self.indices.clear();
        self.values.clear();
        self.indices.extend(0..x.len() as u32);
        self.values.extend_from_slice(x);
    }
}

/// An int8 kept value as a product takes it: int8 itself, or int16 (the int8 path with
/// activation outliers appends them at int16 range after the kept entries).
pub trait KeptInt: Copy + Default + From<i8> + sealed::Sealed {
    /// Written straight from the compaction at this ISA (the AVX-512 one packs int8 only).
    #[doc(hidden)]
    fn compact(isa: Isa, x: &[i8], t: u8, ties: usize, out: &mut Sparse<Self>);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for i16 {}
}

impl KeptInt for i8 {
    fn compact(isa: Isa, x: &[i8], t: u8, ties: usize, out: &mut Sparse<i8>) {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && crate::isa::x86::v4().is_some() {
            // SAFETY: the V4 token proves AVX-512 F/BW/VL (and BMI2, part of x86-64-v3).
            return unsafe { avx512::compact_i8(x, t, ties, out) };
        }
        compact_i8(isa, x, t, ties, out)
    }
}

impl KeptInt for i16 {
    fn compact(isa: Isa, x: &[i8], t: u8, ties: usize, out: &mut Sparse<i16>) {
        compact_i8(isa, x, t, ties, out)
    }
}

/// Keep the `k` entries of `x` with the largest |x| (ties: lowest index first) into `out`, as
/// int8 or widened to int16.
pub fn topk_i8<V: KeptInt>(isa: Isa, x: &[i8], k: usize, out: &mut Sparse<V>) {
    let k = k.min(x.len());
    out.indices.clear();
    out.values.clear();
    if k == 0 {
        return;
    }
    if k == x.len() {
        out.indices.extend(0..x.len() as u32);
        out.values.extend(x.iter().map(|&v| V::from(v)));
        return;
    }
    // The threshold t is the largest magnitude with count(|x| >= t) >= k; `above` = count(|x| > t).
    let (t, above) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if crate::isa::x86::v3().is_some() => {
            // SAFETY: the V3 token proves AVX2 is present (AVX-512 machines have it too).
            unsafe { avx2::threshold_i8(x, k) }
        }
        _ => threshold_i8_histogram(x, k),
    };
    let ties = k - above; // how many entries equal to t to keep, lowest index first
    V::compact(isa, x, t, ties, out);
}

/// The threshold of `topk_i8` from a histogram of the 129 magnitudes (the reference; one O(d)
/// pass, but one dependent counter update per entry).
fn threshold_i8_histogram(x: &[i8], k: usize) -> (u8, usize) {
    // Four interleaved histograms keep repeated magnitudes from serializing on one counter.
    let mut parts = [[0u32; 129]; 4];
    let chunks = x.chunks_exact(4);
    for &v in chunks.remainder() {
        parts[0][v.unsigned_abs() as usize] += 1;
    }
    for c in chunks {
        for (h, &v) in parts.iter_mut().zip(c) {
            h[v.unsigned_abs() as usize] += 1;
        }
    }
    let mut hist = [0u32; 129];
    for (b, h) in hist.iter_mut().enumerate() {
        *h = parts.iter().map(|p| p[b]).sum();
    }
    let mut above = 0usize; // count of |x| > t
    let mut t = 128usize;
    loop {
        let at = hist[t] as usize;
        if above + at >= k || t == 0 {
            break;
        }
        above += at;
        t -= 1;
    }
    (t as u8, above)
}

/// Keep the `k` entries of `x` with the largest |x| (ties: lowest index first) into `out`.
/// `scratch` is reused between calls to avoid allocating per token.
pub fn topk_f32(isa: Isa, x: &[f32], k: usize, scratch: &mut Vec<f32>, out: &mut Sparse<f32>) {
    let k = k.min(x.len());
    out.indices.clear();
    out.values.clear();
    if k == 0 {
        return;
    }
    if k == x.len() {
        out.dense(x);
        return;
    }
    scratch.clear();
    scratch.extend(x.iter().map(|v| v.abs()));
    let finite = all_finite(scratch);
    let (t, above) = f32_threshold(scratch, k, finite);
    compact_f32(isa, x, t, k - above, finite, out);
}

/// The k-th largest of `mags` (0 < k < len) and how many entries exceed it.
///
/// Small k (high sparsity): only the entries at or above [`group_bar`] (copied after the
/// magnitudes) go through introselect, about twice as fast as a bar found by halving the maximum
/// (`examples/select_cost.rs`). Larger k
/// and non-finite magnitudes (total order: NaN above +inf) take introselect over everything.
fn f32_threshold(mags: &mut Vec<f32>, k: usize, finite: bool) -> (f32, usize) {
    let d = mags.len();
    match group_bar(mags, k - 1) {
        Some((bar, _)) if finite => {
            for i in 0..d {
                if mags[i] >= bar {
                    let v = mags[i];
                    mags.push(v);
                }
            }
            // Entries below the bar are below the k-th largest: at least k reach it.
            select_threshold(&mut mags[d..], k)
        }
        _ => select_threshold(mags, k),
    }
}

/// Interleaved groups of [`group_bar`].
pub(crate) const GROUPS: usize = 64;

/// A bar no higher than the (m+1)-th largest |x|, from one vectorized pass: the maxima of 64
/// interleaved groups (x[i] goes to group i % 64) are 64 distinct entries, so their (m+1)-th
/// largest is such a bar. On activations only a few dozen entries reach it. None when m >= 64 or
/// x is shorter than two groups. Magnitudes compare as their bits (finite input: non-negative
/// floats order like their bit patterns).
///
/// Also says whether x is finite, from the same pass: the maxima are taken on the magnitudes' bit
/// patterns (as i32, all non-negative), where NaN and ±inf rank above every finite value, which
/// spares every activation selection a finiteness pass. The bar
/// means nothing when x is not finite.
pub(crate) fn group_bar(x: &[f32], m: usize) -> Option<(f32, bool)> {
    if m >= GROUPS || x.len() < 2 * GROUPS {
        return None;
    }
    let magnitude = |v: &f32| (v.to_bits() & 0x7fff_ffff) as i32;
    let mut maxima = x.chunks_exact(GROUPS).fold([0i32; GROUPS], |mut acc, c| {
        for (a, v) in acc.iter_mut().zip(c) {
            let v = magnitude(v);
            *a = if v > *a { v } else { *a };
        }
        acc
    });
    for (a, v) in maxima.iter_mut().zip(x.chunks_exact(GROUPS).remainder()) {
        *a = (*a).max(magnitude(v));
    }
    let finite = maxima.iter().all(|&b| b < f32::INFINITY.to_bits() as i32);
    let (_, &mut bar, _) = maxima.select_nth_unstable(GROUPS - 1 - m);
    Some((f32::from_bits(bar as u32), finite))
}

/// Introselect: the k-th largest of `mags` (0 < k <= len) and how many entries exceed it.
fn select_threshold(mags: &mut [f32], k: usize) -> (f32, usize) {
    let pos = mags.len() - k;
    let (_, &mut t, upper) = mags.select_nth_unstable_by(pos, |a, b| a.total_cmp(b));
    // `total_cmp`, not `>`: NaN is above +inf here, as in the compaction.
    let above = upper.iter().filter(|v| v.total_cmp(&t).is_gt()).count();
    (t, above)
}

/// Append (i, x[i]) for |x[i]| > t, and for the first `ties` entries with |x[i]| == t.
fn compact_i8<V: KeptInt>(isa: Isa, x: &[i8], t: u8, ties: usize, out: &mut Sparse<V>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if crate::isa::x86::v3().is_some() => {
            // SAFETY: the V3 token proves AVX2 (SSSE3 and SSE4.1 with it) and POPCNT.
            unsafe { avx2::compact_i8(x, t, ties, out) }
        }
        _ => compact_scalar(x, |v| v.unsigned_abs().cmp(&t), V::from, ties, out),
    }
}

/// `finite`: every |x| is finite (the SIMD compares would not order NaN as `total_cmp` does).
pub(crate) fn compact_f32(
    isa: Isa,
    x: &[f32],
    t: f32,
    ties: usize,
    finite: bool,
    out: &mut Sparse<f32>,
) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = finite; // only the x86 kernels need it
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if finite && crate::isa::x86::v3().is_some() => {
            // SAFETY: the V3 token proves AVX2 and POPCNT are present.
            unsafe { avx2::compact_f32(x, t, ties, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if finite && crate::isa::x86::v4().is_some() => {
            // SAFETY: the V4 token proves AVX-512 F/BW/VL (and BMI2, part of x86-64-v3) are present.
            unsafe { avx512::compact_f32(x, t, ties, out) }
        }
        _ => compact_scalar(x, |v| v.abs().total_cmp(&t), |v| v, ties, out),
    }
}

/// The lowest `n` set bits of `mask` (all of them if it has fewer). Not `pdep`: it is microcoded
/// and slow on AMD before Zen 3 (the development machine), and the partial case is rare (only
/// the one step holding the last kept tie).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lowest_bits(mask: u64, n: usize) -> u64 {
    if n >= mask.count_ones() as usize {
        return mask;
    }
    let (mut rest, mut kept) = (mask, 0);
    for _ in 0..n {
        let low = rest & rest.wrapping_neg();
        kept |= low;
        rest ^= low;
    }
    kept
}

/// Branch-free: every entry is written at the current end and the end advances only for kept
/// ones, so a random keep pattern costs no mispredictions.
fn compact_scalar<S: Copy, T: Copy>(
    x: &[S],
    cmp: impl Fn(S) -> std::cmp::Ordering,
    value: impl Fn(S) -> T,
    mut ties: usize,
    out: &mut Sparse<T>,
) {
    use std::cmp::Ordering::*;
    let Some(&first) = x.first() else { return };
    let start = out.indices.len();
    out.indices.resize(start + x.len(), 0);
    out.values.resize(start + x.len(), value(first));
    let (idx, val) = (&mut out.indices[start..], &mut out.values[start..]);
    let mut len = 0;
    for (i, &v) in x.iter().enumerate() {
        let ord = cmp(v);
        let tie = ord == Equal && ties > 0;
        ties -= usize::from(tie);
        idx[len] = i as u32;
        val[len] = value(v);
        len += usize::from(ord == Greater || tie);
    }
    out.indices.truncate(start + len);
    out.values.truncate(start + len);
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::Sparse;
    use std::arch::x86_64::*;
    use std::cmp::Ordering;

    /// `topk_i8`'s threshold by binary search over t in 0..=128, each step counting |x| >= t
    /// with byte compares (32 entries per instruction group) instead of a histogram's one
    /// dependent counter update per entry: 8 passes over x that stay in L1. 0 < k <= x.len().
    #[target_feature(enable = "avx2")]
    pub unsafe fn threshold_i8(x: &[i8], k: usize) -> (u8, usize) {
        // count(|x| >= t) is non-increasing in t; count(0) = len >= k, count(129) = 0 < k.
        let (mut lo, mut hi, mut hi_count) = (0usize, 129usize, 0usize);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            // SAFETY: this function's target features are count_at_least's.
            let c = unsafe { count_at_least(x, mid as u8) };
            if c >= k {
                lo = mid;
            } else {
                (hi, hi_count) = (mid, c);
            }
        }
        (lo as u8, hi_count)
    }

    /// How many |x| (as u8: |-128| = 128) are >= t, for t >= 1.
    #[target_feature(enable = "avx2")]
    unsafe fn count_at_least(x: &[i8], t: u8) -> usize {
        let tv = _mm256_set1_epi8(t as i8);
        let zero = _mm256_setzero_si256();
        let mut total = 0usize;
        let blocks = x.chunks_exact(32);
        let tail = blocks.remainder();
        let mut acc = zero;
        let mut widen = |acc: __m256i| {
            let mut lanes = [0u64; 4];
            // SAFETY: lanes holds 32 bytes.
            unsafe {
                _mm256_storeu_si256(
                    lanes.as_mut_ptr() as *mut __m256i,
                    _mm256_sad_epu8(acc, zero),
                )
            };
            total += lanes.iter().sum::<u64>() as usize;
        };
        for (n, b) in blocks.enumerate() {
            // SAFETY: b holds 32 bytes.
            let v = unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) };
            let a = _mm256_abs_epi8(v);
            let ge = _mm256_cmpeq_epi8(_mm256_max_epu8(a, tv), a);
            acc = _mm256_sub_epi8(acc, ge);
            // Byte counters take at most 255 increments before they are widened.
            if n % 255 == 254 {
                widen(acc);
                acc = zero;
            }
        }
        widen(acc);
        total + tail.iter().filter(|v| v.unsigned_abs() >= t).count()
    }

    /// `pshufb` controls that move the lanes set in a 4-bit mask to the front, for lanes of
    /// `width` bytes (4: indices, 2: int16 values, 1: int8 values); 0x80 writes a zero.
    const fn front(width: usize) -> [[u8; 16]; 16] {
        let mut t = [[0x80u8; 16]; 16];
        let mut m = 0;
        while m < 16 {
            let (mut lane, mut k) = (0, 0);
            while lane < 4 {
                if m & (1 << lane) != 0 {
                    let mut b = 0;
                    while b < width {
                        t[m][k * width + b] = (lane * width + b) as u8;
                        b += 1;
                    }
                    k += 1;
                }
                lane += 1;
            }
            m += 1;
        }
        t
    }
    pub(crate) const FRONT32: [[u8; 16]; 16] = front(4);
    const FRONT16: [[u8; 16]; 16] = front(2);
    const FRONT8: [[u8; 16]; 16] = front(1);

    /// int8 magnitudes against t, 16 entries per step from one 16-byte load: byte compares give
    /// the keep mask (ties lowest index first), then each 4 entries' kept indices and values go to
    /// the front with `pshufb` through 256-byte tables and are stored whole (the end advances by
    /// the kept count). 128-bit steps with small tables, not an 8-lane permute through an 8 KiB
    /// one: between two selections a layer's weights stream through the caches, and the big
    /// table's rows came back from L2 or beyond (the selection took twice as long in a decode step
    /// as when hot).
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn compact_i8<V: super::KeptInt>(
        x: &[i8],
        t: u8,
        mut ties: usize,
        out: &mut Sparse<V>,
    ) {
        // Bytes per value: int8, or int16 (widened on the way).
        let size = std::mem::size_of::<V>();
        let wide = size == 2;
        let n = x.len();
        let start = out.indices.len();
        // Room for a whole 4-lane store past the last kept entry.
        out.indices.reserve(n + 4);
        out.values.reserve(n + 8);
        let (ip, vp) = (out.indices.as_mut_ptr(), out.values.as_mut_ptr() as *mut u8);
        let mut len = start;
        // SAFETY: (the stores) len − start <= i, so a 16-byte index store and an 8-byte value
        // store at len end within the reserved n + 4 indices and n + 8 values. Loads read
        // x[i..i + 16] with i + 16 <= n, and the 16-byte tables.
        unsafe {
            let tv = _mm_set1_epi8(t as i8);
            // t <= 128: t + 1 fits a byte.
            let tv1 = _mm_set1_epi8(t.wrapping_add(1) as i8);
            let four = _mm_set1_epi32(4);
            let mut idx = _mm_setr_epi32(0, 1, 2, 3);
            let table =
                |t: &[[u8; 16]; 16], m: usize| _mm_loadu_si128(t[m].as_ptr() as *const __m128i);
            let n16 = n / 16 * 16;
            let mut i = 0;
            while i < n16 {
                let b = _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i);
                let a = _mm_abs_epi8(b);
                let ge = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(a, tv), a)) as u32;
                let gt = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(a, tv1), a)) as u32;
                let eq_kept = super::lowest_bits(u64::from(ge & !gt), ties) as u32;
                ties -= eq_kept.count_ones() as usize;
                let keep = gt | eq_kept;
                // The values by 4-entry quarter, at the front of a register.
                let quarters = if wide {
                    let lo = _mm_cvtepi8_epi16(b);
                    let hi = _mm_cvtepi8_epi16(_mm_srli_si128::<8>(b));
                    [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
                } else {
                    [
                        b,
                        _mm_srli_si128::<4>(b),
                        _mm_srli_si128::<8>(b),
                        _mm_srli_si128::<12>(b),
                    ]
                };
                for (q, &v) in quarters.iter().enumerate() {
                    let m = ((keep >> (4 * q)) & 15) as usize;
                    _mm_storeu_si128(
                        ip.add(len) as *mut __m128i,
                        _mm_shuffle_epi8(idx, table(&FRONT32, m)),
                    );
                    idx = _mm_add_epi32(idx, four);
                    let dst = vp.add(len * size) as *mut __m128i;
                    if wide {
                        _mm_storel_epi64(dst, _mm_shuffle_epi8(v, table(&FRONT16, m)));
                    } else {
                        let packed = _mm_shuffle_epi8(v, table(&FRONT8, m));
                        (dst as *mut i32).write_unaligned(_mm_cvtsi128_si32(packed));
                    }
                    len += m.count_ones() as usize;
                }
                i += 16;
            }
            for (i, &v) in x.iter().enumerate().skip(n16) {
                let ord = v.unsigned_abs().cmp(&t);
                let tie = ord == Ordering::Equal && ties > 0;
                ties -= usize::from(tie);
                *ip.add(len) = i as u32;
                (vp.add(len * size) as *mut V).write(V::from(v));
                len += usize::from(ord == Ordering::Greater || tie);
            }
            out.indices.set_len(len);
            out.values.set_len(len);
        }
    }

    /// Finite f32 magnitudes against t, 4 entries per step: the keep mask (ties lowest index
    /// first) picks a [`FRONT32`] row that moves the kept indices and values to the front of
    /// their registers, both stored whole (the end advances by the kept count).
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn compact_f32(x: &[f32], t: f32, mut ties: usize, out: &mut Sparse<f32>) {
        let n = x.len();
        let start = out.indices.len();
        // Room for a whole 4-lane store past the last kept entry.
        out.indices.reserve(n + 4);
        out.values.reserve(n + 4);
        let (ip, vp) = (out.indices.as_mut_ptr(), out.values.as_mut_ptr());
        let mut len = start;
        // SAFETY: (the stores) len − start <= i, so 16-byte stores at len end within the reserved
        // n + 4 entries. Loads read x[i..i + 4] with i + 4 <= n, and the 16-byte table rows.
        unsafe {
            let tv = _mm_set1_ps(t);
            let abs = _mm_castsi128_ps(_mm_set1_epi32(i32::MAX));
            let four = _mm_set1_epi32(4);
            let mut idx = _mm_setr_epi32(0, 1, 2, 3);
            let n4 = n / 4 * 4;
            let mut i = 0;
            while i < n4 {
                let v = _mm_loadu_ps(x.as_ptr().add(i));
                let mag = _mm_and_ps(v, abs);
                let gt = _mm_movemask_ps(_mm_cmpgt_ps(mag, tv)) as u32;
                let eq = _mm_movemask_ps(_mm_cmpeq_ps(mag, tv)) as u32;
                let eq_kept = super::lowest_bits(u64::from(eq), ties) as u32;
                ties -= eq_kept.count_ones() as usize;
                let keep = (gt | eq_kept) as usize;
                let ctl = _mm_loadu_si128(FRONT32[keep].as_ptr() as *const __m128i);
                _mm_storeu_si128(ip.add(len) as *mut __m128i, _mm_shuffle_epi8(idx, ctl));
                let moved = _mm_shuffle_epi8(_mm_castps_si128(v), ctl);
                _mm_storeu_si128(vp.add(len) as *mut __m128i, moved);
                len += keep.count_ones() as usize;
                idx = _mm_add_epi32(idx, four);
                i += 4;
            }
            for (i, &v) in x.iter().enumerate().skip(n4) {
                let ord = v.abs().total_cmp(&t);
                let tie = ord == Ordering::Equal && ties > 0;
                ties -= usize::from(tie);
                *ip.add(len) = i as u32;
                *vp.add(len) = v;
                len += usize::from(ord == Ordering::Greater || tie);
            }
            out.indices.set_len(len);
            out.values.set_len(len);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Sparse;
    use std::arch::x86_64::*;

    /// Compaction with `vpcompressd`: 16 entries per step, ties taken lowest index first. The
    /// kept entries are compressed in a register and stored whole (16 slots, past the length
    /// into the reserved capacity): Zen4 microcodes `vpcompressd` with a memory destination, which
    /// is 10x slower (`examples/select_cost.rs`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,bmi2,popcnt")]
    pub unsafe fn compact_i8(x: &[i8], t: u8, mut ties: usize, out: &mut Sparse<i8>) {
        let n = x.len();
        // The output holds at most n entries: reserve once so the unchecked stores below fit.
        out.indices.reserve(n + 16);
        out.values.reserve(n + 16);
        let tv = _mm512_set1_epi32(i32::from(t));
        let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(16);
        let mut len = out.indices.len();
        let mut i = 0;
        while i < n {
            let rem = n - i;
            let live: __mmask16 = if rem >= 16 { 0xffff } else { (1u16 << rem) - 1 };
            // SAFETY: the masked load reads only x[i..n].
            let bytes = unsafe { _mm_maskz_loadu_epi8(live, x.as_ptr().add(i)) };
            let v = _mm512_cvtepi8_epi32(bytes);
            let mag = _mm512_abs_epi32(v);
            let gt = _mm512_mask_cmpgt_epi32_mask(live, mag, tv);
            let eq = _mm512_mask_cmpeq_epi32_mask(live, mag, tv);
            let eq_kept = super::lowest_bits(u64::from(eq), ties) as u16;
            ties -= eq_kept.count_ones() as usize;
            let keep = gt | eq_kept;
            if keep != 0 {
                let c = keep.count_ones() as usize;
                // SAFETY: len + 16 <= capacity (reserved n + 16 and len <= i), so the 16-slot
                // stores fit; the lengths then cover exactly the c <= 16 kept ones.
                unsafe {
                    _mm512_storeu_si512(
                        out.indices.as_mut_ptr().add(len) as *mut _,
                        _mm512_maskz_compress_epi32(keep, idx),
                    );
                    _mm_storeu_si128(
                        out.values.as_mut_ptr().add(len) as *mut _,
                        _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(keep, v)),
                    );
                    len += c;
                    out.indices.set_len(len);
                    out.values.set_len(len);
                }
            }
            idx = _mm512_add_epi32(idx, step);
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,bmi2,popcnt")]
    pub unsafe fn compact_f32(x: &[f32], t: f32, mut ties: usize, out: &mut Sparse<f32>) {
        let n = x.len();
        out.indices.reserve(n + 16);
        out.values.reserve(n + 16);
        let tv = _mm512_set1_ps(t);
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(16);
        let mut len = out.indices.len();
        let mut i = 0;
        while i < n {
            let rem = n - i;
            let live: __mmask16 = if rem >= 16 { 0xffff } else { (1u16 << rem) - 1 };
            // SAFETY: the masked load reads only x[i..n].
            let v = unsafe { _mm512_maskz_loadu_ps(live, x.as_ptr().add(i)) };
            let mag = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
            let gt = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(live, mag, tv);
            let eq = _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(live, mag, tv);
            let eq_kept = super::lowest_bits(u64::from(eq), ties) as u16;
            ties -= eq_kept.count_ones() as usize;
            let keep = gt | eq_kept;
            if keep != 0 {
                let c = keep.count_ones() as usize;
                // SAFETY: as in compact_i8: capacity covers len + 16, lengths set to the c kept.
                unsafe {
                    _mm512_storeu_si512(
                        out.indices.as_mut_ptr().add(len) as *mut _,
                        _mm512_maskz_compress_epi32(keep, idx),
                    );
                    _mm512_storeu_ps(
                        out.values.as_mut_ptr().add(len),
                        _mm512_maskz_compress_ps(keep, v),
                    );
                    len += c;
                    out.indices.set_len(len);
                    out.values.set_len(len);
                }
            }
            idx = _mm512_add_epi32(idx, step);
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_count_rounds_and_clamps() {
        assert_eq!(keep_count(4096, 0.0), 4096);
        assert_eq!(keep_count(4096, 0.5), 2048);
        assert_eq!(keep_count(576, 0.6), 230); // 230.4
        assert_eq!(keep_count(10, 1.0), 0);
        assert_eq!(keep_count(10, 1.5), 0);
        assert_eq!(keep_count(10, -0.5), 10);
        assert_eq!(keep_count(0, 0.3), 0);
    }
}
