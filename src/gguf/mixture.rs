//! llama-quantize's presets (`Q4_K_M`, ...) and its per-tensor type rules
//! (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`), for dense
//! Llama-family models: which tensors get more bits (attn_v, ffn_down, output,
//! token_embd) and the fallbacks for rows that 256 does not divide.

use super::types::GgmlType;

/// A quantization preset (`llama_ftype`) as named on llama-quantize's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum Preset {
    /// Everything F32.
    F32,
    /// 2-D weights F16.
    F16,
    /// 2-D weights BF16.
    BF16,
    /// Q4_0 with Q6_K output.
    Q4_0,
    /// Q4_1 with Q6_K output.
    Q4_1,
    /// Q5_0 with Q6_K output.
    Q5_0,
    /// Q5_1 with Q6_K output.
    Q5_1,
    /// Q8_0 everywhere.
    Q8_0,
    /// Q2_K mixture.
    Q2_K,
    /// Q3_K small.
    Q3_K_S,
    /// Q3_K medium.
    Q3_K_M,
    /// Q3_K large.
    Q3_K_L,
    /// Q4_K small.
    Q4_K_S,
    /// Q4_K medium.
    Q4_K_M,
    /// Q5_K small.
    Q5_K_S,
    /// Q5_K medium.
    Q5_K_M,
    /// Q6_K everywhere.
    Q6_K,
    /// IQ4_NL (4.5 bpw non-linear levels) with Q6_K output.
    IQ4_NL,
    /// IQ4_XS (4.25 bpw) with Q6_K output.
    IQ4_XS,
}

impl Preset {
    /// Every preset with its name and `general.file_type` (`LLAMA_FTYPE_*`).
    pub const ALL: [(Preset, &'static str, u32); 19] = [
        (Preset::F32, "F32", 0),
        (Preset::F16, "F16", 1),
        (Preset::BF16, "BF16", 32),
        (Preset::Q4_0, "Q4_0", 2),
        (Preset::Q4_1, "Q4_1", 3),
        (Preset::Q5_0, "Q5_0", 8),
        (Preset::Q5_1, "Q5_1", 9),
        (Preset::Q8_0, "Q8_0", 7),
        (Preset::Q2_K, "Q2_K", 10),
        (Preset::Q3_K_S, "Q3_K_S", 11),
        (Preset::Q3_K_M, "Q3_K_M", 12),
        (Preset::Q3_K_L, "Q3_K_L", 13),
        (Preset::Q4_K_S, "Q4_K_S", 14),
        (Preset::Q4_K_M, "Q4_K_M", 15),
        (Preset::Q5_K_S, "Q5_K_S", 16),
        (Preset::Q5_K_M, "Q5_K_M", 17),
        (Preset::Q6_K, "Q6_K", 18),
        (Preset::IQ4_NL, "IQ4_NL", 25),
        (Preset::IQ4_XS, "IQ4_XS", 30),
    ];

    /// Parses a preset name, case-insensitively; `Q3_K`, `Q4_K` and `Q5_K`
    /// mean their `_M` variants, as in llama-quantize.
    pub fn parse(name: &str) -> Option<Preset> {
        let upper = name.to_ascii_uppercase();
        let canonical = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        Preset::ALL
            .iter()
            .find(|(_, n, _)| *n == canonical)
            .map(|(p, _, _)| *p)
    }

    /// Every accepted name, for error messages.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Preset::ALL.iter().map(|(_, n, _)| *n)
    }

