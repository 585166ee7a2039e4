//! `qsparse serve`: an OpenAI-compatible HTTP server for one loaded model.
//!
//! Handler threads take requests from tiny_http, validate them (`api`), render and tokenize the
//! prompt, and queue the work for the single engine thread (`engine`); streamed replies are
//! written as server-sent events in HTTP chunks, one per token, so a client that disconnects is
//! noticed at the next token and its generation stops.

mod api;
mod engine;
mod peer;
mod routes;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Method, Request};

use crate::model::{Model, RunState, Select, Sparsity};
use crate::runtime::session::{Finish, GenerateParams, Generation, Session};
use crate::runtime::template::ChatTemplate;
use crate::sample::SamplerConfig;
use crate::tokenizer::Tokenizer;
pub use api::Limits;
use api::{ApiError, Settings};
use engine::{Event, Job, Queue};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to listen on (`127.0.0.1:8080`).
    pub addr: String,
    /// The model id reported by `/v1/models` and in responses.
    pub model_id: String,
    /// Requests that may wait while one runs; more get 503.
    pub queue: usize,
    /// Request limits and defaults.
    pub limits: Limits,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Sampling defaults; a request's temperature, top_p and seed override them.
    pub sampling: SamplerConfig,
    /// With a key, every endpoint but `/health` needs `Authorization: Bearer KEY` (401 without).
    pub api_key: Option<String>,
    /// Browsers on this origin (or `*`) may call the API: CORS headers on every response, and
    /// preflight (`OPTIONS`) answered without a key.
    pub cors: Option<String>,
    /// How a request that names a sparsity selects inputs (uniform ratios).
    pub select: Select,
    /// Log lines on stderr as JSON objects (one a line) instead of text.
    pub log_json: bool,
    /// A calibrated profile for requests that name no sparsity: its selection and per-layer
    /// ratios (`limits.default_sparsity` is then the S whose bytes it reads).
    pub profile: Option<(Select, Arc<[[f32; 4]]>)>,
}

/// Set when the server should stop accepting requests.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Why the server could not start or run.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
}

/// What every handler needs.
struct Shared<'m> {
    config: &'m Config,
    /// The port the server listens on (to find a client's connection, see `peer`).
    local_port: u16,
    tokenizer: &'m Tokenizer,
    template: &'m ChatTemplate,
    ctx: usize,
    ids: AtomicU64,
    stats: engine::Stats,
}

/// Serve until [`SHUTDOWN`] is set; `on_listening` receives the bound address (useful with port 0).
pub fn serve(
    model: &Model,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    state: RunState,
    config: &Config,
    on_listening: &mut dyn FnMut(&str),
) -> Result<(), ServeError> {
    let server = tiny_http::Server::http(&config.addr).map_err(|e| ServeError::Bind {
        addr: config.addr.clone(),
        message: e.to_string(),
    })?;
    if let Some(origin) = &config.cors {
        let _ = CORS_ORIGIN.set(origin.clone());
    }
    on_listening(&server.server_addr().to_string());
    let shared = Shared {
        config,
        local_port: server.server_addr().to_ip().map_or(0, |a| a.port()),
        tokenizer,
        template,
        ctx: state.context_length(),
        ids: AtomicU64::new(0),
        stats: engine::Stats::default(),
    };
    let (queue, jobs) = Queue::new(config.queue);
    // Enough handlers for every queued request to be connected, plus a few for quick requests
    // (health, models, refusals) while all of them wait.
    let handlers = config.queue + 4;
    let depth = queue.depth_counter();
    std::thread::scope(|s| {
        let stats = &shared.stats;
        s.spawn(move || {
            let mut session = Session::new(model, tokenizer, state);
            engine::run(&mut session, jobs, stats, &depth)
        });
        for _ in 0..handlers {
            let queue = queue.clone();
            let (server, shared) = (&server, &shared);
            s.spawn(move || {
                while !SHUTDOWN.load(Ordering::SeqCst) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(request)) => handle(request, shared, &queue),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            });
        }
        // The engine ends when the last queue handle (the handlers') is dropped.
        drop(queue);
    });
    Ok(())
}

