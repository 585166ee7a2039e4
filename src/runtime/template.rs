//! Chat formatting: the model's own chat template (`tokenizer.chat_template`, Jinja) rendered with
//! minijinja and Python-compatible string methods; ChatML when a model has no template.

use minijinja::{context, Environment};
use serde::Serialize;

use crate::gguf::GgufFile;

/// ChatML, the fallback for models without a template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// A chat template that cannot be read or rendered, and why.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The date `strftime_now` prints (None: today's, in UTC).
    date: Option<Date>,
    /// Leave out a BOS the template writes first (the tokenizer adds one).
    strip_bos: bool,
    /// Whether the file had no template and ChatML is used.
    pub fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// The template of `file` (ChatML if it has none). `bos`/`eos` are the token texts templates
    /// may refer to.
    pub fn from_gguf(file: &GgufFile, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        let (source, fallback) = match file.get("tokenizer.chat_template").and_then(|v| v.as_str())
        {
            Some(s) => (s.to_string(), false),
            None => (CHATML.to_string(), true),
        };
        Self::new(source, bos, eos, fallback)
    }

    /// A template from its Jinja `source`.
    pub fn from_source(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        Self::new(source.to_string(), bos, eos, false)
    }

    /// The same template printing `date` wherever it asks for today's (`strftime_now`), so a
    /// rendering can be compared with another's.
    pub fn on_date(mut self, date: Date) -> ChatTemplate {
        self.date = Some(date);
        self
    }

    /// The same template leaving out a BOS text it writes first when `strip` (for a tokenizer
    /// that puts BOS first itself: llama.cpp's rule, so that the prompt has one BOS, not two).
    pub fn without_leading_bos(mut self, strip: bool) -> ChatTemplate {
        self.strip_bos = strip;
        self
    }

    fn new(
        source: String,
        bos: &str,
        eos: &str,
        fallback: bool,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        // As Hugging Face renders chat templates (jinja2 with trim_blocks and lstrip_blocks).
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError(e.to_string()))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned("chat", source)
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            date: None,
            strip_bos: false,
            fallback,
        })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opener when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        // Llama 3.2's template prints today's date through `strftime_now(format)`, which Hugging
        // Face's renderer provides.
        let date = self.date.unwrap_or_else(Date::today);
        let mut env = self.env.clone();
        env.add_function("strftime_now", move |format: String| {
            date.format(&format)
                .map_err(|what| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, what))
        });
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        let text = tmpl
            .render(context! {
                messages => messages.iter().map(|m| context! { role => m.role.clone(), content => m.content.clone() }).collect::<Vec<_>>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.clone(),
                eos_token => self.eos.clone(),
            })
            .map_err(|e| TemplateError(e.to_string()))?;
        match text.strip_prefix(self.bos.as_str()) {
            Some(rest) if self.strip_bos && !self.bos.is_empty() => Ok(rest.to_string()),
            _ => Ok(text),
        }
    }
}

/// A calendar date, for `strftime_now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// The year.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
}

impl Date {
    /// Today in UTC.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Date::from_days((secs / 86_400) as i64)
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's civil-from-days).
    fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day }
    }

    /// The date in a strftime `format` (%d %m %Y %y %b %B %%: what chat templates use).
    pub fn format(&self, format: &str) -> Result<String, String> {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        let month = MONTHS[(self.month as usize).clamp(1, 12) - 1];
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&format!("{:02}", self.day)),
                Some('m') => out.push_str(&format!("{:02}", self.month)),
                Some('Y') => out.push_str(&self.year.to_string()),
                Some('y') => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                Some('b') => out.push_str(&month[..3]),
                Some('B') => out.push_str(month),
                Some('%') => out.push('%'),
                other => {
                    return Err(format!(
                        "strftime_now: %{} is not supported",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_strftime() {
        let d = Date::from_days(20_794);
        assert_eq!(
            d,
            Date {
                year: 2026,
                month: 12,
                day: 7
            }
        );
        assert_eq!(d.format("%d %b %Y").unwrap(), "07 Dec 2026");
        assert_eq!(
            d.format("%Y-%m-%d (%B, %y) 100%%").unwrap(),
            "2026-12-07 (December, 26) 100%"
        );
        assert_eq!(
            Date::from_days(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        assert_eq!(
            Date::from_days(11_016),
            Date {
                year: 2000,
                month: 2,
                day: 29
            }
        );
        assert!(d.format("%H").is_err());
    }

    #[test]
    fn chatml_fallback_renders() {
        let t = ChatTemplate::new(CHATML.to_string(), "", "", true).unwrap();
        let s = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{{ messages[0]['content'].strip().upper() }}".into(),
            "",
            "",
            false,
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
    }
}
