use qsparse_kernels::*;
use std::time::Instant;
fn main() {
    let (d_in, d_out) = (576usize, 1536usize);
    let codes: Vec<i8> = (0..d_in * d_out)
        .map(|i| ((i * 7919) % 3) as i8 - 1)
        .collect();
    let m = PackedMatrix::t2_from_codes(&codes, d_out, d_in, vec![1.0; d_out]);
    let q: Vec<i8> = (0..d_in).map(|i| ((i * 31) % 255) as i8).collect();
    let mut x = Sparse::default();
    x.dense(&q);
    let mut y = vec![0f32; d_out];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for isa in Isa::available() {
        pool.install(|| {
            let n = 2000;
            let t = Instant::now();
            for _ in 0..n {
                gather_matvec(isa, &m.view(), Input::I8 { x: &x, scale: 1.0 }, &mut y);
            }
            let dt = t.elapsed().as_secs_f64() / n as f64;
            println!(
                "{isa}: {:.1} us, {:.2} Gweights/s",
                dt * 1e6,
                (d_in * d_out) as f64 / dt / 1e9
            );
        });
    }
}