fn handle(mut request: Request, shared: &Shared, queue: &Queue) {
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let open = path == "/health" || (method == Method::Options && shared.config.cors.is_some());
    if !open && !routes::authorized(&request, shared.config.api_key.as_deref()) {
        let _ = respond_error(request, &routes::unauthorized());
        shared.stats.responded(401);
        log_request(shared.config.log_json, &method, &path, 401, started);
        return;
    }
    let mut status = 200;
    let mut answer = |request: Request, result: Result<Value, ApiError>| match result {
        Ok(body) => respond(request, 200, &body),
        Err(e) => {
            status = e.status;
            respond_error(request, &e)
        }
    };
    let result = match (&method, path.as_str()) {
        (Method::Get, "/health") => respond(
            request,
            200,
            &json!({
                "status": "ok",
                "completed": shared.stats.completed.load(Ordering::Relaxed),
                "cancelled": shared.stats.cancelled.load(Ordering::Relaxed),
                "queue_capacity": shared.config.queue,
                "context_length": shared.ctx,
            }),
        ),
        (Method::Options, _) if shared.config.cors.is_some() => {
            status = 204;
            preflight(request)
        }
        (Method::Get, "/metrics") => {
            metrics(request, &shared.stats, shared.config.queue, queue.depth())
        }
        (Method::Get, "/v1/models") => respond(
            request,
            200,
            &json!({"object": "list", "data": [routes::model_object(shared)]}),
        ),
        (Method::Get, p) if p.starts_with("/v1/models/") => {
            answer(request, routes::model(&p["/v1/models/".len()..], shared))
        }
        (Method::Post, "/tokenize" | "/detokenize") => {
            let body = read_body(&mut request, shared.config.max_body_bytes);
            let result = body.and_then(|body| match path.as_str() {
                "/tokenize" => routes::tokenize(&body, shared),
                _ => routes::detokenize(&body, shared),
            });
            answer(request, result)
        }
        (Method::Post, "/v1/chat/completions") | (Method::Post, "/v1/completions") => {
            let chat = path == "/v1/chat/completions";
            match read_body(&mut request, shared.config.max_body_bytes)
                .and_then(|body| prepare(&body, chat, shared))
            {
                Ok((prompt, settings)) => {
                    complete(request, prompt, settings, chat, shared, queue).map(|s| status = s)
                }
                Err(e) => answer(request, Err(e)),
            }
        }
        (
            _,
            "/health"
            | "/metrics"
            | "/v1/models"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/tokenize"
            | "/detokenize",
        ) => {
            status = 405;
            let e = ApiError {
                status: 405,
                kind: "invalid_request_error",
                message: format!("{method} is not allowed on {path}"),
                param: None,
                code: None,
            };
            respond_error(request, &e)
        }
        _ => {
            status = 404;
            respond_error(
                request,
                &ApiError {
                    status: 404,
                    kind: "invalid_request_error",
                    message: format!("no route for {method} {path}"),
                    param: None,
                    code: None,
                },
            )
        }
    };
    // A client that went away while we answered: nothing to tell anyone.
    let _ = result;
    shared.stats.responded(status);
    log_request(shared.config.log_json, &method, &path, status, started);
}

/// One line on stderr per request: method, path, status and time (completions add their own
/// line with tokens and speeds).
/// A request's line on stderr: method, path, status and time taken (a JSON object with
/// `--log-format json`).
fn log_request(json: bool, method: &Method, path: &str, status: u16, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if json {
        eprintln!(
            "{}",
            json!({
                "event": "request",
                "time": unix_time(),
                "method": method.as_str(),
                "path": path,
                "status": status,
                "ms": (ms * 10.0).round() / 10.0,
            })
        );
    } else {
        eprintln!("{method} {path} {status} {ms:.1} ms");
    }
}

/// Seconds since the Unix epoch, with milliseconds.
fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1e3)
}

/// The request body, refusing more than `max` bytes.
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError {
        status: 413,
        kind: "invalid_request_error",
        message: format!("the request body is larger than {max} bytes"),
        param: None,
        code: None,
    };
    if request.body_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::invalid(format!("cannot read the body: {e}"), None))?;
    if body.len() > max {
        return Err(too_large());
    }
    Ok(body)
}

/// Validate a completion request and tokenize its prompt.
fn prepare(body: &[u8], chat: bool, shared: &Shared) -> Result<(Vec<u32>, Settings), ApiError> {
    let limits = shared.config.limits;
    let (text, settings) = if chat {
        let r: api::ChatRequest = api::parse(body)?;
        let settings = r.common.validate(limits.max_tokens, limits, true)?;
        let text = shared
            .template
            .render(&r.messages()?, true)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        (text, settings)
    } else {
        let r: api::CompletionRequest = api::parse(body)?;
        // OpenAI's default for completions.
        let settings = r.common.validate(16, limits, false)?;
        (r.prompt()?.to_owned(), settings)
    };
    let prompt = shared
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::invalid(e.to_string(), None))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    if prompt.len() >= shared.ctx {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!(
                    "the prompt has {} tokens; this server's context holds {} (with room to reply)",
                    prompt.len(),
                    shared.ctx
                ),
                Some("messages"),
            )
        });
    }
    Ok((prompt, settings))
}

