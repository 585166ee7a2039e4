//! `qsparse chat`: talk with a model in the terminal. Multi-turn through the model's chat
//! template, the KV cache reused across turns, replies streamed; Ctrl-C stops a reply, Ctrl-D or
//! `/exit` quits, slash commands change settings. With stdin not a terminal, each input line is
//! one message and each reply one block of plain output, so it can be scripted.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use super::common::{
    choose_profile, context_length, parse_sparsity, read_profile, write_json_file, LoadArgs,
    SamplingArgs,
};
use crate::model::{Model, Select, Sparsity};
use crate::runtime::conversation::{Conversation, Transcript};
use crate::runtime::session::{Finish, GenerateParams, Session};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: LoadArgs,
    /// Q-Sparse ratio S in [0, 1) for every projection (0 = dense); `/sparsity` changes it.
    /// Default: 0, or the profile a packed file holds (`pack --sparsity-profile`).
    #[arg(long, value_parser = parse_sparsity)]
    sparsity: Option<f32>,
    /// Ratios from `qsparse calibrate` (a JSON profile for this model file) in place of
    /// --sparsity; `/sparsity S` goes back to uniform ratios, `/sparsity FILE.json` loads another.
    #[arg(long, conflicts_with = "sparsity")]
    sparsity_profile: Option<std::path::PathBuf>,
    /// A system message that starts the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Longest reply, in tokens.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Context length in tokens (oldest turns are dropped when it fills); default: the model's,
    /// at most 4096.
    #[arg(long)]
    ctx: Option<usize>,
}

/// Set by Ctrl-C while a reply is being generated.
static STOP_REPLY: AtomicBool = AtomicBool::new(false);

const HELP: &str = "\
commands:
  /help            this list
  /reset           start over (keeps the system message)
  /sparsity [S]    show, or set, the Q-Sparse ratio, 0 <= S < 1 (0 = dense)
  /sparsity FILE   run with a calibrated profile (`qsparse calibrate`, a .json for this model)
  /stats           speed, active parameters and bytes per token of the last reply
  /system [TEXT]   show, or set, the system message and start over (`/system -` removes it)
  /save FILE       write the conversation as JSON
  /exit, /bye      quit (also Ctrl-D); Ctrl-C stops a reply
  \"\"\"              begin a message of several lines; end it with a line ending in \"\"\"";

pub fn run(args: Args) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let (model, tokenizer) = args.model.load_or_pull()?;
    let ctx = context_length(args.ctx, &model)?;
    let template = Conversation::template_for(&model, &tokenizer)?;
    if template.fallback {
        eprintln!("(the model has no chat template: using ChatML)");
    }
    let mut state = args.model.run_state(&model, ctx);
    let model_path = args.model.path()?;
    let source = args.sparsity_profile.as_ref().map_or_else(
        || "stored in the model".to_string(),
        |path| path.display().to_string(),
    );
    let profile = choose_profile(
        args.sparsity_profile.as_deref(),
        args.sparsity.is_some(),
        &model,
        &model_path,
    )?
    .map(|p| (p, source));
    let mut sparsity = args.sparsity.unwrap_or(0.0);
    if let Some((p, _)) = &profile {
        state.set_layer_ratios(Some(p.ratios()));
        state.set_select(p.select());
        sparsity = p.sparsity;
    }
    let session = Session::new(&model, &tokenizer, state);
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: args.sampling.config(),
        sparsity: Sparsity::uniform(sparsity),
        stop: Vec::new(),
        logprobs: None,
    };
    let mut chat = Chat {
        conv: Conversation::new(session, template, args.system.clone(), params),
        model_name: args.model.model.clone(),
        model: &model,
        model_path,
        select: args.model.select(),
        sparsity,
        profile: profile.map(|(_, source)| source),
        open_block: None,
    };

    if std::io::stdin().is_terminal() {
        eprintln!(
            "qsparse chat · {} ({} weights, {}) · /help for commands · Ctrl-C stops a reply · Ctrl-D quits",
            args.model.model,
            model.weights.format.name(),
            chat.sparsity_label()
        );
        interactive(&mut chat)
    } else {
        piped(&mut chat)
    }
}

struct Chat<'m> {
    conv: Conversation<'m>,
    model_name: String,
    model: &'m Model,
    /// The model's file (a profile must be made for it).
    model_path: std::path::PathBuf,
    /// `--select`: how uniform ratios select (a profile brings its own).
    select: Select,
    /// The uniform ratio S, or the one whose bytes the profile reads.
    sparsity: f32,
    /// The calibrated profile in use: where it came from.
    profile: Option<String>,
    /// The lines of a message begun with `"""` and not yet ended.
    open_block: Option<String>,
}