    /// The canonical name (`Q4_K_M`), used in output file names.
    pub fn name(self) -> &'static str {
        Preset::ALL
            .iter()
            .find(|(p, _, _)| *p == self)
            .map(|e| e.1)
            .unwrap_or("?")
    }

    /// `general.file_type`.
    pub fn file_type(self) -> u32 {
        Preset::ALL
            .iter()
            .find(|(p, _, _)| *p == self)
            .map(|e| e.2)
            .unwrap_or(0)
    }

    /// The type of tensors no rule singles out.
    pub fn default_type(self) -> GgmlType {
        use GgmlType as T;
        match self {
            Preset::F32 => T::F32,
            Preset::F16 => T::F16,
            Preset::BF16 => T::BF16,
            Preset::Q4_0 => T::Q4_0,
            Preset::Q4_1 => T::Q4_1,
            Preset::Q5_0 => T::Q5_0,
            Preset::Q5_1 => T::Q5_1,
            Preset::Q8_0 => T::Q8_0,
            Preset::Q2_K => T::Q2_K,
            Preset::Q3_K_S | Preset::Q3_K_M | Preset::Q3_K_L => T::Q3_K,
            Preset::Q4_K_S | Preset::Q4_K_M => T::Q4_K,
            Preset::Q5_K_S | Preset::Q5_K_M => T::Q5_K,
            Preset::Q6_K => T::Q6_K,
            Preset::IQ4_NL => T::IQ4_NL,
            Preset::IQ4_XS => T::IQ4_XS,
        }
    }
}

/// What a weight matrix does, as far as the mixture rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `token_embd.weight`.
    TokenEmbd,
    /// `output.weight`.
    Output,
    /// `blk.N.attn_v.weight`.
    AttnV,
    /// `blk.N.attn_output.weight`.
    AttnOutput,
    /// `blk.N.ffn_down.weight`.
    FfnDown,
    /// `blk.N.attn_qkv.weight` (fused q/k/v: Phi-3).
    AttnQkv,
    /// Any other matrix (q, k, gate, up).
    Other,
}

impl Role {
    /// The role of a GGUF tensor name.
    pub fn of(name: &str) -> Role {
        if name == "token_embd.weight" {
            Role::TokenEmbd
        } else if name == "output.weight" {
            Role::Output
        } else if name.ends_with(".attn_v.weight") {
            Role::AttnV
        } else if name.ends_with(".attn_output.weight") {
            Role::AttnOutput
        } else if name.ends_with(".ffn_down.weight") {
            Role::FfnDown
        } else if name.ends_with(".attn_qkv.weight") {
            Role::AttnQkv
        } else {
            Role::Other
        }
    }
}

/// The model facts the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixtureModel {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads per KV head.
    pub n_gqa: usize,
    /// llama.cpp classifies it as 70B (80 layers with GQA): attn_v gets Q5_K.
    pub is_70b: bool,
    /// No separate `output.weight`: token_embd is quantized like the output.
    pub tied_embeddings: bool,
    /// An importance matrix was given (llama-quantize's `has_imatrix`): the
    /// IQ4 presets then keep the first ffn_down layers at their own type.
    pub has_imatrix: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and
/// every third one in between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

/// Whether llama-quantize would quantize a tensor at all: 2-D or more, name
/// ending in `weight`, not a norm.
pub fn is_quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2 && name.ends_with("weight") && !name.contains("_norm.weight")
}