/// Answer a completion request (queued for the engine, streamed or whole); the HTTP status of
/// the answer, for the request log.
fn complete(
    request: Request,
    prompt: Vec<u32>,
    settings: Settings,
    chat: bool,
    shared: &Shared,
    queue: &Queue,
) -> std::io::Result<u16> {
    let defaults = shared.config.sampling;
    let seed = settings.seed.unwrap_or_else(|| {
        // No seed asked for: a different draw per request.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ shared
                .ids
                .load(Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let params = GenerateParams {
        max_tokens: settings.max_tokens,
        sampler: SamplerConfig {
            temperature: settings.temperature.unwrap_or(defaults.temperature),
            top_p: settings.top_p.unwrap_or(defaults.top_p),
            top_k: settings.top_k.unwrap_or(defaults.top_k),
            min_p: settings.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: settings.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            seed,
            ..defaults
        },
        sparsity: Sparsity::uniform(settings.sparsity),
        logprobs: settings.logprobs,
        stop: settings.stop.clone(),
    };
    let (select, layer_ratios) = match &shared.config.profile {
        Some((select, ratios)) if !settings.sparsity_named => (*select, Some(ratios.clone())),
        _ => (shared.config.select, None),
    };
    let (tx, rx) = mpsc::channel();
    let n_prompt = prompt.len();
    if queue
        .submit(Job {
            prompt,
            params,
            select,
            layer_ratios,
            events: tx,
        })
        .is_err()
    {
        let e = ApiError {
            status: 503,
            kind: "server_error",
            message: "the server is busy (its queue is full): retry shortly".into(),
            param: None,
            code: Some("queue_full"),
        };
        return write_json(request, 503, &e.body(), &[("Retry-After", "1")]).map(|()| 503);
    }
    let id = format!(
        "{}-{:x}",
        if chat { "chatcmpl" } else { "cmpl" },
        shared.ids.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let reply = Reply {
        id,
        created,
        chat,
        model: &shared.config.model_id,
        n_prompt,
        tokenizer: shared.tokenizer,
        sparsity: settings.sparsity,
        log_json: shared.config.log_json,
    };
    if settings.stream {
        stream(request, rx, &reply, settings.include_usage).map(|()| 200)
    } else {
        answer_whole(request, rx, &reply, shared.local_port)
    }
}

/// A non-streaming answer: the whole text arrives with `Done` (the per-token events only matter
/// when streaming). A client that goes away meanwhile (checked every [`PEER_CHECK`]) is not
/// waited for: dropping `rx` stops its generation at the next token, and the status logged is
/// 499 (client closed request).
fn answer_whole(
    request: Request,
    rx: mpsc::Receiver<Event>,
    reply: &Reply,
    local_port: u16,
) -> std::io::Result<u16> {
    let remote = request.remote_addr().copied();
    let mut checked = Instant::now();
    loop {
        match rx.recv_timeout(PEER_CHECK) {
            Ok(Event::Text(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Done(g)) => {
                reply.log(&g);
                return respond(request, 200, &reply.whole(&g)).map(|()| 200);
            }
            Ok(Event::Failed(message)) => {
                return respond_error(request, &server_error(message)).map(|()| 500);
            }
            Err(RecvTimeoutError::Disconnected) => {
                return respond_error(request, &server_error("the engine stopped".into()))
                    .map(|()| 500);
            }
        }
        if checked.elapsed() >= PEER_CHECK {
            checked = Instant::now();
            if remote.is_some_and(|r| peer::client_gone(r, local_port)) {
                return Ok(499);
            }
        }
    }
}

/// How often a non-streaming request checks that its client is still there.
const PEER_CHECK: Duration = Duration::from_millis(250);

fn server_error(message: String) -> ApiError {
    ApiError {
        status: 500,
        kind: "server_error",
        message,
        param: None,
        code: None,
    }
}

/// What the response bodies of one request share.
struct Reply<'a> {
    id: String,
    created: u64,
    chat: bool,
    model: &'a str,
    n_prompt: usize,
    tokenizer: &'a Tokenizer,
    sparsity: f32,
    log_json: bool,
}

impl Reply<'_> {
    /// The generation's line on stderr: tokens in and out, prompt and decode speed, sparsity (a
    /// JSON object with `--log-format json`).
    fn log(&self, g: &Generation) {
        if self.log_json {
            eprintln!(
                "{}",
                json!({
                    "event": "generation",
                    "time": unix_time(),
                    "id": self.id,
                    "prompt_tokens": self.n_prompt,
                    "evaluated_prompt_tokens": g.evaluated_prompt_tokens,
                    "prompt_tok_s": g.prompt_tok_s(),
                    "time_to_first_token_ms": g.prompt_s * 1e3,
                    "completion_tokens": self.completion_tokens(g),
                    "decode_tok_s": g.decode_tok_s(),
                    "finish": g.finish.reason(),
                    "sparsity": self.sparsity,
                })
            );
            return;
        }
        eprintln!(
            "{} prompt {} tokens ({} evaluated, {:.0} tok/s, first token after {:.0} ms), \
             completion {} tokens ({:.1} tok/s, {}), S={}",
            self.id,
            self.n_prompt,
            g.evaluated_prompt_tokens,
            g.prompt_tok_s(),
            g.prompt_s * 1e3,
            self.completion_tokens(g),
            g.decode_tok_s(),
            g.finish.reason(),
            self.sparsity,
        );
    }

    fn completion_tokens(&self, g: &Generation) -> usize {
        let end = g.tokens.last().is_some_and(|&t| self.tokenizer.is_end(t));
        g.tokens.len() - usize::from(end)
    }

    fn finish_reason(g: &Generation) -> &'static str {
        match g.finish {
            Finish::Stop => "stop",
            Finish::Length | Finish::Cancelled => "length",
        }
    }

    /// The log-probabilities of a generation in OpenAI's form (null when none were asked for):
    /// chat's `{content: [{token, logprob, bytes, top_logprobs}]}` or completions' `{tokens,
    /// token_logprobs, top_logprobs, text_offset}`. The end token, which adds no text, is left out.
    fn logprobs(&self, g: &Generation) -> Value {
        if g.token_logprobs.is_empty() {
            return Value::Null;
        }
        let n = self.completion_tokens(g);
        let tok = self.tokenizer;
        let text = |id: u32| String::from_utf8_lossy(tok.token_bytes(id)).into_owned();
        let steps = g.tokens[..n]
            .iter()
            .zip(&g.token_logprobs)
            .zip(&g.top_logprobs);
        if self.chat {
            let content: Vec<Value> = steps
                .map(|((&id, &lp), top)| {
                    let top: Vec<Value> = top
                        .iter()
                        .map(|c| json!({"token": text(c.id), "logprob": c.logprob, "bytes": tok.token_bytes(c.id)}))
                        .collect();
                    json!({"token": text(id), "logprob": lp, "bytes": tok.token_bytes(id), "top_logprobs": top})
                })
                .collect();
            json!({ "content": content })
        } else {
            let (mut tokens, mut lps, mut tops, mut offsets, mut at) =
                (vec![], vec![], vec![], vec![], 0);
            for ((&id, &lp), top) in steps {
                let piece = text(id);
                offsets.push(at);
                at += piece.len();
                tokens.push(piece);
                lps.push(lp);
                let top: serde_json::Map<String, Value> =
                    top.iter().map(|c| (text(c.id), json!(c.logprob))).collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
        }
    }

    /// The non-streamed body.
    fn whole(&self, g: &Generation) -> Value {
        let logprobs = self.logprobs(g);
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": g.text},
                   "logprobs": logprobs, "finish_reason": Self::finish_reason(g)})
        } else {
            json!({"index": 0, "text": g.text, "logprobs": logprobs,
                   "finish_reason": Self::finish_reason(g)})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": api::usage(self.n_prompt, self.completion_tokens(g)),
        })
    }

    /// One streamed chunk: a text delta, or the end (`finish`), or usage only.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, usage: Option<Value>) -> Value {
        let choices = if usage.is_some() {
            json!([])
        } else if self.chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None if finish.is_none() => json!({"role": "assistant", "content": ""}),
                None => json!({}),
            };
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
        } else {
            json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
        };
        let mut v = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

