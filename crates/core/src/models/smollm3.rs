//! `smollm3`: SmolLM3: Llama's block, but every few layers (by default each
//! fourth) attend without rotary position embeddings ("NoPE" layers).

use super::{GgufNumber, HfConfig};
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

/// Layers without rotation when a file does not list them: each fourth.
const NO_ROPE_INTERVAL: usize = 4;

/// Reads a `smollm3` config: `no_rope_layers` (1 where a layer rotates, 0
/// where it does not) or, without it, `no_rope_layer_interval`. Its sliding
/// window applies to the NoPE layers only, which the engine does not do.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    hf.require("use_sliding_window", &Value::from(false))?;
    let mut c = hf.llama_like()?;
    c.no_rope_layers = match hf.int_list("no_rope_layers")? {
        Some(flags) => {
            if flags.len() != c.n_layers || flags.iter().any(|&f| f > 1) {
                return Err(hf.bad(format!(
                    "'no_rope_layers' must hold a 0 or 1 for each of the {} layers",
                    c.n_layers
                )));
            }
            (0..c.n_layers).filter(|&l| flags[l] == 0).collect()
        }
        None => {
            let every = hf.int_or("no_rope_layer_interval", NO_ROPE_INTERVAL)?;
            if every == 0 {
                return Err(hf.bad("'no_rope_layer_interval' is 0".into()));
            }
            every_nth(c.n_layers, every)
        }
    };
    Ok(c)
}

/// Layers `every - 1, 2 * every - 1, ...` below `n_layers`.
fn every_nth(n_layers: usize, every: usize) -> Vec<usize> {
    (0..n_layers).filter(|l| (l + 1) % every == 0).collect()
}

/// A `smollm3` GGUF file: llama.cpp keeps no key for the NoPE layers and
/// always skips each fourth.
pub fn gguf(_: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    c.no_rope_layers = every_nth(c.n_layers, NO_ROPE_INTERVAL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config_from_hf;
    use std::path::Path;

    fn read(extra: serde_json::Value) -> Result<Config> {
        let mut json = serde_json::json!({
            "model_type": "smollm3", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 8, "num_attention_heads": 4, "vocab_size": 256,
            "max_position_embeddings": 512, "hidden_act": "silu",
        });
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        config_from_hf(&json, Path::new("config.json")).map(|(_, c)| c)
    }

    #[test]
    fn nope_layers_from_the_flags_the_interval_or_its_default() {
        let flags = serde_json::json!({"no_rope_layers": [1, 0, 1, 1, 0, 1, 1, 1]});
        assert_eq!(read(flags).unwrap().no_rope_layers, [1, 4]);
        let every = serde_json::json!({"no_rope_layer_interval": 3});
        assert_eq!(read(every).unwrap().no_rope_layers, [2, 5]);
        let c = read(serde_json::json!({})).unwrap();
        assert_eq!(c.no_rope_layers, [3, 7]);
        assert!(c.rotates(2) && !c.rotates(3));
        // SmolLM3-3B's 36 layers from GGUF: each fourth, as llama.cpp does.
        let mut g = Config {
            n_layers: 36,
            ..Config::default()
        };
        gguf(&|_| Ok(None), &mut g).unwrap();
        assert_eq!(g.no_rope_layers, (3..36).step_by(4).collect::<Vec<_>>());
    }

    #[test]
    fn bad_nope_settings_name_the_key() {
        for (extra, key) in [
            (
                serde_json::json!({"no_rope_layers": [1, 0]}),
                "no_rope_layers",
            ),
            (
                serde_json::json!({"no_rope_layers": [1, 2, 1, 1, 1, 1, 1, 1]}),
                "no_rope_layers",
            ),
            (
                serde_json::json!({"no_rope_layer_interval": 0}),
                "no_rope_layer_interval",
            ),
            (
                serde_json::json!({"use_sliding_window": true}),
                "use_sliding_window",
            ),
        ] {
            let e = read(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
