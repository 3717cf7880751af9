//! Chat templates: the builtin prompt formats, resolution of a recipe's
//! `chat_template:` value, and rendering with minijinja the way Hugging Face
//! `apply_chat_template` does (`trim_blocks`, `lstrip_blocks`, `bos_token`,
//! `eos_token`, `add_generation_prompt`, `raise_exception`).
//!
//! A template is validated by rendering a sample conversation before it is
//! written anywhere, so a typo fails the build, not the first chat request.
//!
//! The builtins render a conversation (system S, user U1, assistant A1, user
//! U2, generation prompt) as follows, with `bos_token` `<s>` and `eos_token`
//! `</s>` (`\n` is a newline; the tests pin every byte):
//!
//! | name | text |
//! |---|---|
//! | `chatml` | `<\|im_start\|>system\nS<\|im_end\|>\n<\|im_start\|>user\nU1<\|im_end\|>\n<\|im_start\|>assistant\nA1<\|im_end\|>\n<\|im_start\|>user\nU2<\|im_end\|>\n<\|im_start\|>assistant\n` |
//! | `llama2` | `<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]` |
//! | `llama3` | `<\|begin_of_text\|><\|start_header_id\|>system<\|end_header_id\|>\n\nS<\|eot_id\|>` … `<\|start_header_id\|>assistant<\|end_header_id\|>\n\n` |
//! | `mistral` | `<s>[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]` |
//! | `alpaca` | `S\n\n### Instruction:\nU1\n\n### Response:\nA1</s>\n\n### Instruction:\nU2\n\n### Response:\n` |
//! | `vicuna` | `S USER: U1 ASSISTANT: A1</s>USER: U2 ASSISTANT:` |
//! | `orca-vicuna` | `SYSTEM: S\nUSER: U1\nASSISTANT: A1</s>\nUSER: U2\nASSISTANT:` |

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State};

/// The builtin templates by name. The text each renders for a two-turn
/// conversation is pinned by the tests at the bottom of this file.
pub const BUILTINS: &[(&str, &str)] = &[
    ("chatml", CHATML),
    ("llama2", LLAMA2),
    ("llama3", LLAMA3),
    ("mistral", MISTRAL),
    ("alpaca", ALPACA),
    ("vicuna", VICUNA),
    ("orca-vicuna", ORCA_VICUNA),
];

/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 2 chat: `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>`.
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{% if message['role'] == 'user' %}{% if loop.first and system %}{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% else %}{{ raise_exception('llama2 template: unexpected role ' + message['role']) }}{% endif %}{% endfor %}";

/// Llama 3 instruct: header-delimited turns ending in `<|eot_id|>`.
const LLAMA3: &str = "{{ '<|begin_of_text|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Mistral instruct: `<s>[INST] {user} [/INST]{assistant}</s>`; a system
/// message is prepended to the first user turn.
const MISTRAL: &str = "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}{{ bos_token }}{% for message in turns %}{% if message['role'] == 'user' %}{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('mistral template: unexpected role ' + message['role']) }}{% endif %}{% endfor %}";

/// Alpaca: `{system}\n\n### Instruction:\n{user}\n\n### Response:\n{assistant}</s>`.
const ALPACA: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}";

/// Vicuna v1.1: `{system} USER: {user} ASSISTANT: {assistant}</s>`.
const VICUNA: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// Orca-Vicuna, the seed merge's format: `SYSTEM: {system}\nUSER: {prompt}\nASSISTANT:`.
const ORCA_VICUNA: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{ 'SYSTEM: ' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// The special-token strings and flags a template sees besides the messages.
#[derive(Debug, Clone)]
pub struct RenderOptions<'a> {
    /// `bos_token` (e.g. `<s>`).
    pub bos_token: &'a str,
    /// `eos_token` (e.g. `</s>`).
    pub eos_token: &'a str,
    /// Append the opening of an assistant turn.
    pub add_generation_prompt: bool,
}

impl Default for RenderOptions<'_> {
    fn default() -> Self {
        RenderOptions {
            bos_token: "<s>",
            eos_token: "</s>",
            add_generation_prompt: true,
        }
    }
}