/// Server-sent events over chunked transfer encoding, one HTTP chunk per event, flushed at once.
fn stream(
    request: Request,
    rx: mpsc::Receiver<Event>,
    reply: &Reply,
    include_usage: bool,
) -> std::io::Result<()> {
    let mut w = request.into_writer();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\n{}\r\n",
        cors_headers()
    );
    w.write_all(head.as_bytes())?;
    let send = |w: &mut dyn Write, data: &str| -> std::io::Result<()> {
        let event = format!("data: {data}\n\n");
        write!(w, "{:x}\r\n{event}\r\n", event.len())?;
        w.flush()
    };
    if reply.chat {
        send(&mut w, &reply.chunk(None, None, None).to_string())?;
    }
    for event in rx {
        match event {
            Event::Text(t) if t.is_empty() => {}
            // A failed write drops `rx`: the engine stops this generation at its next token.
            Event::Text(t) => send(&mut w, &reply.chunk(Some(&t), None, None).to_string())?,
            Event::Done(g) => {
                reply.log(&g);
                let finish = Reply::finish_reason(&g);
                send(&mut w, &reply.chunk(None, Some(finish), None).to_string())?;
                if include_usage {
                    let usage = api::usage(reply.n_prompt, reply.completion_tokens(&g));
                    send(&mut w, &reply.chunk(None, None, Some(usage)).to_string())?;
                }
                break;
            }
            Event::Failed(message) => {
                send(&mut w, &server_error(message).body().to_string())?;
                break;
            }
        }
    }
    send(&mut w, "[DONE]")?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// A JSON response, written whole. Every response closes its connection: tiny_http gives each
