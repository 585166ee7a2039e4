//! Kernel benchmarks: the machine's read ceiling, the sparse gather matvec at every sparsity for
//! SmolLM2, BitNet-b1.58-2B-4T and Llama-7B FFN shapes, the dense int8 lm_head in both layouts,
//! and quantize + Top-K + compaction.
//!
//! Every product reads cold weights, as in a decode step: each configuration cycles through
//! distinct copies of its matrix, 192 MB in all. Criterion measures each configuration; a summary
//! table then reports, from interleaved runs in this same process, bytes read, GB/s, the read
//! ceiling measured between those runs (a plain 2-thread read of 256 MiB; the VM's speed drifts),
//! % of it, and speedup over dense next to the ideal 1/(1−S).
//!
//!     cargo bench --bench kernels                 # everything (about 10 minutes)
//!     QSPARSE_BENCH_SHAPES=7b cargo bench --bench kernels -- --quick
//!
//! `QSPARSE_BENCH_SHAPES` picks shape families (comma-separated: smollm2, 2b4t, 7b),
//! `QSPARSE_BENCH_FORMATS` formats (t2, i8, f16, f32; default t2,i8,f16); `QSPARSE_BENCH_HEAD=0`
//! skips the lm_head comparison (int8 columns against row-major Q8).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qsparse_kernels::bandwidth::{buffer, read_bandwidth};
use qsparse_kernels::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SPARSITIES: [f32; 7] = [0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9];

/// Bytes of distinct copies each gather configuration cycles through (6x a 32 MB L3).
const COLD_BYTES: usize = 192 << 20;

/// (family, d_in, d_out)
const SHAPES: &[(&str, usize, usize)] = &[
    ("smollm2", 576, 1536),
    ("smollm2", 1536, 576),
    ("2b4t", 2560, 6912),
    ("2b4t", 6912, 2560),
    ("7b", 4096, 11008),
    ("7b", 11008, 4096),
];

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn shapes() -> Vec<(usize, usize)> {
    let fams = env_list("QSPARSE_BENCH_SHAPES", "smollm2,2b4t,7b");
    SHAPES
        .iter()
        .filter(|s| fams.iter().any(|f| f == s.0))
        .map(|s| (s.1, s.2))
        .collect()
}

fn formats() -> Vec<Format> {
    env_list("QSPARSE_BENCH_FORMATS", "t2,i8,f16")
        .iter()
        .filter_map(|f| match f.as_str() {
            "t2" => Some(Format::T2),
            "i8" => Some(Format::I8),
            "f16" => Some(Format::F16),
            "f32" => Some(Format::F32),
            _ => None,
        })
        .collect()
}

/// A copy of `bytes` in memory of its own (cloning an `AlignedBytes` shares its mapping).
fn fresh_bytes(bytes: &[u8]) -> memory::AlignedBytes {
    let mut b = memory::AlignedBytes::zeroed(bytes.len());
    b.as_mut_slice().copy_from_slice(bytes);
    b
}

/// `m` in memory of its own.
fn distinct_copy(m: &PackedMatrix) -> PackedMatrix {
    PackedMatrix {
        data: fresh_bytes(m.data.as_slice()),
        row_scale: m.row_scale.clone(),
        ..*m
    }
}