/// Opens and closes a message of several lines (as in ollama).
const BLOCK: &str = "\"\"\"";

/// The terminal's echo turned off for this value's lifetime (a no-op when stdin is not a
/// terminal, or not on Unix): what is typed while a reply streams stays in the input queue
/// instead of appearing inside the reply.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        #[cfg(unix)]
        {
            use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
            let stdin = std::io::stdin();
            let saved = stdin
                .is_terminal()
                .then(|| tcgetattr(&stdin).ok())
                .flatten();
            if let Some(t) = &saved {
                let mut quiet = t.clone();
                quiet.local_flags.remove(LocalFlags::ECHO);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
            }
            EchoOff { saved }
        }
        #[cfg(not(unix))]
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// What the loop does after a line.
enum Next {
    Continue,
    Quit,
}

fn interactive(chat: &mut Chat) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new().context("cannot start line editing")?;
    // After the editor: it installs a SIGINT handler of its own for its lifetime, and ours must
    // win (in raw mode, while reading a line, Ctrl-C is a key, not a signal).
    ctrlc::set_handler(|| STOP_REPLY.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    loop {
        let prompt = if chat.open_block.is_some() {
            "... "
        } else {
            "> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if let Next::Quit = chat.line(&line)? {
                    return Ok(());
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /exit quits)");
            }
            Err(rustyline::error::ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e).context("cannot read the terminal"),
        }
    }
}

fn piped(chat: &mut Chat) -> Result<()> {
    let stdin = std::io::stdin().lock();
    for line in stdin.lines() {
        let line = line.context("cannot read stdin (is it UTF-8?)")?;
        if let Next::Quit = chat.line(&line)? {
            return Ok(());
        }
    }
    // Input that ends inside a `"""` block: what it holds is the last message.
    if let Some(block) = chat.open_block.take() {
        chat.say_unless_empty(&block)?;
    }
    Ok(())
}