/// open connection a thread that blocks reading its next request, so idle keep-alive connections
/// held in clients' pools would pin those threads (and tiny_http does not let a `Response` set
/// `Connection`, hence the response is written here); a new loopback connection per request costs
/// nothing next to a generation.
fn write_json(
    request: Request,
    status: u16,
    body: &Value,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head += &format!("{k}: {v}\r\n");
    }
    head += &cors_headers();
    head += "\r\n";
    let mut w = request.into_writer();
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

/// The origin `--cors` allows, set once when the server starts (responses are written far from
/// the config).
static CORS_ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `Access-Control-Allow-Origin` (and `Vary: Origin`) lines when CORS is on, else nothing.
fn cors_headers() -> String {
    match CORS_ORIGIN.get() {
        Some(origin) => format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"),
        None => String::new(),
    }
}

/// A CORS preflight's answer: the methods and headers a browser may send.
fn preflight(request: Request) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
         Access-Control-Allow-Headers: Authorization, Content-Type\r\n\
         Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n{}\r\n",
        cors_headers()
    );
    let mut w = request.into_writer();
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// `/metrics`: Prometheus' text format.
fn metrics(
    request: Request,
    stats: &engine::Stats,
    capacity: usize,
    depth: usize,
) -> std::io::Result<()> {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut body = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
        body += &format!("# HELP qsparse_{name} {help}\n# TYPE qsparse_{name} {kind}\n");
        for (labels, v) in lines {
            body += &format!("qsparse_{name}{labels} {v}\n");
        }
    };
    let responses: Vec<(String, f64)> = stats
        .responses
        .lock()
        .map(|m| {
            m.iter()
                .map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n as f64))
                .collect()
        })
        .unwrap_or_default();
    metric(
        "http_responses_total",
        "counter",
        "HTTP responses by status.",
        &responses,
    );
    let one = |v: f64| [(String::new(), v)];
    let completed = load(&stats.completed) as f64;
    metric(
        "completions_total",
        "counter",
        "Generations finished.",
        &one(completed),
    );
    let cancelled = load(&stats.cancelled) as f64;
    let help = "Generations stopped because their client went away.";
    metric("cancelled_total", "counter", help, &one(cancelled));
    let prompt = load(&stats.prompt_tokens) as f64;
    metric(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens of generations.",
        &one(prompt),
    );
    let generated = load(&stats.completion_tokens) as f64;
    metric(
        "completion_tokens_total",
        "counter",
        "Tokens generated.",
        &one(generated),
    );
    let first = load(&stats.first_token_us) as f64 / 1e6;
    let help = "Time to the first token (prompt evaluation), summed over generations.";
    metric(
        "time_to_first_token_seconds_total",
        "counter",
        help,
        &one(first),
    );
    let decode = load(&stats.decode_us) as f64 / 1e6;
    metric(
        "decode_seconds_total",
        "counter",
        "Time spent generating tokens.",
        &one(decode),
    );
    let help = "Requests queued or generating.";
    metric("queue_depth", "gauge", help, &one(depth as f64));
    let help = "Requests that may wait while one generates.";
    metric("queue_capacity", "gauge", help, &one(capacity as f64));
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n",
        body.len(),
        cors_headers()
    );
    let mut w = request.into_writer();
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn respond(request: Request, status: u16, body: &Value) -> std::io::Result<()> {
    write_json(request, status, body, &[])
}

fn respond_error(request: Request, e: &ApiError) -> std::io::Result<()> {
    respond(request, e.status, &e.body())
}
