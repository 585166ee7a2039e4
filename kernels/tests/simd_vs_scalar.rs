//! Every kernel at every ISA level this CPU has equals the scalar reference on random and edge
//! inputs, and the scalar reference equals a naive product over the unpacked weights.

use half::f16;
use qsparse_kernels::dense::{matvec_rows, RowMajor};
use qsparse_kernels::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SIZES: &[usize] = &[
    1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 576, 1000, 4099,
];

/// Every level this CPU runs. Detection is checked against std's, so a detection bug cannot
/// silently reduce these tests to scalar-vs-scalar.
fn isas() -> Vec<Isa> {
    let v = Isa::available();
    assert!(v.contains(&Isa::Scalar));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            assert!(v.contains(&Isa::Avx2), "AVX2 present but not offered");
        }
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("avx512cd")
        {
            assert!(v.contains(&Isa::Avx512), "AVX-512 present but not offered");
        }
    }
    #[cfg(target_arch = "aarch64")]
    assert!(
        v.contains(&Isa::Neon),
        "NEON is baseline on aarch64 but not offered"
    );
    v
}

/// Activation-like vectors: gaussian-ish, one huge outlier, all equal, all zero, few levels.
fn activations(rng: &mut SmallRng, d: usize, kind: usize) -> Vec<f32> {
    (0..d)
        .map(|i| match kind % 5 {
            0 => rng.random_range(-1.0f32..1.0) * rng.random_range(0.0f32..3.0),
            1 => {
                if i == d / 2 {
                    1e4
                } else {
                    rng.random_range(-1.0f32..1.0)
                }
            }
            2 => -0.75,
            3 => 0.0,
            _ => (rng.random_range(-3i32..=3)) as f32 * 0.5,
        })
        .collect()
}

#[test]
fn quantize_matches_scalar_at_every_isa() {
    let mut rng = SmallRng::seed_from_u64(1);
    for &d in SIZES.iter().chain(&[0]) {
        for kind in 0..5 {
            let x = activations(&mut rng, d, kind);
            let mut want = vec![0i8; d];
            let g_want = quantize_absmax(Isa::Scalar, &x, &mut want).unwrap();
            // The definition, independently: round-half-even of 127·x/γ, clamped.
            let gamma = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert_eq!(g_want, gamma);
            for (q, v) in want.iter().zip(&x) {
                let e = if gamma == 0.0 {
                    0.0
                } else {
                    (v * (127.0 / gamma)).round_ties_even()
                };
                assert_eq!(f32::from(*q), e.clamp(-127.0, 127.0));
            }
            for isa in isas() {
                let mut got = vec![0i8; d];
                let g = quantize_absmax(isa, &x, &mut got).unwrap();
                assert_eq!((g, &got), (g_want, &want), "{isa} d={d} kind={kind}");
            }
        }
    }
}

#[test]
fn quantize_with_a_given_gamma_saturates_at_every_isa() {
    let mut rng = SmallRng::seed_from_u64(11);
    for &d in SIZES {
        // Entries far beyond γ (up to 1e30, past i32 after scaling) must saturate with their sign.
        let x: Vec<f32> = (0..d)
            .map(|i| match i % 5 {
                0 => rng.random_range(-1e30f32..1e30),
                1 => rng.random_range(-3.0f32..3.0),
                _ => rng.random_range(-1.0f32..1.0),
            })
            .collect();
        for gamma in [1.0f32, 0.37, 0.0, 1e-40] {
            let want: Vec<i8> = x
                .iter()
                .map(|&v| {
                    if gamma < f32::MIN_POSITIVE {
                        0
                    } else {
                        (v * (127.0 / gamma)).round_ties_even().clamp(-127.0, 127.0) as i8
                    }
                })
                .collect();
            for isa in isas() {
                let mut got = vec![0i8; d];
                quantize_with(isa, &x, gamma, &mut got);
                assert_eq!(got, want, "{isa} d={d} gamma={gamma}");
            }
        }
    }
}

#[test]
fn quantize_reports_the_first_non_finite_value() {
    for isa in isas() {
        for &d in &[1usize, 16, 33, 1000] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, d / 2, d - 1] {
                    let mut x = vec![0.5f32; d];
                    x[at] = bad;
                    if at > 0 {
                        x[0] = 1e30; // large but finite
                    }
                    let mut out = vec![0i8; d];
                    let e = quantize_absmax(isa, &x, &mut out).unwrap_err();
                    assert_eq!(e.index, at, "{isa} d={d}");
                }
            }
        }
    }
}

