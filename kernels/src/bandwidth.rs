//! The machine's own read bandwidth: the ceiling every matvec figure is a ratio to.
//!
//! A strong streaming read: 64-byte aligned, AVX-512 (or AVX2) loads into eight independent
//! accumulators, the buffer split across the threads of the current rayon pool, over a buffer
//! much larger than the last-level cache.

use std::time::Instant;

use rayon::prelude::*;

use crate::isa::Isa;
use crate::memory::AlignedBytes;

/// A buffer for [`read_bandwidth`], filled so that its pages are really mapped.
pub fn buffer(bytes: usize) -> AlignedBytes {
    let mut b = AlignedBytes::zeroed(bytes.div_ceil(4096) * 4096);
    for (i, v) in b.as_mut_slice().iter_mut().enumerate().step_by(4096) {
        *v = i as u8;
    }
    b
}

/// XOR of every 64-bit word of `buf` (a result the optimizer cannot drop), reading it once.
pub fn read_all(isa: Isa, buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::isa::x86::v4().is_some() {
        // SAFETY: the V4 token proves AVX-512 F.
        return unsafe { avx512::xor_all(buf) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2.
        return unsafe { avx2::xor_all(buf) };
    }
    let _ = isa;
    buf.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .fold(0, |a, b| a ^ b)
}

/// Read bandwidth in bytes per second: the best of `reps` full reads of `buf`, split across the
/// current rayon pool's threads.
pub fn read_bandwidth(isa: Isa, buf: &[u8], reps: usize) -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let chunk = buf.len().div_ceil(threads).div_ceil(64) * 64;
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        sink ^= buf
            .par_chunks(chunk.max(64))
            .map(|c| read_all(isa, c))
            .reduce(|| 0, |a, b| a ^ b);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    buf.len() as f64 / best
}

/// Requests every 64-byte line of `buf` into L2 (`prefetcht1`; nothing off x86-64): how the
/// gather kernels hide DRAM latency, for measurements that mimic their reads.
pub fn prefetch_l2(buf: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in buf.chunks(64) {
        // SAFETY: a prefetch is a hint that never faults; SSE is part of every x86-64 CPU.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = buf;
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn xor_all(buf: &[u8]) -> u64 {
        let p = buf.as_ptr();
        let n = buf.len() / 512 * 512;
        let mut acc = [_mm512_setzero_si512(); 8];
        let mut i = 0;
        while i < n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 512 <= n <= len.
                *a = _mm512_xor_si512(*a, unsafe {
                    _mm512_loadu_si512(p.add(i + 64 * k) as *const _)
                });
            }
            i += 512;
        }
        let mut x = _mm512_setzero_si512();
        for a in acc {
            x = _mm512_xor_si512(x, a);
        }
        let mut words = [0u64; 8];
        // SAFETY: words has room for 64 bytes.
        unsafe { _mm512_storeu_si512(words.as_mut_ptr() as *mut _, x) };
        let mut r = words.iter().fold(0, |a, b| a ^ b);
        for c in buf[n..].chunks_exact(8) {
            r ^= u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        }
        r
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub unsafe fn xor_all(buf: &[u8]) -> u64 {
        let p = buf.as_ptr();
        let n = buf.len() / 256 * 256;
        let mut acc = [_mm256_setzero_si256(); 8];
        let mut i = 0;
        while i < n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 256 <= n <= len.
                *a = _mm256_xor_si256(*a, unsafe {
                    _mm256_loadu_si256(p.add(i + 32 * k) as *const __m256i)
                });
            }
            i += 256;
        }
        let mut words = [0u64; 4];
        let x = acc
            .iter()
            .fold(_mm256_setzero_si256(), |x, a| _mm256_xor_si256(x, *a));
        // SAFETY: words has room for 32 bytes.
        unsafe { _mm256_storeu_si256(words.as_mut_ptr() as *mut __m256i, x) };
        let mut r = words.iter().fold(0, |a, b| a ^ b);
        for c in buf[n..].chunks_exact(8) {
            r ^= u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_read_equals_scalar_read() {
        let mut b = AlignedBytes::zeroed(4096 + 520);
        for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
            *v = (i * 131 % 251) as u8;
        }
        let want = read_all(Isa::Scalar, b.as_slice());
        assert_ne!(want, 0);
        for isa in Isa::available() {
            assert_eq!(read_all(isa, b.as_slice()), want, "{isa}");
        }
    }
}
