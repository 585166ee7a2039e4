//! Feeding a prompt without its intermediate logits (no lm_head before the last token) leaves
//! exactly the state a token-by-token forward leaves: same logits to the bit, same continuation.

mod common;

use qsparse::model::{self, RunState, Sparsity, WeightFormat};
use qsparse::sample::argmax;

#[test]
fn feeding_a_prompt_equals_forwarding_every_token() {
    let (model, tokenizer) =
        model::load(&common::smollm2(), WeightFormat::Int8, &|_, _| {}).unwrap();
    let prompt = tokenizer
        .encode("The quick brown fox jumps over the lazy dog, and then")
        .unwrap();
    assert!(prompt.len() > 5);
    for sparsity in [Sparsity::dense(), Sparsity::uniform(0.5)] {
        let mut a = RunState::new(&model.config, WeightFormat::Int8, 64);
        for (pos, &t) in prompt.iter().enumerate() {
            model.forward(&mut a, t, pos, sparsity).unwrap();
        }
        let mut b = RunState::new(&model.config, WeightFormat::Int8, 64);
        // In two pieces, as a session extending its cache does.
        let cut = prompt.len() / 2;
        model
            .feed_prompt(&mut b, &prompt[..cut], 0, sparsity)
            .unwrap();
        model
            .feed_prompt(&mut b, &prompt[cut..], cut, sparsity)
            .unwrap();
        assert!(
            a.logits
                .iter()
                .zip(&b.logits)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "logits differ at {sparsity:?}"
        );
        // The caches agree too: the next steps match.
        for pos in prompt.len()..prompt.len() + 4 {
            let next = argmax(&a.logits);
            assert_eq!(next, argmax(&b.logits));
            model.forward(&mut a, next, pos, sparsity).unwrap();
            model.forward(&mut b, next, pos, sparsity).unwrap();
            assert!(a
                .logits
                .iter()
                .zip(&b.logits)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