/// Brute force: sort by (|x| desc, index asc), take k, return ascending indices.
fn topk_reference(mags: &[f64], k: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..mags.len()).collect();
    order.sort_by(|&a, &b| mags[b].total_cmp(&mags[a]).then(a.cmp(&b)));
    let mut kept: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
    kept.sort_unstable();
    kept
}

fn ks(d: usize, rng: &mut SmallRng) -> Vec<usize> {
    let mut v = vec![
        0,
        1,
        d / 4,
        d / 2,
        d.saturating_sub(1),
        d,
        rng.random_range(0..=d),
    ];
    v.retain(|&k| k <= d);
    v
}

#[test]
fn topk_i8_is_exact_with_ties_lowest_index_first() {
    let mut rng = SmallRng::seed_from_u64(2);
    for &d in SIZES {
        for kind in 0..5 {
            let xf = activations(&mut rng, d, kind);
            let mut x = vec![0i8; d];
            quantize_absmax(Isa::Scalar, &xf, &mut x).unwrap();
            let mags: Vec<f64> = x.iter().map(|v| f64::from(v.unsigned_abs())).collect();
            for k in ks(d, &mut rng) {
                let want = topk_reference(&mags, k);
                for isa in isas() {
                    let mut s = Sparse::<i8>::default();
                    topk_i8(isa, &x, k, &mut s);
                    assert_eq!(s.indices, want, "{isa} d={d} k={k} kind={kind}");
                    let vals: Vec<i8> = want.iter().map(|&i| x[i as usize]).collect();
                    assert_eq!(s.values, vals);
                    // Widened straight to int16, into a buffer that held something else.
                    let mut w = Sparse::<i16> {
                        indices: vec![7],
                        values: vec![-300],
                    };
                    topk_i8(isa, &x, k, &mut w);
                    assert_eq!(w.indices, want, "{isa} int16 d={d} k={k} kind={kind}");
                    let wide: Vec<i16> = vals.iter().map(|&v| i16::from(v)).collect();
                    assert_eq!(w.values, wide);
                }
            }
        }
    }
    // Extremes of the int8 range, including -128 (which the quantizer never makes).
    let x: Vec<i8> = (0..300).map(|i| [-128i8, 127, -127, 0, 1][i % 5]).collect();
    let mags: Vec<f64> = x.iter().map(|v| f64::from(v.unsigned_abs())).collect();
    for isa in isas() {
        let mut s = Sparse::<i8>::default();
        topk_i8(isa, &x, 100, &mut s);
        assert_eq!(s.indices, topk_reference(&mags, 100), "{isa}");
        let mut w = Sparse::<i16>::default();
        topk_i8(isa, &x, 100, &mut w);
        assert_eq!(w.indices, s.indices, "{isa} int16");
        assert!(w
            .values
            .iter()
            .zip(&s.values)
            .all(|(&a, &b)| a == i16::from(b)));
    }
    // Long inputs (the SIMD threshold search widens its byte counters every 255 blocks of 32):
    // full-range random bytes and all-equal magnitudes.
    for x in [
        (0..11008).map(|_| rng.random::<i8>()).collect::<Vec<i8>>(),
        vec![-5i8; 8192 + 100],
    ] {
        let mags: Vec<f64> = x.iter().map(|v| f64::from(v.unsigned_abs())).collect();
        for k in [1, x.len() / 3, x.len() - 1] {
            let want = topk_reference(&mags, k);
            for isa in isas() {
                let mut s = Sparse::<i8>::default();
                topk_i8(isa, &x, k, &mut s);
                assert_eq!(s.indices, want, "{isa} long d={} k={k}", x.len());
            }
        }
    }
}

/// NaN, ±inf and ordinary values, for the selections' total order (NaN above +inf).
fn non_finite_mix() -> Vec<f32> {
    (0..100)
        .map(|i| match i % 25 {
            3 => f32::NAN,
            7 => f32::NEG_INFINITY,
            11 => f32::INFINITY,
            _ => (i as f32 * 0.37).sin(),
        })
        .collect()
}

