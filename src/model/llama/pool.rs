//! Running a forward step on the rayon pool with its other workers awake, so that the step's
//! ~150 parallel regions start in microseconds.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` (a forward step) on a rayon pool worker, with the pool's other workers looking for
/// its parallel work meanwhile.
///
/// A step has ~150 parallel regions: started from outside the pool each one waits 10-25 µs for
/// sleeping workers, from a pool worker ~2 µs; and between two regions (the serial norms,
/// selection and attention) a sleeping worker takes ~2 µs to wake, so the others keep looking for
/// work until the step ends (`keep_stealing`). Both show in `qsparse bench` decode speed.
pub(super) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_none() {
        return rayon::scope(|_| on_pool(f));
    }
    /// Ends the helpers' spinning when the step returns, and when it panics: rayon's join waits
    /// for the other half before it propagates a panic, so without this a panic would hang.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let (result, ()) = rayon::join(
        || {
            let _done = Done(&done);
            f()
        },
        || keep_stealing(&done, rayon::current_num_threads().saturating_sub(1)),
    );
    result
}

/// Runs on `workers` pool threads (one join per extra worker, no allocation): each one executes
/// pending pool work as it appears and spins in between, until `done`. A job that is never
/// stolen runs after `done` on the joining thread and returns at once.
pub(super) fn keep_stealing(done: &AtomicBool, workers: usize) {
    match workers {
        0 => {}
        1 => {
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        }
        n => {
            rayon::join(|| keep_stealing(done, 1), || keep_stealing(done, n - 1));
        }
    }
}