/// The type a quantizable tensor gets under `preset` (`layer` is its block
/// index, `row_len` its `ne[0]`).
pub fn tensor_type(
    preset: Preset,
    model: &MixtureModel,
    role: Role,
    layer: usize,
    row_len: usize,
) -> GgmlType {
    use GgmlType as T;
    use Preset as P;
    let default = preset.default_type();
    if !default.is_quantized() {
        return default;
    }
    let n = model.n_layer;
    let mut ty = default;
    let as_output = role == Role::Output || (model.tied_embeddings && role == Role::TokenEmbd);
    if as_output {
        if !row_len.is_multiple_of(default.block_size()) {
            ty = T::Q8_0;
        } else if ty != T::Q8_0 {
            ty = T::Q6_K;
        }
    } else {
        match role {
            Role::AttnV => {
                ty = match preset {
                    P::Q2_K if model.n_gqa >= 4 => T::Q4_K,
                    P::Q2_K => T::Q3_K,
                    P::Q3_K_M if layer < 2 => T::Q5_K,
                    P::Q3_K_M => T::Q4_K,
                    P::Q3_K_L => T::Q5_K,
                    P::Q4_K_M | P::Q5_K_M if use_more_bits(layer, n) => T::Q6_K,
                    P::Q4_K_S if layer < 4 => T::Q5_K,
                    P::IQ4_NL | P::IQ4_XS if model.n_gqa >= 4 => T::Q5_K,
                    _ => ty,
                };
                if model.is_70b && matches!(ty, T::Q3_K | T::Q4_K) {
                    ty = T::Q5_K;
                }
            }
            Role::FfnDown => {
                ty = match preset {
                    P::Q2_K => T::Q3_K,
                    P::Q3_K_M if layer < n / 16 => T::Q5_K,
                    P::Q3_K_M => T::Q4_K,
                    P::Q3_K_L => T::Q5_K,
                    P::Q4_K_M | P::Q5_K_M if use_more_bits(layer, n) => T::Q6_K,
                    P::IQ4_NL | P::IQ4_XS if layer < n / 8 && !model.has_imatrix => T::Q5_K,
                    P::Q4_K_S if layer < n / 8 => T::Q5_K,
                    _ => ty,
                };
            }
            Role::AttnOutput => {
                ty = match preset {
                    P::Q2_K => T::Q3_K,
                    P::Q3_K_M => T::Q4_K,
                    P::Q3_K_L => T::Q5_K,
                    _ => ty,
                };
            }
            Role::AttnQkv => {
                ty = match preset {
                    P::Q3_K_M | P::Q3_K_L => T::Q4_K,
                    P::Q4_K_M => T::Q5_K,
                    P::Q5_K_M => T::Q6_K,
                    _ => ty,
                };
            }
            Role::TokenEmbd | Role::Output | Role::Other => {}
        }
    }
    fallback(ty, row_len)
}