#[test]
fn topk_f32_is_exact_with_ties_lowest_index_first() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut scratch = Vec::new();
    for &d in SIZES {
        for kind in 0..5 {
            let x = activations(&mut rng, d, kind);
            let mags: Vec<f64> = x.iter().map(|v| f64::from(v.abs())).collect();
            // Small K takes the coarse-bar path (16: the executor's outliers; with one huge
            // outlier the bar needs more than 8 halvings and falls back to full introselect).
            let mut kk = ks(d, &mut rng);
            kk.extend([16, d / 8].into_iter().filter(|&k| k <= d));
            for k in kk {
                let want = topk_reference(&mags, k);
                for isa in isas() {
                    let mut s = Sparse::default();
                    topk_f32(isa, &x, k, &mut scratch, &mut s);
                    assert_eq!(s.indices, want, "{isa} d={d} k={k} kind={kind}");
                    let vals: Vec<f32> = want.iter().map(|&i| x[i as usize]).collect();
                    assert_eq!(s.values, vals);
                }
            }
        }
    }
    // Non-finite magnitudes order as `total_cmp` does (NaN above +inf) at every ISA.
    let x = non_finite_mix();
    let mags: Vec<f64> = x.iter().map(|v| f64::from(v.abs())).collect();
    for k in [1, 5, 12, 16, 50, 99] {
        let want = topk_reference(&mags, k);
        for isa in isas() {
            let mut s = Sparse::default();
            topk_f32(isa, &x, k, &mut scratch, &mut s);
            assert_eq!(s.indices, want, "{isa} non-finite k={k}");
        }
    }
}

#[test]
fn largest_f32_is_the_exact_top_m_and_the_rest_maximum() {
    let mut rng = SmallRng::seed_from_u64(12);
    let mut keys = qsparse_kernels::outliers::Scratch::default();
    let check = |x: &[f32], m: usize, keys: &mut qsparse_kernels::outliers::Scratch, what: &str| {
        let d = x.len();
        let mags: Vec<f64> = x.iter().map(|v| f64::from(v.abs())).collect();
        let want = topk_reference(&mags, m.min(d));
        // The rest's maximum in the same total order (NaN above +inf).
        let rest_want = (0..d as u32)
            .filter(|i| !want.contains(i))
            .map(|i| x[i as usize].abs())
            .max_by(f32::total_cmp)
            .unwrap_or(0.0);
        for isa in isas() {
            let mut s = Sparse::default();
            let rest = largest_f32(isa, x, m, keys, &mut s);
            assert_eq!(s.indices, want, "{isa} {what} d={d} m={m}");
            for (&i, v) in s.indices.iter().zip(&s.values) {
                assert_eq!(x[i as usize].to_bits(), v.to_bits());
            }
            assert_eq!(
                rest.to_bits(),
                rest_want.to_bits(),
                "{isa} {what}: rest, m={m}"
            );
        }
    };
    for &d in SIZES {
        for kind in 0..5 {
            let x = activations(&mut rng, d, kind);
            for m in [
                0,
                1,
                7,
                16,
                17,
                31,
                32,
                d / 2,
                d.saturating_sub(1),
                d,
                d + 3,
            ] {
                check(&x, m, &mut keys, &format!("kind={kind}"));
            }
        }
    }
    let x = non_finite_mix();
    for m in [1, 5, 12, 16, 50, 99] {
        check(&x, m, &mut keys, "non-finite");
    }
}

/// Shapes (d_out, d_in): partial tiles of every format (16, 32, 64 and 256 rows), one row, one
/// column, several tiles.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (15, 5),
    (17, 3),
    (31, 7),
    (33, 2),
    (63, 9),
    (65, 11),
    (255, 64),
    (256, 100),
    (257, 33),
    (600, 257),
    (1024, 129),
    // Above the parallel threshold for every format (T2 too), several tiles for I8: the
    // multi-threaded split is checked against the naive product as well.
    (9000, 131),
    // Tall enough (>= 8 tiles for every format) that integer products split the rows.
    (125_000, 4),
    // Big enough (int8: 4.4 MB) that sparse integer products still split the columns.
    (1100, 4000),
    // SmolLM2's down: 9 int8 lines, so 2 workers share one line (split by columns) when sparse.
    (576, 1536),
];

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn sparse_input_i8(rng: &mut SmallRng, d_in: usize, k: usize) -> (Sparse<i8>, f32) {
    let kind = rng.random_range(0..5);
    let xf = activations(rng, d_in, kind);
    let mut xq = vec![0i8; d_in];
    let gamma = quantize_absmax(Isa::Scalar, &xf, &mut xq).unwrap();
    let mut s = Sparse::default();
    topk_i8(Isa::Scalar, &xq, k, &mut s);
    (s, gamma / 127.0)
}

fn sparse_input_f32(rng: &mut SmallRng, d_in: usize, k: usize) -> Sparse<f32> {
    let kind = rng.random_range(0..5);
    let x = activations(rng, d_in, kind);
    let mut s = Sparse::default();
    topk_f32(Isa::Scalar, &x, k, &mut Vec::new(), &mut s);
    s
}

