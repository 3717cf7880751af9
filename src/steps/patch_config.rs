//! `patch_config`: set or remove keys in a model's config.json,
//! generation_config.json and tokenizer_config.json.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value as Json};

use super::tokenizer::capped_max_length;
use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::fs::files::{link_tree, read_json, write_json};
use crate::hf::config::{ConfigFile, RopeScaling};
use crate::syntax::fields::{expect_str, Fields};
use crate::syntax::yaml::{Node, Value};

/// Edits to one JSON file of the model folder.
#[derive(Debug, Clone, Default, PartialEq)]
struct FileEdits {
    /// Dotted path → new value.
    set: BTreeMap<String, Json>,
    /// Dotted paths to remove.
    unset: Vec<String>,
}

/// A `patch_config` step: the model folder with edited JSON configuration files;
/// the weights pass through as hardlinks.
#[derive(Debug, Clone)]
pub struct PatchConfig {
    model: InputRef,
    /// File name → edits; `config.json` from top-level `set`/`unset`.
    files: BTreeMap<&'static str, FileEdits>,
}

const FILE_KEYS: [(&str, &str); 2] = [
    ("generation_config", "generation_config.json"),
    ("tokenizer_config", "tokenizer_config.json"),
];

fn parse_edits(
    node: &Node,
    cx: &ParseContext,
    what: String,
) -> Result<FileEdits, crate::syntax::diag::RecipeError> {
    let f = Fields::new(cx.diag, node, what, &["set", "unset"])?;
    f.finish()?;
    parse_edit_fields(&f, cx)
}

fn parse_edit_fields(
    f: &Fields,
    cx: &ParseContext,
) -> Result<FileEdits, crate::syntax::diag::RecipeError> {
    let mut edits = FileEdits::default();
    if let Some(set) = f.opt("set") {
        let Some(entries) = set.as_map() else {
            return Err(cx
                .diag
                .error(set.span, "`set` must be a mapping of dotted keys to values"));
        };
        for (k, v) in entries {
            let key = expect_str(cx.diag, k, "set")?;
            refuse_non_finite(v, cx, &key)?;
            edits.set.insert(key, v.to_json());
        }
    }
    edits.unset = f.opt_str_list("unset")?;
    Ok(edits)
}

/// Refuses `.inf`, `.nan` and numbers too large for a double (`1e400`) in
/// a value to set: JSON cannot hold them, and no config value means them.
fn refuse_non_finite(
    node: &Node,
    cx: &ParseContext,
    key: &str,
) -> Result<(), crate::syntax::diag::RecipeError> {
    match &node.value {
        Value::Float(f) if !f.is_finite() => Err(cx
            .diag
            .error(
                node.span,
                format!("`set.{key}` is {f}, which no JSON config can hold"),
            )
            .with_help("write a finite number (an overflowing literal like 1e400 reads as inf)")),
        Value::Seq(items) => items.iter().try_for_each(|n| refuse_non_finite(n, cx, key)),
        Value::Map(entries) => entries
            .iter()
            .try_for_each(|(_, n)| refuse_non_finite(n, cx, key)),
        _ => Ok(()),
    }
}

/// Checks a patched config.json against the architecture it describes: a
/// config yibuild's reader ([`crate::hf::config`]) understood before the patch
/// must still be understood after it (Gemma's soft-capping numbers or null,
/// `layer_types` the length of the model, longrope factor lists of `rotary
/// dims / 2`, positive windows), and the patch must not change what the
/// model means without saying so: a longrope (Phi-3) model keeps its
/// `original_max_position_embeddings` unless the patch sets it, and Qwen's
/// `use_sliding_window: true` needs a window and a layer that slides.
/// `sets_key` tells whether the patch writes a key (by its last component).
fn check_patched(
    path: &Path,
    before: &Json,
    after: &Json,
    sets_key: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let Ok(old) = ConfigFile::from_json(path, before.clone()).and_then(|c| c.decoder()) else {
        return Ok(()); // an architecture the reader does not know: type checks only
    };
    let new = ConfigFile::from_json(path, after.clone())
        .and_then(|c| c.decoder())
        .map_err(|e| {
            anyhow::anyhow!(
                "the patched config.json is not valid for {}: {e:#}",
                old.architecture
            )
        })?;
    if let (
        RopeScaling::Longrope {
            original_max_positions: was,
            ..
        },
        RopeScaling::Longrope {
            original_max_positions: now,
            ..
        },
    ) = (&old.rope_scaling, &new.rope_scaling)
    {
        if was != now && !sets_key("original_max_position_embeddings") {
            bail!(
                "{}: the patch changes the longrope context the model was trained on \
                 (`original_max_position_embeddings`) from {was} to {now}; a longer context \
                 (`max_position_embeddings`) must keep it: write \
                 `original_max_position_embeddings: {was}` too",
                old.architecture
            );
        }
    }
    if new.use_sliding_window && new.architecture.starts_with("Qwen") {
        let layers = new.layers;
        // The reader's window is `None` when no layer slides: read the key.
        let window = after["sliding_window"].as_u64().filter(|w| *w > 0);
        match (window, new.max_window_layers) {
            (None, _) => bail!(
                "{}: `use_sliding_window` is true but `sliding_window` is not a window size",
                new.architecture
            ),
            (_, Some(m)) if m >= layers => bail!(
                "{}: `use_sliding_window` is true but `max_window_layers` ({m}) is not below \
                 `num_hidden_layers` ({layers}): no layer would slide",
                new.architecture
            ),
            _ => {}
        }
    }
    Ok(())
}