/// The conversation used to validate templates and to show a prompt format:
/// a system message and two user turns with one assistant answer between.
pub fn sample_conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "Hello!"),
        Message::new("assistant", "Hi, how can I help?"),
        Message::new("user", "What is 2+2?"),
    ]
}

/// The builtin template called `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The builtin name of a template text, if it is exactly a builtin.
pub fn builtin_name(template: &str) -> Option<&'static str> {
    BUILTINS
        .iter()
        .find(|(_, t)| *t == template)
        .map(|(n, _)| *n)
}

/// Turns a recipe's `chat_template:` value into Jinja text: a builtin name, or
/// a literal template (anything containing `{{` or `{%`). The result is
/// validated by rendering [`sample_conversation`].
pub fn resolve_template(name_or_jinja: &str) -> Result<String> {
    let text = match builtin(name_or_jinja.trim()) {
        Some(t) => t.to_owned(),
        None if name_or_jinja.contains("{{") || name_or_jinja.contains("{%") => {
            name_or_jinja.to_owned()
        }
        None => {
            let names: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
            let hint = crate::syntax::diag::did_you_mean(name_or_jinja, names.iter().copied())
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            bail!(
                "unknown chat template `{name_or_jinja}`; {hint}builtins are {}, \
                 or write a Jinja template",
                names.join(", ")
            );
        }
    };
    validate(&text)?;
    Ok(text)
}

/// Checks that `template` compiles and renders [`sample_conversation`] (or,
/// for templates that refuse system messages, the conversation without it).
/// Returns the rendered sample.
pub fn validate(template: &str) -> Result<String> {
    let opts = RenderOptions::default();
    let conversation = sample_conversation();
    match render(template, &conversation, &opts) {
        Ok(text) => Ok(text),
        Err(with_system) => render(template, &conversation[1..], &opts)
            .map_err(|_| with_system)
            .context("chat template does not render a sample conversation"),
    }
}

/// Renders `messages` with `template` as Hugging Face's `apply_chat_template`
/// would.
pub fn render(template: &str, messages: &[Message], opts: &RenderOptions) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.set_unknown_method_callback(python_string_methods);
    env.add_template("chat_template", template)
        .map_err(|e| anyhow!("chat template does not compile: {e:#}"))?;
    let tmpl = env.get_template("chat_template")?;
    tmpl.render(minijinja::context! {
        messages => messages,
        bos_token => opts.bos_token,
        eos_token => opts.eos_token,
        add_generation_prompt => opts.add_generation_prompt,
    })
    .map_err(|e| anyhow!("chat template failed to render: {e:#}"))
}

/// The `<|...|>` markers a template writes literally (`<|im_start|>`,
/// `<|eot_id|>`), in order of first use: each should be a single token of
/// the tokenizer the template ships with, or the model sees it as plain text.
pub fn literal_markers(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("<|") {
        let Some(len) = rest[start..].find("|>") else {
            break;
        };
        let marker = &rest[start..start + len + 2];
        if !out.iter().any(|m| m == marker) {
            out.push(marker.to_owned());
        }
        rest = &rest[start + len + 2..];
    }
    out
}