/// Runs a batched product at every ISA on 1, 2 and 3 threads and checks every token's outputs
/// are bitwise its own product's (`want[t]`).
fn check_batch_all_isas(w: &ColumnTiles<'_>, input: BatchInput<'_>, want: &[Vec<f32>], what: &str) {
    let d_out = w.d_out();
    // Every ISA that takes a batch this large (the others take 8 tokens at a time).
    for isa in isas()
        .into_iter()
        .filter(|&isa| want.len() <= batch_limit(isa, w.format()))
    {
        for threads in [1, 2, 3] {
            let mut ys = vec![f32::NAN; want.len() * d_out];
            pool(threads).install(|| gather_matvec_batch(isa, w, input, &mut ys));
            for (t, want) in want.iter().enumerate() {
                let got = &ys[t * d_out..(t + 1) * d_out];
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what} token {t}: {isa} with {threads} threads differs from the token's own \
                     product"
                );
            }
        }
    }
}

/// Runs every ISA (1, 2 and 3 threads) and checks all outputs are bitwise equal to `want`.
fn check_all_isas(w: &ColumnTiles<'_>, input: Input<'_>, want: &[f32], what: &str) {
    for isa in isas() {
        for threads in [1, 2, 3] {
            let mut y = vec![f32::NAN; w.d_out()];
            pool(threads).install(|| gather_matvec(isa, w, input, &mut y));
            let same = y.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{what}: {isa} with {threads} threads differs from the reference"
            );
        }
    }
}

/// Random ternary and int8 codes (row-major) with per-row scales, and both packed.
struct IntegerMatrices {
    codes_t: Vec<i8>,
    codes_8: Vec<i8>,
    scales: Vec<f32>,
    t2: PackedMatrix,
    i8m: PackedMatrix,
}

fn integer_matrices(rng: &mut SmallRng, d_out: usize, d_in: usize) -> IntegerMatrices {
    let codes_t: Vec<i8> = (0..d_out * d_in)
        .map(|_| rng.random_range(-1i8..=1))
        .collect();
    let codes_8: Vec<i8> = (0..d_out * d_in)
        .map(|_| rng.random_range(-127i8..=127))
        .collect();
    let scales: Vec<f32> = (0..d_out).map(|_| rng.random_range(0.01f32..2.0)).collect();
    let t2 = PackedMatrix::t2_from_codes(&codes_t, d_out, d_in, scales.clone());
    let i8m = PackedMatrix::i8_from_codes(&codes_8, d_out, d_in, scales.clone());
    IntegerMatrices {
        codes_t,
        codes_8,
        scales,
        t2,
        i8m,
    }
}

/// Σ_j row[j]·x_j over the kept entries of x, exactly (the naive integer product of one row).
fn int_row_sum<V: Copy + Into<i32>>(row: &[i8], x: &Sparse<V>) -> i32 {
    x.indices
        .iter()
        .zip(&x.values)
        .map(|(&j, &v)| v.into() * i32::from(row[j as usize]))
        .sum()
}

#[test]
fn gather_integer_formats_equal_the_naive_product() {
    let mut rng = SmallRng::seed_from_u64(4);
    for &(d_out, d_in) in SHAPES {
        let IntegerMatrices {
            codes_t,
            codes_8,
            scales,
            t2,
            i8m,
        } = integer_matrices(&mut rng, d_out, d_in);
        for k in ks(d_in, &mut rng) {
            let (x, xs) = sparse_input_i8(&mut rng, d_in, k);
            for (m, codes) in [(&t2, &codes_t), (&i8m, &codes_8)] {
                // Naive: exact integer sums over the row-major codes, then the same scaling.
                let want: Vec<f32> = (0..d_out)
                    .map(|i| int_row_sum(&codes[i * d_in..], &x) as f32 * (xs * scales[i]))
                    .collect();
                let what = format!("{:?} {d_out}x{d_in} k={k}", m.format);
                check_all_isas(&m.view(), Input::I8 { x: &x, scale: xs }, &want, &what);
            }
            // I8 weights also take int16 activations: int8-range entries plus a few large ones
            // (the executor's outliers at the int8 scale).
            let x16 = Sparse {
                indices: x.indices.clone(),
                values: (x.values.iter().enumerate())
                    .map(|(i, &v)| match i % 7 {
                        3 => rng.random_range(-32767i16..=32767),
                        _ => i16::from(v),
                    })
                    .collect(),
            };
            let want: Vec<f32> = (0..d_out)
                .map(|i| int_row_sum(&codes_8[i * d_in..], &x16) as f32 * (xs * scales[i]))
                .collect();
            let input = Input::I16 { x: &x16, scale: xs };
            check_all_isas(
                &i8m.view(),
                input,
                &want,
                &format!("I16 {d_out}x{d_in} k={k}"),
            );
        }
    }
}

