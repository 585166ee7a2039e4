//! The one thread that runs the model. Requests wait in a bounded FIFO queue (first come, first
//! served; a full queue is refused at once, never waited on) and are generated one at a time on a
//! [`Session`], so a request that repeats a previous prompt's start (a shared system prompt, the
//! next turn of a chat) evaluates only what is new.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::model::Select;
use crate::runtime::session::{Finish, GenerateParams, Generation, Session};

/// What a request's handler hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// Text that is final (possibly empty: one event per token, so a handler that has gone away
    /// is noticed at the next token).
    Text(String),
    Done(Generation),
    Failed(String),
}

/// One request's work.
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// How its inputs are selected: the score, and per-layer ratios (a profile) or None.
    pub select: Select,
    pub layer_ratios: Option<Arc<[[f32; 4]]>>,
    pub events: mpsc::Sender<Event>,
}

/// The sending side of the queue; cheap to clone, one per handler thread.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

impl Queue {
    /// A queue holding at most `capacity` waiting jobs (besides the one running).
    pub fn new(capacity: usize) -> (Queue, Receiver<Job>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let waiting = Arc::new(AtomicUsize::new(0));
        (Queue { tx, waiting }, rx)
    }

    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(Busy)
            }
        }
    }

    /// Requests queued or running.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The count behind [`Queue::depth`], for the engine to lower as it finishes a job (a
    /// `Queue` clone there would keep the channel open forever).
    pub fn depth_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.waiting)
    }
}

/// Counts for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub completed: AtomicU64,
    /// Generations stopped because their client went away.
    pub cancelled: AtomicU64,
    /// Prompt tokens of finished generations.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub completion_tokens: AtomicU64,
    /// Time to the first token (prompt evaluation), summed over generations (µs).
    pub first_token_us: AtomicU64,
    /// Time spent decoding, summed over generations (µs).
    pub decode_us: AtomicU64,
    /// Responses by HTTP status.
    pub responses: Mutex<BTreeMap<u16, u64>>,
}

impl Stats {
    /// Count one response with `status`.
    pub fn responded(&self, status: u16) {
        if let Ok(mut m) = self.responses.lock() {
            *m.entry(status).or_insert(0) += 1;
        }
    }
}

/// Run jobs until every [`Queue`] is dropped. A job whose handler stops listening is cancelled
/// at its next token.
pub fn run(session: &mut Session, jobs: Receiver<Job>, stats: &Stats, waiting: &AtomicUsize) {
    for job in jobs {
        let events = job.events;
        session.set_selection(job.select, job.layer_ratios);
        let result = session.generate(&job.prompt, &job.params, &mut |text| {
            events.send(Event::Text(text.to_owned())).is_ok()
        });
        let counter = match &result {
            Ok(g) if g.finish == Finish::Cancelled => &stats.cancelled,
            _ => &stats.completed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(g) = &result {
            let us = |s: f64| (s * 1e6) as u64;
            stats
                .prompt_tokens
                .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
            stats
                .completion_tokens
                .fetch_add(g.tokens.len() as u64, Ordering::Relaxed);
            stats
                .first_token_us
                .fetch_add(us(g.prompt_s), Ordering::Relaxed);
            stats
                .decode_us
                .fetch_add(us(g.generate_s), Ordering::Relaxed);
        }
        waiting.fetch_sub(1, Ordering::SeqCst);
        let _ = events.send(match result {
            Ok(g) => Event::Done(g),
            Err(e) => Event::Failed(e.to_string()),
        });
    }
}
