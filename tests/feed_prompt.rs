//! Feeding a prompt (in batches of tokens, without the intermediate logits: no lm_head before the
//! last token) leaves exactly the state a token-by-token forward leaves: same logits to the bit,
//! same continuation. Int8 weights take the batched integer product (int16 inputs with outliers,
//! plain int8 without), f32 and f16 weights the batched float one.

mod common;

use qsparse::model::{self, RunState, Sparsity, WeightFormat, PROMPT_BATCH};
use qsparse::sample::argmax;

#[test]
fn feeding_a_prompt_equals_forwarding_every_token() {
    for (format, outliers) in [
        (WeightFormat::Int8, 32),
        (WeightFormat::Int8, 0),
        (WeightFormat::F32, 0),
        (WeightFormat::F16, 0),
    ] {
        let (model, tokenizer) = model::load(&common::smollm2(), format, &|_, _| {}).unwrap();
        // Long enough for several full batches and a partial one.
        let prompt = tokenizer
            .encode(
                "The quick brown fox jumps over the lazy dog, and then it runs into the woods \
                 where 12 owls and a badger named Otto watch it with some suspicion. Otto, who \
                 has lived under the old oak for 37 winters, does not care for foxes; the owls \
                 care even less, and they say so loudly until the moon is high.",
            )
            .unwrap();
        assert!(prompt.len() > PROMPT_BATCH + 8, "{} tokens", prompt.len());
        for sparsity in [Sparsity::dense(), Sparsity::uniform(0.5)] {
            let state = || {
                let mut s = RunState::new(&model.config, format, 128);
                s.set_activation_outliers(outliers);
                s
            };
            let mut a = state();
            for (pos, &t) in prompt.iter().enumerate() {
                model.forward(&mut a, t, pos, sparsity).unwrap();
            }
            let mut b = state();
            // In two pieces, as a session extending its cache does.
            let cut = 3;
            model
                .feed_prompt(&mut b, &prompt[..cut], 0, sparsity)
                .unwrap();
            model
                .feed_prompt(&mut b, &prompt[cut..], cut, sparsity)
                .unwrap();
            let what = format!("{} outliers {outliers} {sparsity:?}", format.name());
            assert!(same_bits(a.logits(), b.logits()), "logits differ: {what}");
            // The caches agree too: the next steps match.
            for pos in prompt.len()..prompt.len() + 4 {
                let next = argmax(a.logits());
                assert_eq!(next, argmax(b.logits()), "{what}");
                model.forward(&mut a, next, pos, sparsity).unwrap();
                model.forward(&mut b, next, pos, sparsity).unwrap();
                assert!(
                    same_bits(a.logits(), b.logits()),
                    "{what} at position {pos}"
                );
            }
        }
    }
}

/// A prompt that does not fit the context, or holds a token outside the vocabulary, fails
/// cleanly, naming the problem.
#[test]
fn a_prompt_beyond_the_context_or_the_vocabulary_is_an_error() {
    let (model, tokenizer) =
        model::load(&common::smollm2(), WeightFormat::Int8, &|_, _| {}).unwrap();
    let prompt = tokenizer
        .encode("one two three four five six seven eight nine ten eleven")
        .unwrap();
    let mut s = RunState::new(&model.config, WeightFormat::Int8, 8);
    let err = model
        .feed_prompt(&mut s, &prompt, 0, Sparsity::dense())
        .unwrap_err();
    assert!(
        err.to_string().contains("beyond the context length 8"),
        "{err}"
    );
    let mut s = RunState::new(&model.config, WeightFormat::Int8, 64);
    let err = model
        .feed_prompt(&mut s, &[1, 2, 3, 4_000_000, 5], 0, Sparsity::dense())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("token id 4000000 is outside the vocabulary"),
        "{err}"
    );
}

/// A batched forward leaves, for every token, the logits and the traffic counts (bytes, active
/// weights, input zeros) that forwarding the tokens one by one leaves: what perplexity and the
/// sweep's quality columns read. The head is batched too: int8's row-major Q8 one, f32's in
/// column layout, dense or with a sparse input.
#[test]
fn a_batched_forward_gives_every_tokens_logits_and_traffic() {
    for format in [WeightFormat::Int8, WeightFormat::F32] {
        let (model, tokenizer) = model::load(&common::smollm2(), format, &|_, _| {}).unwrap();
        batched_forward_matches(&model, &tokenizer, format);
    }
}

fn batched_forward_matches(
    model: &model::Model,
    tokenizer: &qsparse::tokenizer::Tokenizer,
    format: WeightFormat,
) {
    let tokens = tokenizer
        .encode(
            "We the People of the United States, in Order to form a more perfect Union, \
             establish Justice, insure domestic Tranquility, provide for the common defence, \
             promote the general Welfare, and secure the Blessings of Liberty",
        )
        .unwrap();
    assert!(tokens.len() > PROMPT_BATCH + 4, "{} tokens", tokens.len());
    let mut sparse_head = Sparsity::uniform(0.5);
    sparse_head.lm_head = 0.5;
    let sparsities = match format {
        WeightFormat::Int8 => vec![Sparsity::dense(), Sparsity::uniform(0.5)],
        _ => vec![Sparsity::dense(), Sparsity::uniform(0.5), sparse_head],
    };
    for sparsity in sparsities {
        let mut a = RunState::new(&model.config, format, 64);
        let mut b = RunState::new(&model.config, format, 64);
        model
            .forward_each(&mut b, &tokens, 0, sparsity, &mut |i, b| {
                model.forward(&mut a, tokens[i], i, sparsity).unwrap();
                let what = format!("{} {sparsity:?}, position {i}", format.name());
                assert!(same_bits(a.logits(), b.logits()), "logits differ: {what}");
                assert_eq!(a.traffic(), b.traffic(), "traffic differs: {what}");
            })
            .unwrap();
    }
}

/// Whether two logit vectors are equal bit for bit.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