/// A batch's union in shuffled order: every column some token keeps, and a random 3/4 of the
/// others (all-zero columns add nothing); and the columns' values, `batch` each, 0 where a token
/// did not keep the column.
fn shuffled_union<T: Copy + Default + PartialEq>(
    rng: &mut SmallRng,
    tokens: &[(Sparse<T>, f32)],
    d_in: usize,
) -> (Vec<u32>, Vec<T>) {
    let batch = tokens.len();
    // Column-major [d_in][batch].
    let mut dense = vec![T::default(); d_in * batch];
    for (t, (x, _)) in tokens.iter().enumerate() {
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            dense[j as usize * batch + t] = v;
        }
    }
    let mut columns: Vec<u32> = (0..d_in as u32)
        .filter(|&j| {
            rng.random_range(0..4) > 0
                || dense[j as usize * batch..][..batch]
                    .iter()
                    .any(|&v| v != T::default())
        })
        .collect();
    for i in (1..columns.len()).rev() {
        columns.swap(i, rng.random_range(0..=i));
    }
    let values = columns
        .iter()
        .flat_map(|&j| dense[j as usize * batch..][..batch].to_vec())
        .collect();
    (columns, values)
}

/// How many columns token t of a test batch keeps: all (t = 0), none (t = 1), or any number.
fn kept_by_token(rng: &mut SmallRng, t: usize, d_in: usize) -> usize {
    match t {
        0 => d_in,
        1 => 0,
        _ => rng.random_range(0..=d_in),
    }
}

/// Each token's own single-vector product (scalar reference), what a batch must give it.
fn own_products<'a, T: 'a>(
    w: &ColumnTiles<'_>,
    tokens: &'a [T],
    input: impl Fn(&'a T) -> Input<'a>,
) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .map(|x| {
            let mut y = vec![0.0; w.d_out()];
            gather_matvec(Isa::Scalar, w, input(x), &mut y);
            y
        })
        .collect()
}

/// A batched product gives every token, bit for bit, its own single-vector product: tokens with
/// different kept sets (none, some, all), int16 outliers, the union in shuffled order with some
/// all-zero columns, at every ISA and 1-3 threads.
#[test]
fn gather_batch_equals_each_tokens_own_product() {
    let mut rng = SmallRng::seed_from_u64(12);
    for &(d_out, d_in) in SHAPES {
        let m = integer_matrices(&mut rng, d_out, d_in).i8m;
        let w = m.view();
        for batch in [1, 2, 3, 5, 8, MAX_BATCH] {
            let mut tokens = Vec::new();
            for t in 0..batch {
                let k = kept_by_token(&mut rng, t, d_in);
                let (x, scale) = sparse_input_i8(&mut rng, d_in, k);
                let x16 = Sparse {
                    indices: x.indices.clone(),
                    values: (x.values.iter().enumerate())
                        .map(|(i, &v)| match i % 11 {
                            5 => rng.random_range(-32767i16..=32767),
                            _ => i16::from(v),
                        })
                        .collect(),
                };
                tokens.push((x16, scale));
            }
            let (columns, values) = shuffled_union(&mut rng, &tokens, d_in);
            let scales: Vec<f32> = tokens.iter().map(|(_, s)| *s).collect();
            let input = BatchInput::Int {
                indices: &columns,
                values: &values,
                scales: &scales,
            };
            let want = own_products(&w, &tokens, |(x, scale)| Input::I16 { x, scale: *scale });
            check_batch_all_isas(&w, input, &want, &format!("{d_out}x{d_in} batch {batch}"));
        }
    }
}

/// The ternary form: T2 weights against int8 tokens keeping none, some or all columns, the union
/// in shuffled order with some all-zero columns (each token's Σx comes off as in its own
/// product): every token's outputs are bit for bit its own product's, at every ISA and 1-3
/// threads.
#[test]
fn gather_batch_of_ternary_equals_each_tokens_own_product() {
    let mut rng = SmallRng::seed_from_u64(14);
    for &(d_out, d_in) in SHAPES {
        let m = integer_matrices(&mut rng, d_out, d_in).t2;
        let w = m.view();
        for batch in [1, 2, 3, 5, 8, MAX_BATCH] {
            let tokens: Vec<(Sparse<i8>, f32)> = (0..batch)
                .map(|t| {
                    let k = kept_by_token(&mut rng, t, d_in);
                    sparse_input_i8(&mut rng, d_in, k)
                })
                .collect();
            let (columns, values) = shuffled_union(&mut rng, &tokens, d_in);
            let scales: Vec<f32> = tokens.iter().map(|(_, s)| *s).collect();
            let input = BatchInput::Ternary {
                indices: &columns,
                values: &values,
                scales: &scales,
            };
            let want = own_products(&w, &tokens, |(x, scale)| Input::I8 { x, scale: *scale });
            check_batch_all_isas(
                &w,
                input,
                &want,
                &format!("T2 {d_out}x{d_in} batch {batch}"),
            );
        }
    }
}

