//! The architecture-specific facts of a decoder's config.json, worded for
//! people: what `yibuild inspect` prints and the model card lists under
//! "Model details" (context and rotary scaling, sliding-window attention,
//! logit soft-capping, tied embeddings).

use super::config::{DecoderConfig, RopeScaling};

/// (label, value) pairs describing `c`, in a fixed order; facts that do not
/// apply to the model (no window, no soft-capping) are left out, except the
/// ones every decoder has.
pub fn architecture_details(c: &DecoderConfig) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (
            "layers",
            format!(
                "{} (hidden {}, {} heads, {} key/value heads, head dim {})",
                c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim
            ),
        ),
        ("context", c.max_positions.to_string()),
    ];
    let rope = match &c.rope_scaling {
        RopeScaling::None => format!("default (theta {})", c.rope_theta),
        RopeScaling::Longrope {
            original_max_positions,
            ..
        } => format!(
            "longrope (theta {}, trained context {original_max_positions})",
            c.rope_theta
        ),
        other => format!("{} (theta {})", other.name(), c.rope_theta),
    };
    out.push(("rope scaling", rope));
    if let Some(local) = c.rope_local_theta {
        out.push(("local rope theta", local.to_string()));
    }
    if c.partial_rotary_factor != 1.0 {
        out.push((
            "partial rotary",
            format!(
                "{} ({} of {} dims)",
                c.partial_rotary_factor,
                c.rotary_dim(),
                c.head_dim
            ),
        ));
    }
    let sliding = c.layer_types.sliding_count(c.layers);
    if let Some(window) = c.sliding_window.filter(|_| sliding > 0) {
        out.push((
            "sliding window",
            format!("{window} tokens on {sliding} of {} layers", c.layers),
        ));
    }
    if let Some(cap) = c.attn_logit_softcapping {
        out.push(("attention soft-capping", cap.to_string()));
    }
    if let Some(cap) = c.final_logit_softcapping {
        out.push(("final logit soft-capping", cap.to_string()));
    }
    out.push((
        "tied embeddings",
        if c.tie_embeddings { "yes" } else { "no" }.to_owned(),
    ));
    out
}
