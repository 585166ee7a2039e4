//! Which run kernels a product uses: [`Kernel`], chosen once per product from the instruction set,
//! and the per-thread scratch those kernels work in.
//!
//! Soundness: every SIMD variant holds the proof that this CPU has what its kernels need (pulp's
//! `V3`/`V4`/`Neon` tokens, and [`Vnni`]/[`Gfni`], which only detection makes), so a `Kernel`
//! that names a SIMD kernel cannot exist on a CPU without it. The run kernels' other
//! preconditions are the driver's: every index is below d_in (checked once per product, so every
//! run lies in its tile), and the accumulators hold the lines asked for.

use std::cell::RefCell;

use super::runs::Lines;
use super::scalar;
#[cfg(target_arch = "x86_64")]
use crate::isa::x86::{Gfni, Vnni};
use crate::isa::Isa;
use crate::layout::Format;
#[cfg(target_arch = "x86_64")]
use crate::layout::MAX_LINE_ROWS;
#[cfg(target_arch = "x86_64")]
use pulp::x86::{V3, V4};

/// The most activation vectors one run kernel takes at once: per token, 8 ran 3-14% faster than 4
/// on SmolLM2's shapes (`examples/batch_speed.rs`), the shared loading and widening of the weights
/// spread over more tokens. Each batch size runs kernels compiled for it (`by_batch!`). (The
/// four-column int8 kernel takes any batch, holding 8 vectors' sums at a time.)
pub const RUN_BATCH: usize = 8;

thread_local! {
    /// int16 partial sums of the T2 kernels.
    static T2_SCRATCH: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    /// The four-column int8 kernel's activations, sums and interleaved weights.
    static I8_SCRATCH: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// The run kernels chosen for one product: decided once per call, each SIMD variant carrying
/// the proof of its CPU features.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(V3),
    /// AVX-512 (which implies AVX2: its ternary and int16 kernels are the AVX2 ones), with VNNI's
    /// int8 dot products and GFNI's field extraction where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    Avx512 {
        // Held as proofs, never read.
        #[allow(dead_code)]
        v3: V3,
        #[allow(dead_code)]
        v4: V4,
        vnni: Option<Vnni>,
        gfni: Option<Gfni>,
    },
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
}

#[cfg(target_arch = "aarch64")]
use super::neon;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// `$e` with the const `$B` = `batch` (1..=8: [`RUN_BATCH`]), so that each
/// batch size runs a kernel compiled for it.
macro_rules! by_batch {
    ($batch:expr, $B:ident => $e:expr) => {
        by_batch!(@arms $batch, $B, $e; 1, 2, 3, 4, 5, 6, 7)
    };
    (@arms $batch:expr, $B:ident, $e:expr; $($n:literal),*) => {{
        const _: () = assert!(RUN_BATCH == 8, "an arm per batch");
        match $batch {
            $($n => {
                const $B: usize = $n;
                $e
            })*
            _ => {
                const $B: usize = 8;
                $e
            }
        }
    }};
}