/// llama-quantize's `tensor_type_fallback`: a type whose block does not
/// divide the row is replaced by a 32-block type of similar size (IQ4_NL for
/// the 256-block i-quants), and by F16 when even 32 does not divide it.
pub fn fallback(ty: GgmlType, row_len: usize) -> GgmlType {
    use GgmlType as T;
    if row_len.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let next = match ty {
        T::Q2_K | T::Q3_K => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        T::IQ4_XS => T::IQ4_NL,
        other => other,
    };
    if row_len.is_multiple_of(next.block_size()) {
        next
    } else {
        T::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    fn yi34b() -> MixtureModel {
        MixtureModel {
            n_layer: 60,
            n_gqa: 7,
            is_70b: false,
            tied_embeddings: false,
            has_imatrix: false,
        }
    }

    #[test]
    fn q4_k_m_on_yi_34b_bumps_half_the_attn_v_and_ffn_down() {
        let m = yi34b();
        let bumped: Vec<usize> = (0..60)
            .filter(|&l| tensor_type(Preset::Q4_K_M, &m, Role::AttnV, l, 7168) == T::Q6_K)
            .collect();
        let mut expected: Vec<usize> = (0..7).collect();
        expected.extend((9..52).step_by(3));
        expected.extend(52..60);
        assert_eq!(bumped, expected);
        assert_eq!(bumped.len(), 30);
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &m, Role::FfnDown, 8, 20480),
            T::Q4_K
        );
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &m, Role::Output, 0, 7168),
            T::Q6_K
        );
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &m, Role::TokenEmbd, 0, 7168),
            T::Q4_K
        );
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &m, Role::Other, 3, 7168),
            T::Q4_K
        );
    }

    #[test]
    fn small_presets_and_fallbacks() {
        let m = yi34b();
        assert_eq!(
            tensor_type(Preset::Q8_0, &m, Role::Output, 0, 7168),
            T::Q8_0
        );
        assert_eq!(tensor_type(Preset::Q2_K, &m, Role::AttnV, 5, 7168), T::Q4_K);
        assert_eq!(
            tensor_type(Preset::Q3_K_M, &m, Role::AttnV, 1, 7168),
            T::Q5_K
        );
        assert_eq!(
            tensor_type(Preset::Q3_K_M, &m, Role::FfnDown, 2, 20480),
            T::Q5_K
        );
        assert_eq!(
            tensor_type(Preset::Q3_K_M, &m, Role::FfnDown, 3, 20480),
            T::Q4_K
        );
        assert_eq!(tensor_type(Preset::F16, &m, Role::Output, 0, 7168), T::F16);
        // 64-wide rows: Q4_K -> Q5_0, Q6_K output -> Q8_0; 40-wide: F16.
        assert_eq!(tensor_type(Preset::Q4_K_M, &m, Role::Other, 0, 64), T::Q5_0);
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &m, Role::Output, 0, 64),
            T::Q8_0
        );
        assert_eq!(tensor_type(Preset::Q4_K_M, &m, Role::Other, 0, 40), T::F16);
        let tied = MixtureModel {
            tied_embeddings: true,
            ..m
        };
        assert_eq!(
            tensor_type(Preset::Q4_K_M, &tied, Role::TokenEmbd, 0, 7168),
            T::Q6_K
        );
        let l70 = MixtureModel {
            n_layer: 80,
            is_70b: true,
            ..m
        };
        assert_eq!(
            tensor_type(Preset::Q4_K_S, &l70, Role::AttnV, 10, 8192),
            T::Q5_K
        );
    }

    #[test]
    fn preset_names_parse_with_llama_quantize_aliases() {
        assert_eq!(Preset::parse("q4_k_m"), Some(Preset::Q4_K_M));
        assert_eq!(Preset::parse("Q4_K"), Some(Preset::Q4_K_M));
        assert_eq!(Preset::parse("Q4_K_X"), None);
        assert_eq!(Preset::Q4_K_M.file_type(), 15);
        assert_eq!(Preset::BF16.file_type(), 32);
        assert_eq!(Preset::parse("iq4_xs"), Some(Preset::IQ4_XS));
        assert_eq!(Preset::IQ4_NL.file_type(), 25);
        assert_eq!(Preset::IQ4_XS.file_type(), 30);
    }

    #[test]
    fn iq4_presets_follow_llama_tensor_get_type() {
        // Yi-34B (GQA 7, 60 layers): attn_v Q5_K, the first 60/8 = 7 ffn_down
        // layers Q5_K without an imatrix only, output Q6_K, the rest IQ4.
        let m = yi34b();
        let with = MixtureModel {
            has_imatrix: true,
            ..m
        };
        for (p, ty) in [(Preset::IQ4_XS, T::IQ4_XS), (Preset::IQ4_NL, T::IQ4_NL)] {
            assert_eq!(tensor_type(p, &m, Role::AttnV, 30, 7168), T::Q5_K);
            assert_eq!(tensor_type(p, &m, Role::FfnDown, 6, 20480), T::Q5_K);
            assert_eq!(tensor_type(p, &with, Role::FfnDown, 6, 20480), ty);
            assert_eq!(tensor_type(p, &m, Role::FfnDown, 7, 20480), ty);
            assert_eq!(tensor_type(p, &m, Role::Output, 0, 7168), T::Q6_K);
            assert_eq!(tensor_type(p, &m, Role::TokenEmbd, 0, 7168), ty);
            assert_eq!(tensor_type(p, &m, Role::AttnOutput, 3, 7168), ty);
            assert_eq!(tensor_type(p, &m, Role::Other, 3, 7168), ty);
        }
        let mha = MixtureModel { n_gqa: 1, ..m };
        assert_eq!(
            tensor_type(Preset::IQ4_XS, &mha, Role::AttnV, 30, 7168),
            T::IQ4_XS
        );
        // Rows of 96: IQ4_XS falls back to IQ4_NL, the Q6_K output to Q8_0;
        // rows of 40: F16.
        assert_eq!(
            tensor_type(Preset::IQ4_XS, &m, Role::Other, 3, 96),
            T::IQ4_NL
        );
        assert_eq!(
            tensor_type(Preset::IQ4_XS, &m, Role::Output, 0, 96),
            T::Q8_0
        );
        assert_eq!(
            tensor_type(Preset::IQ4_NL, &m, Role::Output, 0, 96),
            T::Q8_0
        );
        assert_eq!(tensor_type(Preset::IQ4_NL, &m, Role::Other, 3, 40), T::F16);
    }
}