/// The Python `str` methods that Hugging Face templates commonly call
/// (`.strip()`, `.startswith(...)`, ...), which Jinja2 provides and minijinja
/// does not.
fn python_string_methods(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let unknown = || {
        Error::new(
            ErrorKind::UnknownMethod,
            format!("no method `{method}` on {}", value.kind()),
        )
    };
    let Some(s) = value.as_str() else {
        return Err(unknown());
    };
    let arg = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
    Ok(match method {
        "strip" => Value::from(s.trim()),
        "lstrip" => Value::from(s.trim_start()),
        "rstrip" => Value::from(s.trim_end()),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "startswith" => Value::from(s.starts_with(arg(0))),
        "endswith" => Value::from(s.ends_with(arg(0))),
        _ => return Err(unknown()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_turns(name: &str) -> String {
        render(
            builtin(name).unwrap(),
            &sample_conversation(),
            &RenderOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn chatml_renders_documented_text() {
        assert_eq!(
            two_turns("chatml"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHello!<|im_end|>\n\
             <|im_start|>assistant\nHi, how can I help?<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama2_renders_documented_text() {
        assert_eq!(
            two_turns("llama2"),
            "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST] \
             Hi, how can I help? </s><s>[INST] What is 2+2? [/INST]"
        );
    }

    #[test]
    fn llama3_renders_documented_text() {
        assert_eq!(
            two_turns("llama3"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             You are a helpful assistant.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHi, how can I help?<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn mistral_renders_documented_text() {
        assert_eq!(
            two_turns("mistral"),
            "<s>[INST] You are a helpful assistant.\n\nHello! [/INST]Hi, how can I help?</s>\
             [INST] What is 2+2? [/INST]"
        );
    }

    #[test]
    fn alpaca_renders_documented_text() {
        assert_eq!(
            two_turns("alpaca"),
            "You are a helpful assistant.\n\n### Instruction:\nHello!\n\n\
             ### Response:\nHi, how can I help?</s>\n\n\
             ### Instruction:\nWhat is 2+2?\n\n### Response:\n"
        );
    }

    #[test]
    fn vicuna_renders_documented_text() {
        assert_eq!(
            two_turns("vicuna"),
            "You are a helpful assistant. USER: Hello! ASSISTANT: Hi, how can I help?</s>\
             USER: What is 2+2? ASSISTANT:"
        );
    }

    #[test]
    fn orca_vicuna_renders_documented_text() {
        assert_eq!(
            two_turns("orca-vicuna"),
            "SYSTEM: You are a helpful assistant.\nUSER: Hello!\n\
             ASSISTANT: Hi, how can I help?</s>\nUSER: What is 2+2?\nASSISTANT:"
        );
        let one_turn = render(
            ORCA_VICUNA,
            &[
                Message::new("system", "{system}"),
                Message::new("user", "{prompt}"),
            ],
            &RenderOptions::default(),
        )
        .unwrap();
        assert_eq!(one_turn, "SYSTEM: {system}\nUSER: {prompt}\nASSISTANT:");
    }

    #[test]
    fn literal_markers_are_listed_once_in_order() {
        assert_eq!(literal_markers(CHATML), ["<|im_start|>", "<|im_end|>"]);
        assert_eq!(
            literal_markers(LLAMA3),
            [
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>"
            ]
        );
        assert!(literal_markers(ORCA_VICUNA).is_empty());
    }

    #[test]
    fn every_builtin_resolves_and_names_itself() {
        for (name, text) in BUILTINS {
            assert_eq!(resolve_template(name).unwrap(), *text);
            assert_eq!(builtin_name(text), Some(*name));
        }
    }

    #[test]
    fn literal_jinja_with_python_methods_is_accepted() {
        let t = "{% for m in messages %}{{ m['role'].upper() }}: {{ m['content'].strip() }}\n{% endfor %}";
        let text = resolve_template(t).unwrap();
        let out = render(
            &text,
            &[Message::new("user", "  hi  ")],
            &RenderOptions::default(),
        )
        .unwrap();
        assert_eq!(out, "USER: hi\n");
    }

    #[test]
    fn template_refusing_system_messages_still_validates() {
        let t = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'] }}{% endfor %}";
        assert_eq!(
            validate(t).unwrap(),
            "Hello!Hi, how can I help?What is 2+2?"
        );
    }

    #[test]
    fn unknown_name_and_broken_jinja_are_refused() {
        let err = resolve_template("chatlm").unwrap_err().to_string();
        assert!(err.contains("did you mean `chatml`"), "{err}");
        let err = format!(
            "{:#}",
            resolve_template("{% for m in messages %}").unwrap_err()
        );
        assert!(err.contains("does not compile"), "{err}");
        let err = format!(
            "{:#}",
            resolve_template("{{ messages[0].nope() }}").unwrap_err()
        );
        assert!(err.contains("failed to render"), "{err}");
    }
}
