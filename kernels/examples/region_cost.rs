//! What a parallel region costs on this machine when the workers have been idle for a while
//! (as between two projections of a decode step): an empty two-way split after `gap` µs of
//! single-threaded work.
//!
//!     cargo run --release -p qsparse-kernels --example region_cost

use std::time::{Duration, Instant};

fn busy(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    println!("from outside the pool:");
    measure();
    println!("from inside the pool (the caller is a worker):");
    rayon::scope(|_| measure());
}

fn measure() {
    for gap_us in [0u64, 5, 20, 50, 200] {
        let mut total = Duration::ZERO;
        let n = 2000;
        for _ in 0..n {
            busy(Duration::from_micros(gap_us));
            let t = Instant::now();
            rayon::join(|| std::hint::black_box(1), || std::hint::black_box(2));
            total += t.elapsed();
        }
        println!(
            "gap {gap_us:>4} us: rayon::join of two empty tasks {:.1} us",
            total.as_secs_f64() * 1e6 / n as f64
        );
    }
}
