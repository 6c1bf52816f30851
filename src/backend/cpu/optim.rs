//! AdamW with decoupled weight decay over the whole parameter buffer.

use rayon::prelude::*;

use super::simd::multiversion;
use crate::backend::{AdamW, DecaySegment, Float};
use crate::error::{check_len, Error, Result};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The per-element constants of one AdamW step over one segment.
#[derive(Clone, Copy)]
struct Step<F> {
    /// `1 − lr·wd` where the segment decays, else 1.
    shrink: F,
    beta1: F,
    beta2: F,
    one_minus_beta1: F,
    one_minus_beta2: F,
    bias2_sqrt: F,
    eps: F,
    step_size: F,
}

multiversion! {
    /// The update of one chunk; `shadow` (empty, or as long as `p`) receives the new weights.
    fn adamw_chunk<F: Float>(s: &Step<F>, p: &mut [F], m: &mut [F], v: &mut [F], g: &[F], shadow: &mut [F]) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            // Decoupled decay first, on the weights before the Adam step.
            *p *= s.shrink;
            *m = s.beta1 * *m + s.one_minus_beta1 * g;
            *v = s.beta2 * *v + s.one_minus_beta2 * g * g;
            let denom = v.sqrt() / s.bias2_sqrt + s.eps;
            *p -= s.step_size * *m / denom;
        }
        if !shadow.is_empty() {
            shadow.copy_from_slice(p);
        }
    }
}

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
    adamw_update_with_shadow(hp, segments, params, grads, m, v, None)
}

/// [`adamw_update`], also writing the updated weights into `shadow` (the compute copy) in the same pass.
pub fn adamw_update_with_shadow<F: Float>(
    hp: &AdamW,
    segments: &[DecaySegment],
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    shadow: Option<&mut [F]>,
) -> Result<()> {
    const OP: &str = "adamw_update";
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "m", m.len(), n)?;
    check_len(OP, "v", v.len(), n)?;
    if let Some(shadow) = &shadow {
        check_len(OP, "shadow", shadow.len(), n)?;
    }
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

    let step = Step { shrink: F::one(), beta1, beta2, one_minus_beta1, one_minus_beta2, bias2_sqrt, eps, step_size };
    let mut shadow = shadow;
    for seg in segments {
        let range = seg.start..seg.start + seg.len;
        let shrink = F::of_f64(if seg.decay { 1.0 - hp.lr * hp.weight_decay } else { 1.0 });
        let step = Step { shrink, ..step };
        let (p, m, v, g) =
            (&mut params[range.clone()], &mut m[range.clone()], &mut v[range.clone()], &grads[range.clone()]);
        match shadow.as_deref_mut() {
            Some(shadow) => (p.par_chunks_mut(CHUNK), m.par_chunks_mut(CHUNK), v.par_chunks_mut(CHUNK))
                .into_par_iter()
                .zip(g.par_chunks(CHUNK).zip(shadow[range].par_chunks_mut(CHUNK)))
                .for_each(|((p, m, v), (g, shadow))| adamw_chunk(&step, p, m, v, g, shadow)),
            None => (p.par_chunks_mut(CHUNK), m.par_chunks_mut(CHUNK), v.par_chunks_mut(CHUNK), g.par_chunks(CHUNK))
                .into_par_iter()
                .for_each(|(p, m, v, g)| adamw_chunk(&step, p, m, v, g, &mut [])),
        }
    }
    Ok(())
}