impl PatchConfig {
    /// Whether the patch of config.json sets or removes a key whose last
    /// component is `key`.
    fn touches_config_key(&self, key: &str) -> bool {
        self.files.get("config.json").is_some_and(|e| {
            e.set
                .keys()
                .chain(&e.unset)
                .any(|k| k.rsplit('.').next() == Some(key))
        })
    }

    /// Parses `{model, set, unset, generation_config: {set, unset}, tokenizer_config: {set, unset}}`.
    pub fn parse(
        node: &Node,
        cx: &ParseContext,
    ) -> Result<PatchConfig, crate::syntax::diag::RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("patch_config step `{}`", cx.step),
            &[
                "model",
                "set",
                "unset",
                "generation_config",
                "tokenizer_config",
            ],
        )?;
        f.finish()?;
        let model = input_ref(cx.diag, f.req("model")?, "model")?;
        let mut files = BTreeMap::new();
        let top = parse_edit_fields(&f, cx)?;
        if top != FileEdits::default() {
            files.insert("config.json", top);
        }
        for (key, file) in FILE_KEYS {
            if let Some(n) = f.opt(key) {
                files.insert(
                    file,
                    parse_edits(n, cx, format!("`{key}` of step `{}`", cx.step))?,
                );
            }
        }
        if files.is_empty() {
            return Err(cx.diag.error(
                node.span,
                format!(
                    "patch_config step `{}` changes nothing: add `set` or `unset`",
                    cx.step
                ),
            ));
        }
        Ok(PatchConfig { model, files })
    }
}

/// Sets `path` (dotted) in `doc`, requiring the new value to have the type of the
/// value it replaces (an integer may replace a float, not the reverse).
fn set_path(doc: &mut Json, path: &str, value: &Json) -> Result<()> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = doc;
    for part in parts {
        let obj = cur.as_object_mut().ok_or_else(|| {
            anyhow::anyhow!("`{path}`: `{part}` is inside a value that is not an object")
        })?;
        cur = obj.entry(part).or_insert_with(|| json!({}));
    }
    let Some(obj) = cur.as_object_mut() else {
        bail!("`{path}`: the parent of `{last}` is not an object");
    };
    if let Some(old) = obj.get(last) {
        let compatible = match (old, value) {
            (Json::Null, _) | (_, Json::Null) => true,
            (Json::Number(o), Json::Number(n)) => {
                o.is_f64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            (Json::Bool(_), Json::Bool(_)) | (Json::String(_), Json::String(_)) => true,
            (Json::Array(_), Json::Array(_)) | (Json::Object(_), Json::Object(_)) => true,
            _ => false,
        };
        if !compatible {
            bail!(
                "`{path}` is {old} ({}), cannot set it to {value} ({})",
                json_type(old),
                json_type(value)
            );
        }
    }
    let value = match (obj.get(last), value) {
        (old, Json::Number(n)) => Json::Number(same_kind_of_number(old, n)),
        (_, other) => other.clone(),
    };
    obj.insert(last.to_owned(), value);
    Ok(())
}

/// `n` written as the kind of number the file already has at that place
/// (`32768.0` over an integer is `32768`, `5000000` over a float is
/// `5000000.0`), and as an integer when whole and new. Step keys treat `1` and
/// `1.0` as one value, so the bytes written must not depend on the spelling.
fn same_kind_of_number(old: Option<&Json>, n: &serde_json::Number) -> serde_json::Number {
    let old_is_float = matches!(old, Some(Json::Number(o)) if o.is_f64());
    let whole = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15);
    match (old_is_float, whole) {
        (true, _) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .unwrap_or_else(|| n.clone()),
        (false, Some(f)) => serde_json::Number::from(f as i64),
        (false, None) => n.clone(),
    }
}