impl Chat<'_> {
    /// Handle one line of input: a slash command, a message, or part of a `"""` block.
    fn line(&mut self, line: &str) -> Result<Next> {
        if let Some(block) = &mut self.open_block {
            match line.trim_end().strip_suffix(BLOCK) {
                Some(last) => {
                    block.push_str(last);
                    let message = std::mem::take(block);
                    self.open_block = None;
                    self.say_unless_empty(&message)?;
                }
                None => {
                    block.push_str(line);
                    block.push('\n');
                }
            }
            return Ok(Next::Continue);
        }
        if let Some(first) = line.trim_start().strip_prefix(BLOCK) {
            match first.trim_end().strip_suffix(BLOCK) {
                // `"""one line"""`.
                Some(whole) => self.say_unless_empty(whole)?,
                None => self.open_block = Some(format!("{first}\n")),
            }
            return Ok(Next::Continue);
        }
        let text = line.trim();
        if text.is_empty() {
            return Ok(Next::Continue);
        }
        if let Some(cmd) = text.strip_prefix('/') {
            return self.command(cmd);
        }
        self.say(text)?;
        Ok(Next::Continue)
    }

    fn say_unless_empty(&mut self, text: &str) -> Result<()> {
        match text.trim() {
            "" => Ok(()),
            t => self.say(t),
        }
    }

    fn say(&mut self, text: &str) -> Result<()> {
        STOP_REPLY.store(false, Ordering::SeqCst);
        // Keys pressed while the reply streams must not land inside it.
        let _echo = EchoOff::new();
        let mut out = std::io::stdout().lock();
        let mut write_error = None;
        let reply = self.conv.reply(text, &mut |piece| {
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                write_error = Some(e);
                return false;
            }
            !STOP_REPLY.swap(false, Ordering::SeqCst)
        });
        if let Some(e) = write_error {
            return Err(e.into());
        }
        match reply {
            Ok(r) => {
                writeln!(out)?;
                out.flush()?;
                if r.dropped_messages > 0 {
                    eprintln!(
                        "(the context was full: the {} oldest messages were dropped)",
                        r.dropped_messages
                    );
                }
                let g = &r.generation;
                match g.finish {
                    Finish::Cancelled => eprintln!("(stopped)"),
                    Finish::Length if g.tokens.len() >= self.conv.params.max_tokens => {
                        eprintln!("(cut at --max-tokens {})", self.conv.params.max_tokens)
                    }
                    Finish::Length => eprintln!("(cut: the context is full)"),
                    Finish::Stop => {}
                }
            }
            // A message that cannot fit is the user's problem, not the end of the chat.
            Err(e) => eprintln!("error: {e}"),
        }
        Ok(())
    }

    fn command(&mut self, cmd: &str) -> Result<Next> {
        let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let rest = rest.trim();
        match name {
            "exit" | "quit" | "bye" => return Ok(Next::Quit),
            "help" => outln!("{HELP}"),
            "reset" => {
                self.conv.reset();
                outln!("(conversation cleared)");
            }
            "sparsity" if rest.is_empty() => outln!("({})", self.sparsity_label()),
            "sparsity" if rest.ends_with(".json") => {
                match read_profile(
                    Path::new(rest),
                    self.model.config.n_layers,
                    &self.model_path,
                ) {
                    Ok(p) => {
                        self.sparsity = p.sparsity;
                        self.profile = Some(rest.to_owned());
                        self.conv.params.sparsity = Sparsity::uniform(p.sparsity);
                        self.conv.set_selection(p.select(), Some(p.ratios()));
                        outln!("({})", self.sparsity_label());
                    }
                    Err(e) => outln!("/sparsity: {e:#}"),
                }
            }
            "sparsity" => match parse_sparsity(rest) {
                Ok(s) => {
                    self.sparsity = s;
                    self.profile = None;
                    self.conv.params.sparsity = Sparsity::uniform(s);
                    self.conv.set_selection(self.select, None);
                    outln!("({})", self.sparsity_label());
                }
                Err(e) => outln!("/sparsity: {e} (or name a profile, FILE.json)"),
            },
            "system" if rest.is_empty() => match &self.conv.system {
                Some(text) => outln!("(system message: {text})"),
                None => outln!("(no system message)"),
            },
            "system" => {
                self.conv.system = (rest != "-").then(|| rest.to_owned());
                self.conv.reset();
                outln!(
                    "(system message {}; conversation cleared)",
                    if rest == "-" { "removed" } else { "set" }
                );
            }
            "stats" => self.stats()?,
            "save" => {
                if rest.is_empty() {
                    outln!("/save needs a file name");
                } else {
                    match self.save(Path::new(rest)) {
                        Ok(()) => {
                            outln!("(saved {} messages to {rest})", self.conv.messages().len())
                        }
                        Err(e) => outln!("/save: {e:#}"),
                    }
                }
            }
            _ => outln!("unknown command /{name}; /help lists them"),
        }
        Ok(Next::Continue)
    }

    /// What `/sparsity` shows: the ratio, and the profile if one is in use.
    fn sparsity_label(&self) -> String {
        match &self.profile {
            Some(source) => format!(
                "sparsity profile {source}: per-layer ratios at the bytes of S = {}",
                self.sparsity
            ),
            None => format!(
                "sparsity {}: each projection keeps the top {:.0}% of its inputs",
                self.sparsity,
                100.0 * (1.0 - self.sparsity)
            ),
        }
    }

    fn stats(&self) -> Result<()> {
        let Some(g) = &self.conv.last else {
            outln!("(no reply yet)");
            return Ok(());
        };
        outln!(
            "last reply: {} tokens at {:.1} tok/s; prompt {} tokens ({} evaluated, {} reused from the cache) at {:.1} tok/s",
            g.tokens.len(),
            g.decode_tok_s(),
            g.prompt_tokens,
            g.evaluated_prompt_tokens,
            g.prompt_tokens - g.evaluated_prompt_tokens,
            g.prompt_tok_s()
        );
        outln!(
            "per token at S={}: {:.1}M active parameters, {:.1} MB of weights read; context {} of {} tokens",
            self.sparsity,
            g.active_params_per_token as f64 / 1e6,
            g.weight_bytes_per_token as f64 / 1e6,
            g.prompt_tokens + g.tokens.len(),
            self.conv.context_length()
        );
        Ok(())
    }

    /// The transcript as JSON, written to a temp file beside `path` and renamed into place.
    fn save(&self, path: &Path) -> Result<()> {
        let transcript = Transcript {
            model: &self.model_name,
            sparsity: self.sparsity,
            messages: self.conv.messages(),
        };
        write_json_file(path, &transcript)
    }
}
