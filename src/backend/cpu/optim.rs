//! AdamW with decoupled weight decay over the whole parameter buffer.

use rayon::prelude::*;

use crate::backend::{AdamW, DecaySegment, Float};
use crate::error::{check_len, Error, Result};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// One step of PyTorch's `torch.optim.AdamW` at step `hp.step` (1-based), element by element:
///
/// ```text
/// p ← p·(1 − lr·wd)                       (only where the segment decays)
/// m ← β1·m + (1 − β1)·g
/// v ← β2·v + (1 − β2)·g²
/// p ← p − lr/(1 − β1^step) · m / (√v / √(1 − β2^step) + eps)
/// ```
///
/// which is `p −= lr·m̂/(√v̂ + eps)` with `m̂ = m/(1 − β1^step)`, `v̂ = v/(1 − β2^step)`, arranged as PyTorch computes
/// it. `segments` must tile `0..params.len()` in order, without gaps or overlaps.
pub fn adamw_update<F: Float>(
    hp: &AdamW,
    segments: &[DecaySegment],
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
) -> Result<()> {
    const OP: &str = "adamw_update";
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "m", m.len(), n)?;
    check_len(OP, "v", v.len(), n)?;
    if hp.step == 0 {
        return Err(Error::Invalid { op: OP, msg: "step is 1-based, got 0".into() });
    }
    let mut end = 0;
    for (i, seg) in segments.iter().enumerate() {
        if seg.start != end {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("segment {i} starts at {} but the previous one ends at {end}", seg.start),
            });
        }
        end = seg.start + seg.len;
    }
    if end != n {
        return Err(Error::Invalid { op: OP, msg: format!("the segments cover 0..{end}, the parameters 0..{n}") });
    }

    // Bias corrections in f64, as PyTorch computes them on the host.
    let step = hp.step as f64;
    let bias1 = 1.0 - hp.beta1.powf(step);
    let bias2_sqrt = (1.0 - hp.beta2.powf(step)).sqrt();
    let step_size = F::of_f64(hp.lr / bias1);
    let bias2_sqrt = F::of_f64(bias2_sqrt);
    let (beta1, beta2, eps) = (F::of_f64(hp.beta1), F::of_f64(hp.beta2), F::of_f64(hp.eps));
    let (one_minus_beta1, one_minus_beta2) = (F::of_f64(1.0 - hp.beta1), F::of_f64(1.0 - hp.beta2));

    for seg in segments {
        let range = seg.start..seg.start + seg.len;
        let shrink = F::of_f64(if seg.decay { 1.0 - hp.lr * hp.weight_decay } else { 1.0 });
        params[range.clone()]
            .par_chunks_mut(CHUNK)
            .zip(m[range.clone()].par_chunks_mut(CHUNK))
            .zip(v[range.clone()].par_chunks_mut(CHUNK))
            .zip(grads[range].par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    // Decoupled decay first, on the weights before the Adam step.
                    *p *= shrink;
                    *m = beta1 * *m + one_minus_beta1 * g;
                    *v = beta2 * *v + one_minus_beta2 * g * g;
                    let denom = v.sqrt() / bias2_sqrt + eps;
                    *p -= step_size * *m / denom;
                }
            });
    }
    Ok(())
}
