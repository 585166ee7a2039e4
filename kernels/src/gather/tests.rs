use super::dispatch::Kernel;
use super::runs::for_each_segment;
use super::scalar;
use crate::layout::PackedMatrix;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Every kernel set this CPU can run, including feature combinations `select` passes over
/// (AVX-512 without VNNI or GFNI), so each SIMD form meets the scalar reference somewhere.
fn kernels() -> Vec<Kernel> {
    #[allow(unused_mut)]
    let mut v = vec![Kernel::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        use crate::isa::x86::{self, Gfni, Vnni};
        if let Some(v3) = x86::v3() {
            v.push(Kernel::Avx2(v3));
            if let Some(v4) = x86::v4() {
                for vnni in [None, Vnni::detect()] {
                    for gfni in [None, Gfni::detect()] {
                        v.push(Kernel::Avx512 { v3, v4, vnni, gfni });
                    }
                }
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(neon) = pulp::aarch64::Neon::try_new() {
        v.push(Kernel::Neon(neon));
    }
    v
}

/// The integer run kernels of every kernel set against the scalar ones, segment by segment:
/// int8 and int16 values, batches of 1-8 vectors, T2 codes, and the four-column int8 form
/// (its sums carry 128·Σx per vector; batches of up to 32, and kept columns over more than one of
/// its blocks of 128). Odd column counts leave a partial group of four.
#[test]
fn every_integer_run_kernel_equals_the_scalar_one() {
    let mut rng = SmallRng::seed_from_u64(21);
    let (d_in, d_out) = (301, 600);
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let (i8m, t2m) = (
        PackedMatrix::i8_from_f32(&w, d_out, d_in),
        PackedMatrix::t2_from_f32(&w, d_out, d_in),
    );
    let mut idx: Vec<u32> = (0..d_in as u32).filter(|_| rng.random_bool(0.7)).collect();
    idx.shuffle(&mut rng);
    let batch_values = |rng: &mut SmallRng, b: usize, wide: bool| -> Vec<i16> {
        (0..idx.len() * b)
            .map(|i| match i % 7 {
                3 if wide => rng.random_range(-32767..=32767),
                _ => rng.random_range(-127..=127),
            })
            .collect()
    };
    for k in kernels() {
        let what = format!("{k:?}");
        for_each_segment(&i8m.view(), 0, i8m.view().n_lines(), |seg, n, _| {
            let run = |f: &dyn Fn(Kernel, &mut [i32]), b: usize| {
                let (mut got, mut want) = (vec![0; n * b * 64], vec![0; n * b * 64]);
                f(k, &mut got);
                f(Kernel::Scalar, &mut want);
                (got, want)
            };
            let v8: Vec<i8> = batch_values(&mut rng, 1, false)
                .iter()
                .map(|&v| v as i8)
                .collect();
            let (got, want) = run(&|k, acc| k.i8_runs(seg, n, &idx, &v8, acc), 1);
            assert_eq!(got, want, "{what} i8_runs");
            let v16 = batch_values(&mut rng, 1, true);
            let (got, want) = run(&|k, acc| k.i8_runs_i16(seg, n, &idx, &v16, acc), 1);
            assert_eq!(got, want, "{what} i8_runs_i16");
            for b in [1, 3, MAX_BATCH_ROWS] {
                let v = batch_values(&mut rng, b, true);
                let (got, want) = run(&|k, acc| k.i8_runs_batch(seg, n, &idx, &v, b, acc), b);
                assert_eq!(got, want, "{what} i8_runs_batch B={b}");
            }
            // The four-column int8 kernel takes any batch, 8 vectors' sums at a time.
            if k.has_int8_dot() {
                for b in [1, 3, MAX_BATCH_ROWS, 9, 13, super::MAX_BATCH] {
                    let v8: Vec<i8> = batch_values(&mut rng, b, false)
                        .iter()
                        .map(|&v| v as i8)
                        .collect();
                    let mut got = vec![0; n * b * 64];
                    k.i8_runs_batch_int8(seg, n, &idx, &v8, b, &mut got);
                    let mut want = vec![0; n * b * 64];
                    scalar::i8_runs_batch(seg, n, &idx, &v8, b, &mut want);
                    for (r, w) in want.iter_mut().enumerate() {
                        let t = r / 64 % b;
                        *w += 128
                            * v8.iter()
                                .skip(t)
                                .step_by(b)
                                .map(|&x| i32::from(x))
                                .sum::<i32>();
                    }
                    assert_eq!(got, want, "{what} i8_runs_batch_int8 B={b}");
                }
            }
            // Each vector's own int16 columns (outlier remainders): none, one, an odd count and
            // many, added onto what acc holds, against the scalar kernel a vector at a time.
            for b in [1, 5, super::MAX_BATCH] {
                let lists: Vec<(Vec<u32>, Vec<i16>)> = (0..b)
                    .map(|t| {
                        let m = [0, 1, 7, 32, 3][t % 5].min(idx.len());
                        let mut cols = idx.clone();
                        cols.shuffle(&mut rng);
                        cols.truncate(m);
                        let vals = (0..m).map(|_| rng.random_range(-32767..=32767)).collect();
                        (cols, vals)
                    })
                    .collect();
                let (cols, vals): (Vec<_>, Vec<_>) = lists.into_iter().unzip();
                let start: Vec<i32> = (0..n * b * 64).map(|_| rng.random_range(-9..9)).collect();
                let mut got = start.clone();
                k.i16_columns_each(seg, n, &cols, &vals, &mut got);
                let mut want = start;
                for (t, (c, v)) in cols.iter().zip(&vals).enumerate() {
                    let mut sums = vec![0; n * 64];
                    scalar::i8_runs(seg, n, c, v, &mut sums);
                    for (s, line) in sums.chunks_exact(64).enumerate() {
                        for (r, &x) in line.iter().enumerate() {
                            want[(s * b + t) * 64 + r] += x;
                        }
                    }
                }
                assert_eq!(got, want, "{what} i16_columns_each B={b}");
            }
        });
        for_each_segment(&t2m.view(), 0, t2m.view().n_lines(), |seg, n, _| {
            let v8: Vec<i8> = (0..idx.len())
                .map(|_| rng.random_range(-127..=127))
                .collect();
            let (mut got, mut want) = (vec![0; n * 256], vec![0; n * 256]);
            k.t2_runs(seg, n, &idx, &v8, &mut got);
            scalar::t2_runs(seg, n, &idx, &v8, &mut want);
            assert_eq!(got, want, "{what} t2_runs");
            // With VNNI the T2 batch takes the four-column int8 kernel too, any batch.
            let wide: &[usize] = if k.has_int8_dot() {
                &[13, super::MAX_BATCH]
            } else {
                &[]
            };
            for &b in [1, 3, MAX_BATCH_ROWS].iter().chain(wide) {
                let v: Vec<i8> = (0..idx.len() * b)
                    .map(|_| rng.random_range(-127..=127))
                    .collect();
                let (mut got, mut want) = (vec![0; n * b * 256], vec![0; n * b * 256]);
                k.t2_runs_batch(seg, n, &idx, &v, b, &mut got);
                scalar::t2_runs_batch(seg, n, &idx, &v, b, &mut want);
                assert_eq!(got, want, "{what} t2_runs_batch B={b}");
            }
        });
    }
}

/// The largest batch the run kernels take.
const MAX_BATCH_ROWS: usize = super::dispatch::RUN_BATCH;

/// The clamp of a batch to int8 (the four-column kernel's input) in every kernel set equals the
/// portable loop: the clamped values, each token's sum and the (column, token) of every value
/// the clamp changed, for full and partial batches.
#[test]
fn every_clamp_to_int8_equals_the_scalar_one() {
    let mut rng = SmallRng::seed_from_u64(5);
    for (batch, columns) in [(32, 577), (31, 40), (7, 3), (1, 9), (32, 0)] {
        let values: Vec<i16> = (0..batch * columns)
            .map(|i| match i % 11 {
                4 => rng.random_range(-32767..=32767),
                5 => [-128, 128, -127, 127, i16::MIN + 1, i16::MAX][i % 6],
                _ => rng.random_range(-127..=127),
            })
            .collect();
        let run = |k: Kernel| {
            let mut narrow = vec![0i8; values.len()];
            let mut sums = [0i32; 32];
            let mut beyond = Vec::new();
            k.clamp_columns(&values, batch, &mut narrow, &mut sums, |p, t| {
                beyond.push((p, t))
            });
            (narrow, sums, beyond)
        };
        let want = run(Kernel::Scalar);
        assert!(
            columns == 0 || !want.2.is_empty(),
            "some values beyond ±127"
        );
        for k in kernels() {
            assert_eq!(run(k), want, "{k:?} batch {batch} columns {columns}");
        }
    }
}
