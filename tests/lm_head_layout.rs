//! The int8 lm_head's two layouts: row-major Q8 for a dense head input (the default), column tiles
//! when the model is loaded for a sparse head input. Both give the same next token; only the
//! columns can skip bytes; asking a row-major head for a sparse input is an error, not a silently
//! dense product.

mod common;

use qsparse::model::{self, ForwardError, HeadInput, Proj, RunState, Sparsity, WeightFormat};
use qsparse::sample::argmax;

#[test]
fn the_int8_head_layouts_agree_and_only_columns_take_a_sparse_input() {
    let path = common::smollm2();
    let load = |head| model::load_for(&path, WeightFormat::Int8, head, &|_, _| {}).unwrap();
    let ((rows, tokenizer), (cols, _)) = (load(HeadInput::Dense), load(HeadInput::Sparse));
    let prompt = tokenizer.encode("The capital of France is").unwrap();
    let run = |m: &model::Model, sparsity: Sparsity| {
        let mut state = RunState::new(&m.config, WeightFormat::Int8, 32);
        m.feed_prompt(&mut state, &prompt, 0, sparsity)
            .map(|_| state)
    };
    let dense = Sparsity::dense();
    let (a, b) = (run(&rows, dense).unwrap(), run(&cols, dense).unwrap());
    assert_eq!(argmax(a.logits()), argmax(b.logits()));
    // Two int8 roundings of the same head (per-32 blocks against per-row scales): close logits
    // (measured: 0.51 at most, the largest |logit| being 19.4).
    let worst = a
        .logits()
        .iter()
        .zip(b.logits())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let spread = a.logits().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        worst < 0.05 * spread,
        "logits differ by {worst} (largest |logit| {spread})"
    );

    let sparse_head = Sparsity {
        lm_head: 0.5,
        ..dense
    };
    assert!(matches!(
        run(&rows, sparse_head),
        Err(ForwardError::DenseHead)
    ));
    let c = run(&cols, sparse_head).unwrap();
    let head = Proj::LmHead;
    assert!(
        c.traffic().bytes_of(head) * 10 < b.traffic().bytes_of(head) * 6,
        "a half-kept head input read {} of {} bytes",
        c.traffic().bytes_of(head),
        b.traffic().bytes_of(head)
    );
    // The row-major head reads its codes and scales, more than the per-row column tiles.
    assert!(a.traffic().bytes_of(head) > b.traffic().bytes_of(head));
}