/// The float form: f32 and f16 weights, tokens keeping none, some or all columns (a kept 0.0
/// and −0.0 among them), the union ascending (each token's own order) with extra all-zero
/// columns: every token's outputs are bit for bit its own product's, at every ISA and 1-3
/// threads.
#[test]
fn gather_batch_of_floats_equals_each_tokens_own_product() {
    let mut rng = SmallRng::seed_from_u64(13);
    for &(d_out, d_in) in SHAPES {
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let f32m = PackedMatrix::f32_from_f32(&w, d_out, d_in);
        let f16m = PackedMatrix::f16_from_f32(&w, d_out, d_in);
        for batch in [1, 2, 3, 6, 8, MAX_BATCH] {
            let tokens: Vec<Sparse<f32>> = (0..batch)
                .map(|t| {
                    let k = kept_by_token(&mut rng, t, d_in);
                    let mut x = sparse_input_f32(&mut rng, d_in, k);
                    for (i, v) in x.values.iter_mut().enumerate() {
                        match i % 13 {
                            3 => *v = 0.0,
                            7 => *v = -0.0,
                            _ => {}
                        }
                    }
                    x
                })
                .collect();
            let mut dense = vec![0f32; d_in * batch];
            let mut kept = vec![false; d_in];
            for (t, x) in tokens.iter().enumerate() {
                for (&j, &v) in x.indices.iter().zip(&x.values) {
                    dense[j as usize * batch + t] = v;
                    kept[j as usize] = true;
                }
            }
            let columns: Vec<u32> = (0..d_in as u32)
                .filter(|&j| kept[j as usize] || rng.random_range(0..4) == 0)
                .collect();
            let values: Vec<f32> = columns
                .iter()
                .flat_map(|&j| dense[j as usize * batch..][..batch].to_vec())
                .collect();
            let input = BatchInput::Float {
                indices: &columns,
                values: &values,
                batch,
            };
            for m in [&f32m, &f16m] {
                let w = m.view();
                let want = own_products(&w, &tokens, Input::F32);
                let what = format!("{:?} {d_out}x{d_in} batch {batch}", m.format);
                check_batch_all_isas(&w, input, &want, &what);
            }
        }
    }
}

#[test]
fn gather_float_formats_equal_the_naive_product() {
    let mut rng = SmallRng::seed_from_u64(5);
    for &(d_out, d_in) in SHAPES {
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let w16: Vec<f32> = w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        let f32m = PackedMatrix::f32_from_f32(&w, d_out, d_in);
        let f16m = PackedMatrix::f16_from_f32(&w, d_out, d_in);
        for k in ks(d_in, &mut rng) {
            let x = sparse_input_f32(&mut rng, d_in, k);
            for (m, wr) in [(&f32m, &w), (&f16m, &w16)] {
                // Naive: one FMA chain per row in column order (the kernels' contract).
                let want: Vec<f32> = (0..d_out)
                    .map(|i| {
                        x.indices
                            .iter()
                            .zip(&x.values)
                            .fold(0.0f32, |acc, (&j, &v)| {
                                wr[i * d_in + j as usize].mul_add(v, acc)
                            })
                    })
                    .collect();
                let what = format!("{:?} {d_out}x{d_in} k={k}", m.format);
                check_all_isas(&m.view(), Input::F32(&x), &want, &what);
            }
        }
    }
}

/// Many columns of +1 weights times 127 would overflow int16 partial sums without the flush.
#[test]
fn ternary_partial_sums_do_not_overflow() {
    let (d_out, d_in) = (300, 5000);
    let t2 = PackedMatrix::t2_from_codes(&vec![1i8; d_out * d_in], d_out, d_in, vec![1.0; d_out]);
    let x = Sparse {
        indices: (0..d_in as u32).collect(),
        values: vec![127i8; d_in],
    };
    let want = vec![(127 * d_in) as f32; d_out];
    check_all_isas(&t2.view(), Input::I8 { x: &x, scale: 1.0 }, &want, "all +1");
    let x = Sparse {
        indices: (0..d_in as u32).collect(),
        values: vec![-127i8; d_in],
    };
    let want = vec![-((127 * d_in) as f32); d_out];
    check_all_isas(&t2.view(), Input::I8 { x: &x, scale: 1.0 }, &want, "all -1");
}