impl Kernel {
    /// The kernels for `isa`, if this CPU has it (else the scalar reference).
    pub(crate) fn select(isa: Isa) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::x86;
            match (isa, x86::v3(), x86::v4()) {
                (Isa::Avx512, Some(v3), Some(v4)) => {
                    let (vnni, gfni) = (Vnni::detect(), Gfni::detect());
                    return Kernel::Avx512 { v3, v4, vnni, gfni };
                }
                (Isa::Avx2, Some(v3), _) => return Kernel::Avx2(v3),
                _ => {}
            }
        }
        #[cfg(target_arch = "aarch64")]
        if let (Isa::Neon, Some(neon)) = (isa, pulp::aarch64::Neon::try_new()) {
            return Kernel::Neon(neon);
        }
        let _ = isa;
        Kernel::Scalar
    }

    /// acc[line][r] += Σ_p x_p · (t + 1)(row, column idx[p]) over `n` lines of T2 weights,
    /// sweeping each kept column's run in order.
    pub(crate) fn t2_runs(self, l: Lines<'_>, n: usize, idx: &[u32], val: &[i8], acc: &mut [i32]) {
        match self {
            Kernel::Scalar => scalar::t2_runs(l, n, idx, val, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) | Kernel::Avx512 { .. } => T2_SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(scratch.len().max(n * MAX_LINE_ROWS), 0);
                if let Kernel::Avx512 { gfni: Some(_), .. } = self {
                    // SAFETY: AVX2 (`v3`) and GFNI (`gfni`) proven by the variant; runs and
                    // acc as the module doc says; scratch holds n · 256 sums.
                    unsafe { avx2::t2_runs_gfni(l, n, idx, val, acc, scratch) }
                } else {
                    // SAFETY: AVX2 proven by the variant (`V3`); runs, acc and scratch as above.
                    unsafe { avx2::t2_runs(l, n, idx, val, acc, scratch) }
                }
            }),
            // SAFETY: NEON proven by the variant; runs and acc as the module doc says.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => unsafe { neon::t2_runs(l, n, idx, val, acc) },
        }
    }

    /// acc[line][r] += Σ_p x_p · w(row, column idx[p]) over `n` lines of int8 weights, sweeping
    /// each kept column's run in order (a few columns at a time) so DRAM streams whole runs.
    pub(crate) fn i8_runs(self, l: Lines<'_>, n: usize, idx: &[u32], val: &[i8], acc: &mut [i32]) {
        match self {
            Kernel::Scalar => scalar::i8_runs(l, n, idx, val, acc),
            // SAFETY: AVX2 proven by the variant; runs and acc (n · 64 rows) as the module doc says.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => unsafe { avx2::i8_runs::<1, _>(l, n, idx, val, acc) },
            // SAFETY: AVX-512 and VNNI proven by the variant; runs and acc as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { vnni: Some(_), .. } => unsafe {
                avx512::i8_runs_vnni::<1, _>(l, n, idx, val, acc)
            },
            // SAFETY: AVX-512 proven by the variant; runs and acc as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { vnni: None, .. } => unsafe {
                avx512::i8_runs::<1, _>(l, n, idx, val, acc)
            },
            // SAFETY: NEON proven by the variant; runs and acc as above.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => unsafe { neon::i8_runs::<1, _>(l, n, idx, val, acc) },
        }
    }

    /// As `i8_runs`, with int16 activations ([`super::Input::I16`]: int8 values plus outliers,
    /// the executor's default int8 input): the AVX2 kernel's `vpmaddwd` takes them as they are,
    /// as does NEON's `vmlal`. AVX-512 machines use the AVX2 kernel too: the AVX-512 one (VNNI)
    /// decoded SmolLM2 slower on Zen4 (`qsparse bench`, alternated pairs), a memory-bound product
    /// where the wider form only adds µops.
    pub(crate) fn i8_runs_i16(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[i16],
        acc: &mut [i32],
    ) {
        match self {
            // SAFETY: AVX2 proven by the variant (`V3`, also in the AVX-512 one); runs and acc
            // as the module doc says.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) | Kernel::Avx512 { .. } => unsafe {
                avx2::i8_runs::<1, _>(l, n, idx, val, acc)
            },
            // SAFETY: NEON proven by the variant; runs and acc as above.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => unsafe { neon::i8_runs::<1, _>(l, n, idx, val, acc) },
            Kernel::Scalar => scalar::i8_runs(l, n, idx, val, acc),
        }
    }

    /// Each vector's own int16 columns (`idx[t]`, `values[t]`: its activation outliers'
    /// remainders) against int8 weights: acc[line][t][64 rows] += Σ_j w(row, idx[t][j]) ·
    /// values[t][j] for t = 0..idx.len(). AVX-512 VNNI (where the batched int8 product splits its
    /// input so) takes every vector in one sweep; elsewhere `i8_runs_i16` a vector at a time.
    pub(crate) fn i16_columns_each(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[Vec<u32>],
        values: &[Vec<i16>],
        acc: &mut [i32],
    ) {
        let b = idx.len();
        assert!(values.len() == b && acc.len() >= n * b * 64);
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512 { vnni: Some(_), .. } = self {
            // SAFETY: AVX-512 F/BW/VL and VNNI proven by the variant; runs as the module doc
            // says; values and acc checked by the kernel.
            unsafe { avx512::i16_columns_each(l, n, idx, values, acc) };
            return;
        }
        let mut sums = Vec::new();
        for (t, (idx, val)) in idx.iter().zip(values).enumerate() {
            if idx.is_empty() {
                continue;
            }
            sums.clear();
            sums.resize(n * 64, 0);
            self.i8_runs_i16(l, n, idx, val, &mut sums);
            for (s, line) in sums.chunks_exact(64).enumerate() {
                let at = (s * b + t) * 64;
                for (a, &v) in acc[at..at + 64].iter_mut().zip(line) {
                    *a += v;
                }
            }
        }
    }

    /// Ternary codes against `batch` int8 activation vectors at once ([`super::batch`]):
    /// acc[line][vector][256 rows] of Σ (t + 1)·x, values[p · batch + t] vector t's value at
    /// column idx[p].
    pub(crate) fn t2_runs_batch(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i8],
        batch: usize,
        acc: &mut [i32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { vnni: Some(_), .. } => I8_SCRATCH.with_borrow_mut(|scratch| {
                let need = avx512::dpbusd_scratch(idx.len(), n, MAX_LINE_ROWS, batch);
                scratch.resize(scratch.len().max(need), 0);
                // SAFETY: AVX-512 F/BW/VL and VNNI proven by the variant; runs and acc (n ·
                // batch · 256 rows) as the module doc says; scratch sized here.
                unsafe { avx512::i8_runs_dpbusd::<true>(l, n, idx, values, batch, acc, scratch) }
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) | Kernel::Avx512 { .. } => T2_SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(scratch.len().max(n * batch * MAX_LINE_ROWS), 0);
                if let Kernel::Avx512 { gfni: Some(_), .. } = self {
                    // SAFETY: AVX2 and GFNI proven by the variant; runs and acc (n · batch · 256
                    // rows) as the module doc says; scratch sized here.
                    unsafe {
                        by_batch!(batch, B => avx2::t2_runs_batch_gfni::<B>(l, n, idx, values, acc, scratch))
                    }
                } else {
                    // SAFETY: AVX2 proven by the variant; runs, acc and scratch as above.
                    unsafe {
                        by_batch!(batch, B => avx2::t2_runs_batch::<B>(l, n, idx, values, acc, scratch))
                    }
                }
            }),
            _ => scalar::t2_runs_batch(l, n, idx, values, batch, acc),
        }
    }

    /// As `i8_runs_i16`, for `batch` activation vectors at once ([`super::batch`]):
    /// acc[line][vector][64 rows], values[p · batch + t] vector t's value at column idx[p].
    pub(crate) fn i8_runs_batch(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i16],
        batch: usize,
        acc: &mut [i32],
    ) {
        match self {
            // SAFETY: AVX2 proven by the variant; runs and acc (n · batch · 64 rows) as the
            // module doc says.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => unsafe {
                by_batch!(batch, B => avx2::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            // (With VNNI the batch driver sends int8 values to `i8_runs_batch_int8` and only the
            // outliers' remainders, one vector at a time, to `i8_runs_i16`.)
            // SAFETY: AVX-512 proven by the variant; runs and acc as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { .. } => unsafe {
                by_batch!(batch, B => avx512::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            // SAFETY: NEON proven by the variant; runs and acc as above.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => unsafe {
                by_batch!(batch, B => neon::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            Kernel::Scalar => scalar::i8_runs_batch(l, n, idx, values, batch, acc),
        }
    }

    /// Whether [`Kernel::i8_runs_batch_int8`] runs here: AVX-512 with VNNI's `vpdpbusd`.
    pub(crate) fn has_int8_dot(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512 { vnni: Some(_), .. } = self {
            return true;
        }
        false
    }

    /// narrow = clamp(values, ±127) over columns of `batch` values, sums[t] += token t's clamped
    /// values, `beyond(p, t)` for each value the clamp changed: the input of
    /// [`Kernel::i8_runs_batch_int8`] (see `batch::Int8Split`), with AVX-512 where it runs, else
    /// the portable loop.
    pub(crate) fn clamp_columns(
        self,
        values: &[i16],
        batch: usize,
        narrow: &mut [i8],
        sums: &mut [i32; 32],
        mut beyond: impl FnMut(usize, usize),
    ) {
        assert!((1..=32).contains(&batch) && narrow.len() == values.len());
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512 { .. } = self {
            // SAFETY: AVX-512 F/BW proven by the variant; batch and lengths checked above.
            unsafe { avx512::clamp_columns(values, batch, narrow, sums, beyond) };
            return;
        }
        for (p, (column, out)) in values
            .chunks_exact(batch)
            .zip(narrow.chunks_exact_mut(batch))
            .enumerate()
        {
            for (t, ((&v, o), s)) in column.iter().zip(out).zip(sums.iter_mut()).enumerate() {
                let c = v.clamp(-127, 127);
                *o = c as i8;
                *s += i32::from(c);
                if c != v {
                    beyond(p, t);
                }
            }
        }
    }

    /// As `i8_runs_batch` for int8 values, four columns a multiply (`vpdpbusd`), where
    /// [`Kernel::has_int8_dot`]: acc[line][vector][64 rows] += Σ_p (w + 128)·x_p, the sums in
    /// row order (added to what acc holds), each row carrying 128·Σ_p x_p for the caller to
    /// remove. Panics elsewhere (a programming error: callers ask `has_int8_dot` first).
    pub(crate) fn i8_runs_batch_int8(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i8],
        batch: usize,
        acc: &mut [i32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512 { vnni: Some(_), .. } = self {
            I8_SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(
                    scratch
                        .len()
                        .max(avx512::dpbusd_scratch(idx.len(), n, 64, batch)),
                    0,
                );
                // SAFETY: AVX-512 F/BW/VL and VNNI proven by the variant; runs and acc (n ·
                // batch · 64 rows) as the module doc says; scratch sized here.
                unsafe { avx512::i8_runs_dpbusd::<false>(l, n, idx, values, batch, acc, scratch) }
            });
            return;
        }
        let _ = (l, n, idx, values, batch, acc);
        panic!("i8_runs_batch_int8 needs AVX-512 VNNI");
    }

    /// acc[row] = fma(w(row, idx[p]), x_p, acc[row]) in order of p, over `n` lines of a float
    /// format, sweeping each kept column's run in order.
    pub(crate) fn float_runs(
        self,
        format: Format,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[f32],
        acc: &mut [f32],
    ) {
        match (self, format) {
            // SAFETY: AVX-512 proven by the variant; runs and acc (n lines of the format's
            // rows) as the module doc says.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, Format::F16) => unsafe {
                avx512::f16_runs(l, n, idx, val, acc)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, _) => unsafe { avx512::f32_runs(l, n, idx, val, acc) },
            _ => self.float_runs_batch(format, l, n, idx, val, 1, acc),
        }
    }

    /// As `float_runs`, for `batch` activation vectors at once ([`super::batch`]):
    /// acc[line][vector][rows], values[p · batch + t] vector t's value at column idx[p]; each
    /// vector's sums bit for bit those of its own product.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn float_runs_batch(
        self,
        format: Format,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[f32],
        batch: usize,
        acc: &mut [f32],
    ) {
        match self {
            Kernel::Scalar => scalar::float_runs_batch(format, l, n, idx, values, batch, acc),
            // SAFETY: AVX2 proven by the variant (`V3`, also in the AVX-512 one); runs and acc
            // (n · batch lines of the format's rows) as the module doc says.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) | Kernel::Avx512 { .. } => unsafe {
                by_batch!(batch, B => avx2::float_runs::<B>(format, l, n, idx, values, acc))
            },
            // SAFETY: NEON proven by the variant; runs and acc as above.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => unsafe {
                by_batch!(batch, B => neon::float_runs::<B>(format, l, n, idx, values, acc))
            },
        }
    }
}