fn unset_path(doc: &mut Json, path: &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = doc;
    for part in parts {
        match cur.get_mut(part) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.shift_remove(last);
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

impl PatchConfig {
    /// When this step sets `max_position_embeddings` and leaves
    /// `model_max_length` alone, lowers the tokenizer's `model_max_length` to
    /// the new context length if it is above it, as transformers would
    /// otherwise let a tokenizer produce inputs the model cannot take.
    fn follow_context_length(&self, ctx: &StepContext, src: &std::path::Path) -> Result<()> {
        let sets = |file: &str, key: &str| {
            self.files
                .get(file)
                .is_some_and(|e| e.set.contains_key(key) || e.unset.iter().any(|k| k == key))
        };
        if !sets("config.json", "max_position_embeddings")
            || sets("tokenizer_config.json", "model_max_length")
        {
            return Ok(());
        }
        let out = ctx.out_dir.join("tokenizer_config.json");
        let current = if self.files.contains_key("tokenizer_config.json") {
            out.clone()
        } else {
            src.join("tokenizer_config.json")
        };
        if !current.is_file() {
            return Ok(());
        }
        let config = read_json(&ctx.out_dir.join("config.json"))?;
        if let Some(capped) = capped_max_length(&read_json(&current)?, &config) {
            (ctx.log)(&format!(
                "tokenizer_config.json: model_max_length lowered to the patched \
                 max_position_embeddings ({})",
                capped["model_max_length"]
            ));
            write_json(&out, &capped)?;
        }
        Ok(())
    }
}

impl Step for PatchConfig {
    fn kind(&self) -> &'static str {
        "patch_config"
    }

    fn version(&self) -> u32 {
        // 2: numbers keep the kind the file has; model_max_length follows a
        // patched max_position_embeddings.
        2
    }

    fn inputs(&self) -> Vec<InputRef> {
        vec![self.model.clone()]
    }

    fn params(&self) -> Json {
        let files: serde_json::Map<String, Json> = self
            .files
            .iter()
            .map(|(file, e)| (file.to_string(), json!({"set": e.set, "unset": e.unset})))
            .collect();
        json!({ "files": files })
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let src = &ctx.input(&self.model.name)?.path;
        link_tree(src, ctx.out_dir, &|rel| self.files.contains_key(rel))?;
        for (file, edits) in &self.files {
            let path = src.join(file);
            if !path.is_file() {
                bail!("model `{}` has no {file} to patch", self.model.name);
            }
            let mut doc = read_json(&path)?;
            for (key, value) in &edits.set {
                set_path(&mut doc, key, value).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            }
            for key in &edits.unset {
                unset_path(&mut doc, key);
            }
            if *file == "config.json" {
                check_patched(&path, &read_json(&path)?, &doc, &|k| {
                    self.touches_config_key(k)
                })?;
            }
            write_json(&ctx.out_dir.join(file), &doc)?;
        }
        self.follow_context_length(ctx, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_the_kind_the_file_has() {
        // `1` and `1.0` are one key, so they must write the same bytes.
        let mut doc = json!({"max_position_embeddings": 200000, "rope_theta": 5000000.0});
        for (key, value, written) in [
            ("max_position_embeddings", json!(32768.0), "32768"),
            ("max_position_embeddings", json!(32768), "32768"),
            ("rope_theta", json!(10000), "10000.0"),
            ("rope_theta", json!(10000.0), "10000.0"),
            ("new_key", json!(3.0), "3"),
            ("new_key", json!(3), "3"),
            ("other", json!(0.25), "0.25"),
        ] {
            set_path(&mut doc, key, &value).unwrap();
            assert_eq!(doc[key].to_string(), written, "{key} = {value}");
        }
    }

    #[test]
    fn set_checks_types() {
        let mut doc =
            json!({"max_position_embeddings": 200000, "rope_theta": 5000000.0, "name": "x"});
        set_path(&mut doc, "max_position_embeddings", &json!(32768)).unwrap();
        assert_eq!(doc["max_position_embeddings"], 32768);
        set_path(&mut doc, "rope_theta", &json!(10000)).unwrap();
        let err = set_path(&mut doc, "max_position_embeddings", &json!("big")).unwrap_err();
        assert!(
            err.to_string().contains("cannot set it to \"big\""),
            "{err}"
        );
        let err = set_path(&mut doc, "max_position_embeddings", &json!(1.5)).unwrap_err();
        assert!(err.to_string().contains("an integer"), "{err}");
        set_path(&mut doc, "rope_scaling.factor", &json!(2.0)).unwrap();
        assert_eq!(doc["rope_scaling"]["factor"].to_string(), "2");
        unset_path(&mut doc, "rope_scaling.factor");
        assert_eq!(doc["rope_scaling"], json!({}));
    }
}
