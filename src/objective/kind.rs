//! Which objective `cliprt train --objective` runs, and its weights and sizes (SPEC §1–3), with the papers' defaults.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The training objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    /// CLIP's symmetric InfoNCE on one view per modality (SPEC §1.1).
    #[default]
    Clip,
    /// DeCLIP: multi-view (MVS), image self-supervision (ISS, SimSiam), masked language modelling (TSS) and
    /// nearest-neighbour supervision (NNS) (SPEC §2).
    Declip,
    /// The improved CLIP recipe of Fini et al. (CLIP🚀): a global pair plus 2×2 strongly augmented local pairs with
    /// MLP projectors, their own logit scale and label smoothing 0.1 (SPEC §3).
    Cl2l,
    /// CL2L + SimSiam-style cross-modal prediction (SPEC §3).
    Siamlip,
    /// CL2L + BYOL-style prediction of an EMA target model (SPEC §3).
    Byolip,
    /// CL2L + Barlow Twins between the modalities (SPEC §3).
    Barlip,
    /// CL2L + SwAV-style swapped prediction with Sinkhorn-Knopp targets (SPEC §3).
    Swalip,
}

impl ObjectiveKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::Clip => "clip",
            ObjectiveKind::Declip => "declip",
            ObjectiveKind::Cl2l => "cl2l",
            ObjectiveKind::Siamlip => "siamlip",
            ObjectiveKind::Byolip => "byolip",
            ObjectiveKind::Barlip => "barlip",
            ObjectiveKind::Swalip => "swalip",
        }
    }

    /// Every objective, in the order.
    pub const ALL: [ObjectiveKind; 7] = [
        ObjectiveKind::Clip,
        ObjectiveKind::Declip,
        ObjectiveKind::Cl2l,
        ObjectiveKind::Siamlip,
        ObjectiveKind::Byolip,
        ObjectiveKind::Barlip,
        ObjectiveKind::Swalip,
    ];

    /// The CL2L recipe and the four SSL objectives built on it.
    pub fn is_cl2l_family(self) -> bool {
        !matches!(self, ObjectiveKind::Clip | ObjectiveKind::Declip)
    }

    /// (image views, text views) per sample: DeCLIP 2 + 2; the CL2L family 1 global + 2 local of each.
    pub fn views(self) -> (usize, usize) {
        match self {
            ObjectiveKind::Clip => (1, 1),
            ObjectiveKind::Declip => (2, 2),
            _ => (3, 3),
        }
    }
}

/// Which image augmentations the multi-view objectives' views get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AugmentPolicy {
    /// Each paper's recipe (SPEC §2–3): crops, flips, colour jitter, grayscale, blur.
    #[default]
    Paper,
    /// The same crops and flips without the colour operations (jitter, grayscale, blur, solarize): for data whose
    /// labels are colours, as the shapes set's.
    Geometric,
    /// No image augmentation: every image view is the whole image (an ablation: the views then differ only in
    /// their text).
    None,
}

/// The objectives' weights and sizes. TOML: an `[objective_options]` table; flags `--mvs-weight` etc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveOptions {
    /// DeCLIP's loss weights (α, β, γ, δ) of MVS, NNS, ISS, TSS: the released code's (0.4, 0.2, 0.2, 0.2).
    pub mvs_weight: f64,
    pub nns_weight: f64,
    pub iss_weight: f64,
    pub tss_weight: f64,
    /// DeCLIP's nearest-neighbour queue: rows (65536 per device in the paper).
    pub queue_size: usize,
    /// DeCLIP: the parameter t is clamped to [3, 6] after each step (YFCC15M configs); the forward scale is
    /// min(exp(t), 100) in every objective that clamps.
    pub declip_log_scale_min: f64,
    pub declip_log_scale_max: f64,
    /// CL2L local pairs' label smoothing (0.1) and the local heads' output width (256).
    pub local_smoothing: f64,
    pub local_embed_dim: usize,
    /// Weight of the SSL term added to the CL2L loss: SwALIP 0.2, the others 1 (unset: that default).
    pub ssl_weight: Option<f64>,
    /// BYOLIP's EMA momentum τ (target ← τ·target + (1−τ)·online after every step).
    pub ema_momentum: f64,
    /// Multiplies every projector/predictor hidden width (1 = the papers' 1024…8192; smaller for tiny models).
    /// Output widths of the SSL heads scale too; the CL2L local output keeps `local_embed_dim`.
    pub head_scale: f64,
    /// The views' image augmentations: the papers' recipes, or their crops and flips only.
    pub augment: AugmentPolicy,
}

impl Default for ObjectiveOptions {
    fn default() -> Self {
        ObjectiveOptions {
            mvs_weight: 0.4,
            nns_weight: 0.2,
            iss_weight: 0.2,
            tss_weight: 0.2,
            queue_size: 65_536,
            declip_log_scale_min: 3.0,
            declip_log_scale_max: 6.0,
            local_smoothing: 0.1,
            local_embed_dim: 256,
            ssl_weight: None,
            ema_momentum: 0.99,
            head_scale: 1.0,
            augment: AugmentPolicy::Paper,
        }
    }
}

impl ObjectiveOptions {
    /// The SSL term's weight for `kind` (SPEC §3).
    pub fn ssl_weight_for(&self, kind: ObjectiveKind) -> f64 {
        self.ssl_weight.unwrap_or(if kind == ObjectiveKind::Swalip { 0.2 } else { 1.0 })
    }

    /// A head width scaled by `head_scale`, at least 8.
    pub fn width(&self, paper: usize) -> usize {
        ((paper as f64 * self.head_scale).round() as usize).max(8)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "objective options", msg });
        for (name, w) in [
            ("mvs_weight", self.mvs_weight),
            ("nns_weight", self.nns_weight),
            ("iss_weight", self.iss_weight),
            ("tss_weight", self.tss_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("{name} {w} must be a number ≥ 0"));
            }
        }
        if let Some(w) = self.ssl_weight {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("ssl_weight {w} must be a number ≥ 0"));
            }
        }
        if self.queue_size == 0 {
            return bad("queue_size is 0; DeCLIP's queue needs at least one row (default 65536)".into());
        }
        if !matches!(
            self.declip_log_scale_min.partial_cmp(&self.declip_log_scale_max),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ) {
            return bad("declip_log_scale_min must not exceed declip_log_scale_max".into());
        }
        if !(0.0..1.0).contains(&self.local_smoothing) {
            return bad(format!("local_smoothing {} must be in [0, 1)", self.local_smoothing));
        }
        if self.local_embed_dim == 0 {
            return bad("local_embed_dim is 0; use e.g. 256".into());
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            return bad(format!("ema_momentum {} must be in [0, 1)", self.ema_momentum));
        }
        if !(self.head_scale.is_finite() && self.head_scale > 0.0) {
            return bad(format!("head_scale {} must be a positive number", self.head_scale));
        }
        Ok(())
    }
}
