//! Model configurations in open_clip's JSON model-config format (`embed_dim`, `vision_cfg`, `text_cfg`,
//! `quick_gelu`), built-in ones by name (`ViT-B-32`, `RN50`, … and `-quickgelu` variants), and tiny ones for CPU work.

use serde::{Deserialize, Serialize};

use crate::backend::Activation;
use crate::error::{Error, Result};

/// `vision_cfg.layers`: an int for a ViT, four ints for a ResNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    Transformer(usize),
    ResNet([usize; 4]),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub layers: VisionLayers,
    pub width: usize,
    /// ViT only: the patch (and convolution stride) size; absent for a ResNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
    /// Width of one attention head: heads = width / head_width (ViT), 32·width / head_width (ResNet pool).
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub embed_dim: usize,
    pub vision_cfg: VisionConfig,
    pub text_cfg: TextConfig,
    /// OpenAI's QuickGELU (`x·σ(1.702x)`) instead of exact GELU in every MLP.
    #[serde(default)]
    pub quick_gelu: bool,
}

fn default_head_width() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context_length() -> usize {
    77
}
fn default_vocab_size() -> usize {
    49408
}

impl ModelConfig {
    /// The MLP nonlinearity this config asks for.
    pub fn activation(&self) -> Activation {
        if self.quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        }
    }

    /// Parses an open_clip model-config JSON; the error names what is wrong.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ModelConfig =
            serde_json::from_str(text).map_err(|e| Error::Invalid { op: "model config", msg: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads an open_clip model-config JSON file (`{"embed_dim": …, "vision_cfg": {…}, "text_cfg": {…}}`).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: format!("model config {}", path.display()), source })?;
        Self::from_json(&text).map_err(|e| Error::Invalid {
            op: "model config",
            msg: format!("{}: {e} (expected open_clip's format: embed_dim, vision_cfg, text_cfg)", path.display()),
        })
    }

    /// The config a command line asks for: `--model-config FILE` wins over `--model NAME`; neither gives `default`.
    pub fn resolve(model: Option<&str>, model_config: Option<&std::path::Path>, default: &str) -> Result<Self> {
        match (model_config, model) {
            (Some(path), _) => Self::from_file(path),
            (None, Some(name)) => Self::builtin(name),
            (None, None) => Self::builtin(default),
        }
    }

    /// A built-in config by open_clip name; `-quickgelu` appended switches the nonlinearity.
    pub fn builtin(name: &str) -> Result<Self> {
        let (base, quick) = match name.strip_suffix("-quickgelu") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let text = |width, heads, layers| TextConfig {
            context_length: 77,
            vocab_size: 49408,
            width,
            heads,
            layers,
            mlp_ratio: 4.0,
        };
        let vit = |image_size, layers, width, patch| VisionConfig {
            image_size,
            layers: VisionLayers::Transformer(layers),
            width,
            patch_size: Some(patch),
            head_width: 64,
            mlp_ratio: 4.0,
        };
        let resnet = |layers, width| VisionConfig {
            image_size: 224,
            layers: VisionLayers::ResNet(layers),
            width,
            patch_size: None,
            head_width: 64,
            mlp_ratio: 4.0,
        };
        let mut cfg = match base {
            "ViT-B-32" => ModelConfig {
                embed_dim: 512,
                vision_cfg: vit(224, 12, 768, 32),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            "ViT-B-16" => ModelConfig {
                embed_dim: 512,
                vision_cfg: vit(224, 12, 768, 16),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            "ViT-L-14" => ModelConfig {
                embed_dim: 768,
                vision_cfg: vit(224, 24, 1024, 14),
                text_cfg: text(768, 12, 12),
                quick_gelu: false,
            },
            "RN50" => ModelConfig {
                embed_dim: 1024,
                vision_cfg: resnet([3, 4, 6, 3], 64),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            "RN101" => ModelConfig {
                embed_dim: 512,
                vision_cfg: resnet([3, 4, 23, 3], 64),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            // The CPU reference point of SPEC §5: ViT width 128, 4 layers, patch 8 on 32×32 images; text width 128,
            // 4 layers, context 16, the full vocabulary.
            "tiny-ViT" => ModelConfig {
                embed_dim: 128,
                vision_cfg: vit(32, 4, 128, 8),
                text_cfg: TextConfig {
                    context_length: 16,
                    vocab_size: 49408,
                    width: 128,
                    heads: 2,
                    layers: 4,
                    mlp_ratio: 4.0,
                },
                quick_gelu: false,
            },
            // A ResNet small enough for CPU tests: 32×32 images, one bottleneck per stage, width 16 (2048/4 = 512
            // channels out of layer4 at 1×1).
            "tiny-RN" => ModelConfig {
                embed_dim: 64,
                vision_cfg: VisionConfig { image_size: 32, ..resnet([1, 1, 1, 1], 16) },
                text_cfg: TextConfig {
                    context_length: 16,
                    vocab_size: 49408,
                    width: 128,
                    heads: 2,
                    layers: 2,
                    mlp_ratio: 4.0,
                },
                quick_gelu: false,
            },
            _ => {
                return Err(Error::Invalid {
                    op: "model config",
                    msg: format!(
                        "unknown model `{name}`; built-in: {} (append -quickgelu for QuickGELU), or pass a JSON \
                         model config file",
                        Self::BUILTIN.join(", ")
                    ),
                })
            }
        };
        cfg.quick_gelu = quick;
        Ok(cfg)
    }

    pub const BUILTIN: [&'static str; 7] = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "RN101", "tiny-ViT", "tiny-RN"];

    /// Rejects configs the towers cannot build, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "model config", msg });
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        if self.embed_dim == 0 || v.width == 0 || t.width == 0 || v.head_width == 0 || t.heads == 0 {
            return bad("embed_dim, widths, heads and head_width must be positive".into());
        }
        if !t.width.is_multiple_of(t.heads) {
            return bad(format!("text_cfg.width {} is not a multiple of text_cfg.heads {}", t.width, t.heads));
        }
        if t.context_length < 2 || t.vocab_size < 2 {
            return bad("text_cfg.context_length and vocab_size must be at least 2".into());
        }
        match (&v.layers, v.patch_size) {
            (VisionLayers::Transformer(_), Some(p)) => {
                if p == 0 || !v.image_size.is_multiple_of(p) {
                    return bad(format!("vision_cfg.image_size {} is not a multiple of patch_size {p}", v.image_size));
                }
                if !v.width.is_multiple_of(v.head_width) {
                    return bad(format!(
                        "vision_cfg.width {} is not a multiple of head_width {}",
                        v.width, v.head_width
                    ));
                }
            }
            (VisionLayers::Transformer(_), None) => return bad("a ViT vision_cfg needs patch_size".into()),
            (VisionLayers::ResNet(_), _) => {
                if !v.image_size.is_multiple_of(32) {
                    return bad(format!("a ResNet needs image_size divisible by 32, got {}", v.image_size));
                }
                if !(32 * v.width).is_multiple_of(v.head_width) {
                    return bad(format!("32·vision_cfg.width must be a multiple of head_width {}", v.head_width));
                }
            }
        }
        Ok(())
    }
}
