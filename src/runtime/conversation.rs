//! A multi-turn chat: messages rendered with the model's chat template, generated on a
//! [`Session`] so each turn evaluates only the new tokens, and the oldest turns dropped when the
//! context fills.

use serde::Serialize;

use crate::model::Model;
use crate::runtime::session::{GenerateParams, Generation, Session, SessionError};
use crate::runtime::template::{ChatTemplate, Message, TemplateError};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Why a chat turn failed.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// One reply and what it took.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The generation.
    pub generation: Generation,
    /// Earlier turns (user + assistant messages) dropped to make room.
    pub dropped_messages: usize,
}

/// A conversation with a model.
#[derive(Debug)]
pub struct Conversation<'m> {
    session: Session<'m>,
    template: ChatTemplate,
    /// The system message, if any.
    pub system: Option<String>,
    /// User and assistant messages, oldest first.
    pub turns: Vec<Message>,
    /// How replies are generated.
    pub params: GenerateParams,
    /// The last reply's figures (for `/stats`).
    pub last: Option<Generation>,
}

/// A transcript as `/save` writes it.
#[derive(Debug, Serialize)]
pub struct Transcript<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The sparsity the chat ran at.
    pub sparsity: f32,
    /// Every message, the system message first.
    pub messages: Vec<Message>,
}

impl<'m> Conversation<'m> {
    /// A conversation on `session` with `template`, starting with `system`.
    pub fn new(
        session: Session<'m>,
        template: ChatTemplate,
        system: Option<String>,
        params: GenerateParams,
    ) -> Conversation<'m> {
        Conversation {
            session,
            template,
            system,
            turns: Vec::new(),
            params,
            last: None,
        }
    }

    /// The template of `model` with its BOS/EOS texts; where the tokenizer puts BOS first
    /// itself, a BOS the template writes is left out (as llama.cpp does), so there is one.
    pub fn template_for(model: &Model, tokenizer: &Tokenizer) -> Result<ChatTemplate, ChatError> {
        let text = |t: Option<u32>| t.and_then(|t| tokenizer.token_text(t)).unwrap_or_default();
        Ok(
            ChatTemplate::from_gguf(&model.file, &text(tokenizer.bos()), &text(tokenizer.eos()))?
                .without_leading_bos(tokenizer.adds_bos()),
        )
    }

    /// Every message, the system message first.
    pub fn messages(&self) -> Vec<Message> {
        self.system
            .iter()
            .map(|s| Message::new("system", s))
            .chain(self.turns.iter().cloned())
            .collect()
    }

    /// Forget the turns (the system message stays) and the cache.
    pub fn reset(&mut self) {
        self.turns.clear();
        self.session.reset();
    }

    /// How the replies select inputs, with per-layer ratios or uniform ones (see
    /// [`Session::set_selection`]).
    pub fn set_selection(
        &mut self,
        select: crate::model::Select,
        layer_ratios: Option<std::sync::Arc<[[f32; 4]]>>,
    ) {
        self.session.set_selection(select, layer_ratios);
    }

    /// The positions the session's KV cache holds.
    pub fn context_length(&self) -> usize {
        self.session.context_length()
    }

    /// Answer `user`, streaming the reply through `on_text` (which returns false to stop it).
    /// A stopped reply is kept as far as it got.
    pub fn reply(
        &mut self,
        user: &str,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply, ChatError> {
        self.turns.push(Message::new("user", user));
        let (prompt, dropped) = match self.fit_prompt() {
            Ok(p) => p,
            Err(e) => {
                self.turns.pop();
                return Err(e);
            }
        };
        let generation = match self.session.generate(&prompt, &self.params, on_text) {
            Ok(g) => g,
            Err(e) => {
                self.turns.pop();
                return Err(e.into());
            }
        };
        self.turns
            .push(Message::new("assistant", generation.text.trim_end()));
        self.last = Some(generation.clone());
        Ok(Reply {
            generation,
            dropped_messages: dropped,
        })
    }

    /// The prompt tokens for the current messages, dropping the oldest turns until the prompt
    /// and room for a reply fit the context.
    fn fit_prompt(&mut self) -> Result<(Vec<u32>, usize), ChatError> {
        let ctx = self.context_length();
        let room = self.params.max_tokens.min(ctx / 2).max(1);
        let mut dropped = 0;
        loop {
            let text = self.template.render(&self.messages(), true)?;
            let tokens = self.session.tokenizer().encode(&text)?;
            if tokens.len() + room <= ctx || self.turns.len() <= 1 {
                if tokens.len() >= ctx {
                    return Err(SessionError::PromptTooLong {
                        tokens: tokens.len(),
                        ctx,
                    }
                    .into());
                }
                return Ok((tokens, dropped));
            }
            // The oldest exchange goes; the newest user message always stays.
            let n = if self.turns.len() > 2 { 2 } else { 1 };
            self.turns.drain(..n);
            dropped += n;
        }
    }
}