fn pack(format: Format, d_in: usize, d_out: usize, rng: &mut SmallRng) -> PackedMatrix {
    let n = d_in * d_out;
    match format {
        Format::T2 => {
            let codes: Vec<i8> = (0..n).map(|_| rng.random_range(-1i8..=1)).collect();
            PackedMatrix::t2_from_codes(&codes, d_out, d_in, vec![0.02; d_out])
        }
        Format::I8 => {
            let q: Vec<i8> = (0..n).map(|_| rng.random_range(-127i8..=127)).collect();
            PackedMatrix::i8_from_codes(&q, d_out, d_in, vec![0.001; d_out])
        }
        Format::F16 | Format::F32 => {
            let w: Vec<f32> = (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect();
            if format == Format::F16 {
                PackedMatrix::f16_from_f32(&w, d_out, d_in)
            } else {
                PackedMatrix::f32_from_f32(&w, d_out, d_in)
            }
        }
    }
}

fn activation(d: usize, rng: &mut SmallRng) -> Vec<f32> {
    // Heavy-tailed like real activations: a few large entries among many small ones.
    (0..d)
        .map(|_| {
            let u: f32 = rng.random_range(-1.0..1.0);
            u * u * u * 4.0
        })
        .collect()
}

/// The per-token sparse input of one product at sparsity s.
struct Prepared {
    xi: Sparse<i8>,
    scale: f32,
    xf: Sparse<f32>,
}

fn prepare(x: &[f32], s: f32) -> Prepared {
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut q = vec![0i8; x.len()];
    let gamma = quantize_absmax(isa, x, &mut q).expect("finite");
    let k = keep_count(x.len(), s);
    let mut xi = Sparse::default();
    topk_i8(isa, &q, k, &mut xi);
    let mut xf = Sparse::default();
    topk_f32(isa, x, k, &mut Vec::new(), &mut xf);
    Prepared {
        xi,
        scale: gamma / 127.0,
        xf,
    }
}

fn run(m: &ColumnTiles<'_>, p: &Prepared, y: &mut [f32]) {
    let input = if m.format().is_integer() {
        Input::I8 {
            x: &p.xi,
            scale: p.scale,
        }
    } else {
        Input::F32(&p.xf)
    };
    gather_matvec(
        Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref()),
        m,
        input,
        y,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn benches(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let threads = rayon::current_num_threads();

    // The ceiling: a streaming read of 512 MiB (16x the 32 MB L3), 1 thread and all threads.
    let buf = buffer(512 << 20);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let bw1 = one.install(|| read_bandwidth(isa, buf.as_slice(), 5));
    let bw = read_bandwidth(isa, buf.as_slice(), 5);
    drop(buf);
    // The machine's speed drifts (a VM): each table block is also compared with reads of this
    // buffer (8x the L3) timed between its own runs.
    let ceiling_buf = buffer(256 << 20);
    let ceiling_line = format!(
        "machine read bandwidth ({isa}): {:.1} GB/s on 1 thread, {:.1} GB/s on {threads} threads",
        bw1 / 1e9,
        bw / 1e9
    );
    eprintln!("{ceiling_line}");

    let mut summary = vec![ceiling_line, String::new()];
    summary.push(format!(
        "{:<4} {:>12} {:>5} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "fmt",
        "d_in x d_out",
        "S",
        "time us",
        "bytes",
        "GB/s",
        "ceil",
        "% ceil",
        "speedup",
        "ideal",
        "sp/ideal"
    ));
    let mut dense_t2_us = std::collections::HashMap::new();

    for (d_in, d_out) in shapes() {
        let x = activation(d_in, &mut rng);
        let prepared: Vec<Prepared> = SPARSITIES.iter().map(|&s| prepare(&x, s)).collect();
        for format in formats() {
            // Distinct copies, together several times the last-level cache (32 MB on the Zen4
            // machines, where one 7B T2 matrix is 11 MB), taken in turn: every product reads its
            // weights from DRAM, as a decode step does.
            let first = pack(format, d_in, d_out, &mut rng);
            let copies = COLD_BYTES.div_ceil(first.view().data().len()).max(1);
            let mats: Vec<PackedMatrix> = (0..copies).map(|_| distinct_copy(&first)).collect();
            let views: Vec<ColumnTiles<'_>> = mats.iter().map(|m| m.view()).collect();
            let turn = std::cell::Cell::new(0usize);
            let next = || {
                let i = turn.get();
                turn.set((i + 1) % views.len());
                &views[i]
            };
            let w = &views[0];
            let mut y = vec![0f32; d_out];
            let mut group = c.benchmark_group(format!("gather/{}/{d_in}x{d_out}", format.name()));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            for (&s, p) in SPARSITIES.iter().zip(&prepared) {
                let kept = if format.is_integer() {
                    p.xi.len()
                } else {
                    p.xf.len()
                };
                group.throughput(Throughput::Bytes(w.bytes_read(kept) as u64));
                group.bench_with_input(BenchmarkId::from_parameter(format!("S={s}")), p, |b, p| {
                    b.iter(|| run(next(), p, &mut y))
                });
            }
            group.finish();

            // Interleaved medians for the ratio table: dense and each sparsity alternate.
            let reps = 15;
            let mut times = vec![Vec::with_capacity(reps); SPARSITIES.len()];
            let mut ceilings = Vec::with_capacity(reps);
            for _ in 0..reps {
                for (i, p) in prepared.iter().enumerate() {
                    let inner = 5;
                    let t = Instant::now();
                    for _ in 0..inner {
                        run(next(), p, &mut y);
                    }
                    times[i].push(t.elapsed().as_secs_f64() / inner as f64);
                }
                ceilings.push(read_bandwidth(isa, ceiling_buf.as_slice(), 1));
            }
            let med: Vec<f64> = times.into_iter().map(median).collect();
            let bw = median(ceilings);
            if format == Format::T2 {
                dense_t2_us.insert(d_in, med[0] * 1e6);
            }
            for (i, (&s, p)) in SPARSITIES.iter().zip(&prepared).enumerate() {
                let kept = if format.is_integer() {
                    p.xi.len()
                } else {
                    p.xf.len()
                };
                let bytes = w.bytes_read(kept);
                let gbs = bytes as f64 / med[i] / 1e9;
                let speedup = med[0] / med[i];
                let ideal = d_in as f64 / kept.max(1) as f64;
                summary.push(format!(
                    "{:<4} {:>12} {:>5.2} {:>10.1} {:>11} {:>8.1} {:>8.1} {:>7.0}% {:>8.2} {:>8.2} {:>9.2}",
                    format.name(),
                    format!("{d_in}x{d_out}"),
                    s,
                    med[i] * 1e6,
                    bytes,
                    gbs,
                    bw / 1e9,
                    100.0 * gbs * 1e9 / bw,
                    speedup,
                    ideal,
                    speedup / ideal
                ));
            }
        }
    }

    // The dense lm_head, int8: column tiles with every column kept (the gather) against row-major
    // Q8 blocks (`dense_q8`, what the executor reads for a dense head input), interleaved.
    if env_list("QSPARSE_BENCH_HEAD", "1") != ["0"] {
        summary.push(String::new());
        summary.push(format!(
            "{:<16} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10}",
            "lm_head (int8)", "d_in x d_out", "layout", "time us", "MB", "GB/s", "ceil", "% ceil"
        ));
        for (d_in, d_out) in [(576usize, 49152usize), (4096, 32000)] {
            let w: Vec<f32> = (0..d_in * d_out)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let cols = PackedMatrix::i8_from_f32(&w, d_out, d_in);
            let rows = dense_q8::RowsQ8::from_f32(&w, d_out, d_in);
            drop(w);
            // Cold, as the gather products above: distinct copies taken in turn.
            let n = COLD_BYTES.div_ceil(rows.bytes()).max(1);
            let all_cols: Vec<PackedMatrix> = (0..n).map(|_| distinct_copy(&cols)).collect();
            let all_rows: Vec<dense_q8::RowsQ8> = (0..n)
                .map(|_| {
                    dense_q8::RowsQ8::from_parts(
                        fresh_bytes(rows.code_bytes()),
                        rows.scales().to_vec(),
                        rows.d_out(),
                        rows.d_in(),
                        rows.bits(),
                    )
                    .expect("the same geometry")
                })
                .collect();
            let (cols, rows) = (&all_cols[0], &all_rows[0]);
            let (turn_c, turn_r) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
            let next = |turn: &std::cell::Cell<usize>| {
                let i = turn.get();
                turn.set((i + 1) % n);
                i
            };
            let x = activation(d_in, &mut rng);
            let p = prepare(&x, 0.0);
            let mut blocks = dense_q8::BlockQ8::default();
            let mut y = vec![0f32; d_out];
            let mut by_rows = |y: &mut [f32]| {
                blocks.quantize(&x).expect("finite");
                dense_q8::matvec_rows_q8(isa, &all_rows[next(&turn_r)], &blocks, y);
            };
            let by_cols = |y: &mut [f32]| run(&all_cols[next(&turn_c)].view(), &p, y);
            let mut group = c.benchmark_group(format!("lm_head/{d_in}x{d_out}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            group.bench_function("columns", |b| b.iter(|| by_cols(&mut y)));
            group.bench_function("rows_q8", |b| b.iter(|| by_rows(&mut y)));
            group.finish();
            let (mut tc, mut tr, mut ceilings) = (vec![], vec![], vec![]);
            for _ in 0..15 {
                let t = Instant::now();
                by_cols(&mut y);
                tc.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                by_rows(&mut y);
                tr.push(t.elapsed().as_secs_f64());
                ceilings.push(read_bandwidth(isa, ceiling_buf.as_slice(), 1));
            }
            let bw = median(ceilings);
            for (layout, t, bytes) in [
                ("columns", median(tc), cols.view().data().len()),
                ("rows q8", median(tr), rows.bytes()),
            ] {
                let gbs = bytes as f64 / t / 1e9;
                summary.push(format!(
                    "{:<16} {:>12} {:>10} {:>10.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0}%",
                    "",
                    format!("{d_in}x{d_out}"),
                    layout,
                    t * 1e6,
                    bytes as f64 / 1e6,
                    gbs,
                    bw / 1e9,
                    100.0 * gbs * 1e9 / bw
                ));
            }
        }
    }

    // quantize + Top-K + compaction per layer input, against the dense T2 product of that layer.
    summary.push(String::new());
    summary.push(format!(
        "{:>6} {:>5} {:>12} {:>16}",
        "d", "S", "prep us", "% of dense T2"
    ));
    let mut group = c.benchmark_group("quantize_topk");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(700));
    for d in [576usize, 1536, 2560, 4096, 6912, 11008] {
        let x = activation(d, &mut rng);
        let mut q = vec![0i8; d];
        let mut out = Sparse::<i8>::with_capacity(d);
        for s in [0.5f32, 0.75] {
            let k = keep_count(d, s);
            let mut step = || {
                let g = quantize_absmax(isa, &x, &mut q).expect("finite");
                topk_i8(isa, &q, k, &mut out);
                g
            };
            group.bench_function(BenchmarkId::new(format!("d={d}"), format!("S={s}")), |b| {
                b.iter(&mut step)
            });
            let t = median(
                (0..51)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..20 {
                            std::hint::black_box(step());
                        }
                        t.elapsed().as_secs_f64() / 20.0
                    })
                    .collect(),
            );
            let pct = dense_t2_us.get(&d).map_or("-".to_string(), |dense| {
                format!("{:.2}%", 100.0 * t * 1e6 / dense)
            });
            summary.push(format!("{d:>6} {s:>5.2} {:>12.2} {pct:>16}", t * 1e6));
        }
    }
    group.finish();

    println!("\n== qsparse kernel summary ({isa}, {threads} threads) ==");
    for line in summary {
        println!("{line}");
    }
}

criterion_group!(kernel_benches, benches);
criterion_main!(kernel_benches);