#[test]
fn ternarization_follows_bitnet() {
    // α = mean|W| = 0.5; W/α = [2, -0.2, 0.8, -1] -> clamp, round -> [1, 0, 1, -1].
    let w = [1.0f32, -0.1, 0.4, -0.5];
    let m = PackedMatrix::t2_from_f32(&w, 1, 4);
    let alpha = m.row_scale[0];
    assert!((alpha - 0.5).abs() < 1e-7, "alpha {alpha}");
    let x = Sparse {
        indices: vec![0, 1, 2, 3],
        values: vec![1i8, 10, 100, 3],
    };
    let mut y = [0.0];
    gather_matvec(
        Isa::Scalar,
        &m.view(),
        Input::I8 { x: &x, scale: 1.0 },
        &mut y,
    );
    assert_eq!(y[0], (1 + 100 - 3) as f32 * alpha);
}

#[test]
fn dense_rows_match_within_rounding() {
    let mut rng = SmallRng::seed_from_u64(6);
    for &(d_out, d_in) in SHAPES.iter().chain(&[(300, 576)]) {
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let x = activations(&mut rng, d_in, 0);
        for isa in isas() {
            for threads in [1, 2] {
                let mut y = vec![0.0; d_out];
                pool(threads).install(|| matvec_rows(isa, RowMajor::F32(&w), &x, &mut y));
                let mut y16 = vec![0.0; d_out];
                pool(threads).install(|| matvec_rows(isa, RowMajor::F16(&w16), &x, &mut y16));
                for i in 0..d_out {
                    let row = &w[i * d_in..(i + 1) * d_in];
                    let exact: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    let mag: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| f64::from((a * b).abs()))
                        .sum();
                    assert!(
                        (f64::from(y[i]) - exact).abs() <= 1e-5 * mag + 1e-30,
                        "{isa} f32 row {i}"
                    );
                    let exact16: f64 = w16[i * d_in..(i + 1) * d_in]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| f64::from(a.to_f32()) * f64::from(*b))
                        .sum();
                    assert!(
                        (f64::from(y16[i]) - exact16).abs() <= 1e-5 * mag + 1e-30,
                        "{isa} f16 row {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn gather_mixed_input_equals_the_naive_product() {
    // int8 activations plus a few f32 columns (the executor's activation outliers): row r is
    // s_r·(xs·Σ q·w + f_r), f_r the f32 sum in the columns' order, at every ISA and thread count.
    let mut rng = SmallRng::seed_from_u64(8);
    for &(d_out, d_in) in SHAPES {
        let IntegerMatrices {
            codes_t,
            codes_8,
            scales,
            t2,
            i8m,
        } = integer_matrices(&mut rng, d_out, d_in);
        for k in ks(d_in, &mut rng) {
            let (x, xs) = sparse_input_i8(&mut rng, d_in, k);
            let cols: Vec<u32> = (0..d_in as u32).filter(|j| j % 3 == 0).take(5).collect();
            let exact = Sparse {
                values: cols
                    .iter()
                    .map(|_| rng.random_range(-50.0f32..50.0))
                    .collect(),
                indices: cols,
            };
            for (m, codes) in [(&t2, &codes_t), (&i8m, &codes_8)] {
                let want: Vec<f32> = (0..d_out)
                    .map(|i| {
                        let w = |j: u32| codes[i * d_in + j as usize];
                        let acc = int_row_sum(&codes[i * d_in..], &x);
                        let mut f = 0.0f32;
                        for (&j, &v) in exact.indices.iter().zip(&exact.values) {
                            f += f32::from(w(j)) * v;
                        }
                        acc as f32 * (xs * scales[i]) + scales[i] * f
                    })
                    .collect();
                let input = Input::Mixed {
                    x: &x,
                    scale: xs,
                    exact: &exact,
                };
                let what = format!("mixed {:?} {d_out}x{d_in} k={k}", m.format);
                check_all_isas(&m.view(), input, &want, &what);
            }
        }
    }
}

#[test]
fn caching_as_halves_rounds_like_the_half_crate() {
    use qsparse_kernels::attention::store_f16;
    let mut rng = SmallRng::seed_from_u64(10);
    let mut src: Vec<f32> = (0..1000)
        .map(|i| rng.random_range(-1.0f32..1.0) * 10f32.powi(i % 12 - 6))
        .collect();
    // Ties, the edges of the half range, subnormals, non-finite values; odd length (a tail).
    src.extend([
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        65504.0,
        65519.0,
        65520.0,
        -1e9,
        6e-8,
        3e-8,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
    ]);
    for isa in isas() {
        for n in [0, 1, 7, 8, 9, src.len()] {
            let mut dst = vec![f16::ZERO; n];
            store_f16(isa, &src[..n], &mut dst);
            for (i, (&got, &v)) in dst.iter().zip(&src).enumerate() {
                let want = f16::from_f32(v);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{isa} [{i}] {v}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn attention_equals_the_f64_reference_at_every_isa() {
    use qsparse_kernels::attention::{attend, KvHead};
    let mut rng = SmallRng::seed_from_u64(9);
    for &(head_dim, group, positions, spread) in &[
        (64, 3, 1, 1.0f32),
        (64, 3, 77, 1.0),
        (64, 1, 300, 8.0),
        (17, 2, 33, 1.0),
        (128, 4, 5, 30.0),
        // Sub-groups of three query heads (3 + 3 + 2), head_dim with 8-dim chunks past the last
        // 32, positions past the last four.
        (40, 8, 6, 2.0),
        (64, 5, 2, 1.0),
        (24, 7, 131, 4.0),
    ] {
        let n_kv = 2;
        let stride = n_kv * head_dim;
        let mut vec =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-spread..spread)).collect() };
        // The cache holds halves: the reference reads the same rounded values.
        let half = |v: Vec<f32>| -> Vec<f16> { v.into_iter().map(f16::from_f32).collect() };
        let keys = half(vec(positions * stride));
        let values = half(vec(positions * stride));
        let queries = vec(group * head_dim);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let kvh = 1;
        // Reference in f64.
        let mut want = vec![0f64; group * head_dim];
        for g in 0..group {
            let q = &queries[g * head_dim..(g + 1) * head_dim];
            let s: Vec<f64> = (0..positions)
                .map(|t| {
                    let k = &keys[t * stride + kvh * head_dim..][..head_dim];
                    q.iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * b.to_f64())
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for t in 0..positions {
                let v = &values[t * stride + kvh * head_dim..][..head_dim];
                for i in 0..head_dim {
                    want[g * head_dim + i] += e[t] / sum * v[i].to_f64();
                }
            }
        }
        for isa in isas() {
            let row = positions + 3;
            let mut scores = vec![f32::NAN; group * row];
            let mut out = vec![f32::NAN; group * head_dim];
            let h = KvHead {
                queries: &queries,
                keys: &keys,
                values: &values,
                stride,
                offset: kvh * head_dim,
                head_dim,
                scale,
            };
            attend(isa, h, &mut scores, row, &mut out);
            // A widened (f32) copy of the cache gives the same bits: batched passes use one.
            let wide = |v: &[f16]| -> Vec<f32> { v.iter().map(|h| h.to_f32()).collect() };
            let (wide_keys, wide_values) = (wide(&keys), wide(&values));
            let mut widened = vec![f32::NAN; group * head_dim];
            let h = KvHead {
                queries: &queries,
                keys: &wide_keys,
                values: &wide_values,
                stride,
                offset: kvh * head_dim,
                head_dim,
                scale,
            };
            attend(isa, h, &mut scores, row, &mut widened);
            assert!(
                out.iter()
                    .zip(&widened)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa} hd={head_dim} g={group} n={positions}: widened cache differs"
            );
            for (i, (&got, &w)) in out.iter().zip(&want).enumerate() {
                // Softmax weights are exact to ~1e-6 relative; values are at most `spread`.
                assert!(
                    (got as f64 - w).abs() <= 2e-5 * spread as f64,
                    "{isa} hd={head_dim} g={group} n={positions}: [{i}] {got} vs {w}"
                );
            }
        }
    }
}

#[test]
fn swiglu_matches_the_definition_at_every_isa() {
    use qsparse_kernels::activation::swiglu;
    let mut rng = SmallRng::seed_from_u64(21);
    for n in [0usize, 1, 7, 8, 9, 33, 1536] {
        let mut gate: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0f32..12.0)).collect();
        // Saturated and special points: exp's clamp range, zero, signed zero.
        for (i, v) in [-100.0f32, 100.0, 0.0, -0.0, 88.0, -88.0]
            .into_iter()
            .enumerate()
        {
            if i < n {
                gate[i * n / 6] = v;
            }
        }
        let up: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        for isa in isas() {
            let mut got = gate.clone();
            swiglu(isa, &mut got, &up);
            for i in 0..n {
                let x = gate[i] as f64;
                let want = x / (1.0 + (-x).exp()) * up[i] as f64;
                // exp within 2 ulp, then a division and a product: a few f32 roundings.
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                    "{isa} n={n} [{i}]: silu({x})·{} = {} vs {want}",
                    up[i],
                    got[i]
                );
            }
        }
    }
}
