//! Memory a model takes, measured on the process itself (Linux: resident pages from
//! /proc/self/statm). Alone in its file so that no other test's allocations run beside it.
#![cfg(target_os = "linux")]

mod common;

use qsparse::model::{self, RunState, Sparsity, WeightFormat};

/// Resident bytes of this process (4 KB pages, as on x86-64 Linux).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Loading leaves the converted weights resident and little else, and a run state's KV cache
/// (SmolLM2 at 4096 positions: 94 MB) becomes resident as positions are written, not when it is
/// allocated: a chat or a server holds a long context's worth of cache from the start, and most
/// conversations never fill it. (One test: two in this process would measure each other.)
#[test]
fn loading_keeps_no_copies_and_the_kv_cache_fills_lazily() {
    let (model, tokenizer) =
        model::load(&common::smollm2(), WeightFormat::Int8, &|_, _| {}).unwrap();
    let loaded = resident();
    let file = std::fs::metadata(common::smollm2()).unwrap().len() as usize;
    let weights = model.weights.linear_bytes();
    // The converted weights, the file's pages (read once while converting) and the program:
    // no copies of the weights left behind by the conversion (they were: 120 MB more, kept by
    // the allocator's per-thread arenas after the matrices moved to their shared mapping).
    assert!(
        loaded < weights + file + (48 << 20),
        "{} MB resident after loading {} MB of weights from a {} MB file",
        loaded >> 20,
        weights >> 20,
        file >> 20
    );
    let c = &model.config;
    let kv_bytes = 2 * c.n_layers * 4096 * c.n_kv_heads * c.head_dim * 2;
    assert!(
        kv_bytes >= 90 << 20,
        "SmolLM2's cache at 4096 positions: {kv_bytes} bytes"
    );
    let before = resident();
    let mut state = RunState::new(&model.config, WeightFormat::Int8, 4096);
    let allocated = resident();
    let prompt = tokenizer
        .encode("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    model
        .feed_prompt(&mut state, &prompt, 0, Sparsity::dense())
        .unwrap();
    let fed = resident();
    assert!(
        allocated.saturating_sub(before) < 8 << 20,
        "allocating the state made {} MB resident",
        (allocated - before) >> 20
    );
    // The prompt's positions, one 4 KB page per layer, head, keys or values, and 32 positions.
    let touched = 2 * c.n_layers * c.n_kv_heads * 4096;
    assert!(
        fed.saturating_sub(allocated) < touched + (16 << 20),
        "feeding {} tokens made {} MB resident",
        prompt.len(),
        fed.saturating_sub(allocated) >> 20
    );
}
