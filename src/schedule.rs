//! Learning-rate schedules, as open_clip's `scheduler.py` computes them: the rate for optimiser step `step`
//! (0-based: the first update uses `lr(0)`).

use serde::{Deserialize, Serialize};

/// Which curve follows the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half a cosine from the base rate down to 0 at the last step (open_clip's default `--lr-scheduler cosine`).
    Cosine,
    /// The base rate after warm-up.
    Const,
}

/// Linear warm-up over `warmup` steps, then `kind` until `total` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
    pub kind: ScheduleKind,
}

impl LrSchedule {
    /// The learning rate of step `step`: `base·(step+1)/warmup` during warm-up (open_clip's `_warmup_lr`), then
    /// `½·(1 + cos(π·e/E))·base` with `e = step − warmup`, `E = total − warmup` for the cosine.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f64 / self.warmup as f64;
        }
        match self.kind {
            ScheduleKind::Const => self.base_lr,
            ScheduleKind::Cosine => {
                let e = (step - self.warmup) as f64;
                let span = self.total.saturating_sub(self.warmup) as f64;
                if span <= 0.0 {
                    return self.base_lr;
                }
                0.5 * (1.0 + (std::f64::consts::PI * e / span).cos()) * self.base_lr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let s = LrSchedule { base_lr: 1e-3, warmup: 10, total: 110, kind: ScheduleKind::Cosine };
        assert_eq!(s.lr(0), 1e-4);
        assert_eq!(s.lr(9), 1e-3);
        assert_eq!(s.lr(10), 1e-3);
        assert!((s.lr(60) - 5e-4).abs() < 1e-15, "{}", s.lr(60));
        assert!(s.lr(109) > 0.0 && s.lr(109) < 1e-6);
        assert!((1..110).all(|t| t <= 10 || s.lr(t) <= s.lr(t - 1)), "cosine must not increase");
        let c = LrSchedule { kind: ScheduleKind::Const, ..s };
        assert_eq!(c.lr(100), 1e-3);
    }

    #[test]
    fn no_warmup() {
        let s = LrSchedule { base_lr: 2.0, warmup: 0, total: 4, kind: ScheduleKind::Cosine };
        assert_eq!(s.lr(0), 2.0);
        assert!((s.lr(2) - 1.0).abs() < 1e-12);
    }
}
