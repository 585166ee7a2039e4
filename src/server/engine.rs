//! The one thread that runs the model. Requests wait in a bounded FIFO queue (first come, first
//! served; a full queue is refused at once, never waited on) and are generated one at a time on a
//! [`Session`], so a request that repeats a previous prompt's start (a shared system prompt, the
//! next turn of a chat) evaluates only what is new.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

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
    pub events: mpsc::Sender<Event>,
}

/// The sending side of the queue; cheap to clone, one per handler thread.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

impl Queue {
    /// A queue holding at most `capacity` waiting jobs (besides the one running).
    pub fn new(capacity: usize) -> (Queue, Receiver<Job>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        (Queue { tx }, rx)
    }

    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// Counts for `/health`.
#[derive(Debug, Default)]
pub struct Stats {
    pub completed: AtomicU64,
    /// Generations stopped because their client went away.
    pub cancelled: AtomicU64,
}

/// Run jobs until every [`Queue`] is dropped. A job whose handler stops listening is cancelled
/// at its next token.
pub fn run(session: &mut Session, jobs: Receiver<Job>, stats: &Stats) {
    for job in jobs {
        let events = job.events;
        let result = session.generate(&job.prompt, &job.params, &mut |text| {
            events.send(Event::Text(text.to_owned())).is_ok()
        });
        let counter = match &result {
            Ok(g) if g.finish == Finish::Cancelled => &stats.cancelled,
            _ => &stats.completed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = events.send(match result {
            Ok(g) => Event::Done(g),
            Err(e) => Event::Failed(e.to_string()),
        });
    }
}
