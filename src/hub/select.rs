//! Which files of a Hub repository a build reads: configuration, tokenizer and
//! generation files, the safetensors index and shards. Pickled weights, GGUF,
//! ONNX and other formats are never downloaded.

/// Whether a build needs the repository file at `path`.
pub fn needed(path: &str) -> bool {
    if path.contains('/') {
        // Sub-folders hold alternative formats (onnx/, gguf/, original/ ...).
        return false;
    }
    is_small(path) || path.ends_with(".safetensors")
}

/// Whether `path` is a small metadata file fetched before any weights: JSON
/// configuration and tokenizer files, SentencePiece and vocabulary files.
pub fn is_small(path: &str) -> bool {
    const EXACT: &[&str] = &["tokenizer.model", "vocab.txt", "merges.txt"];
    !path.contains('/')
        && !path.ends_with(".bin.index.json")
        && (path.ends_with(".json") || EXACT.contains(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_configs_tokenizers_and_safetensors_only() {
        for p in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "tokenizer.model",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
        ] {
            assert!(needed(p), "{p}");
        }
        for p in [
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "model.gguf",
            "onnx/model.onnx",
            "original/consolidated.00.pth",
            "README.md",
            ".gitattributes",
            "training_args.bin",
        ] {
            assert!(!needed(p), "{p}");
        }
        assert!(is_small("config.json") && !is_small("model.safetensors"));
    }
}
