//! Generation on a loaded model: a [`session::Session`] (one KV cache that remembers the tokens
//! it holds), a [`conversation::Conversation`] (multi-turn chat on a session) and the model's
//! chat [`template`].

pub mod conversation;
pub mod session;
pub mod template;
