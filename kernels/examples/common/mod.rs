//! Shared by the examples that time products as a decode step meets them.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a rayon pool worker while the pool's other worker spins, looking for its parallel
/// work, as the executor's forward step does (`src/model/llama.rs`, `on_pool`).
pub fn on_busy_pool(f: impl FnOnce() + Send) {
    let done = AtomicBool::new(false);
    rayon::scope(|_| {
        rayon::join(
            || {
                f();
                done.store(true, Ordering::Release);
            },
            || {
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            },
        )
    });
}
