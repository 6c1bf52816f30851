//! L2-regularised multinomial logistic regression, solved by L-BFGS: the linear probe's classifier.
//!
//! Minimises `f(W, b) = (1/N) Σ_i [logsumexp(z_i) − z_i[y_i]] + (λ/2)·‖W‖²` with `z_i = W·x_i + b` (the bias is
//! not penalised), which is scikit-learn's `LogisticRegression(C)` objective divided by `N` (λ = 1/(C·N)), the
//! solver CLIP's linear probes used. The objective is convex (strictly in W for λ > 0), so L-BFGS with a
//! backtracking (Armijo) line search converges to the one minimum; warm starts make a sweep over λ cheap.
//!
//! Why not a crate: linfa-logistic 0.7 (argmin's L-BFGS with a More–Thuente line search) was tried; on separable
//! data with a small penalty (α ≤ 0.1, exactly the probe's regime) it fails with "Search direction must be a
//! descent direction" (argmin issues #132, #400), and it adds ndarray, argmin and linfa (~40 crates). This file is
//! ~200 lines with the two matrix products on [`CpuBackend<f64>`]'s GEMM.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Gemm};
use crate::error::{Error, Result};

/// Solver settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Solver {
    /// Iteration cap (each iteration is one gradient plus the line search's evaluations).
    pub max_iter: usize,
    /// Stop when the largest gradient entry falls below this.
    pub gtol: f64,
    /// Number of curvature pairs L-BFGS keeps.
    pub memory: usize,
}

impl Default for Solver {
    fn default() -> Self {
        Solver { max_iter: 1000, gtol: 1e-4, memory: 10 }
    }
}

/// A fitted classifier: `weights [classes, dim + 1]`, the last column the bias.
#[derive(Clone, Debug, PartialEq)]
pub struct LogisticRegression {
    pub classes: usize,
    pub dim: usize,
    pub weights: Vec<f64>,
    /// L-BFGS iterations the fit took, and whether it met `gtol` before `max_iter`.
    pub iterations: usize,
    pub converged: bool,
}

/// The training problem: features with a constant 1 appended, one-hot targets, the penalty.
struct Problem<'a> {
    x: Vec<f64>,
    y: &'a [usize],
    n: usize,
    cols: usize,
    classes: usize,
    l2: f64,
    cpu: CpuBackend<f64>,
}

impl Problem<'_> {
    /// The objective and its gradient at `w [classes, cols]`.
    fn value_and_grad(&self, w: &[f64], grad: &mut [f64]) -> Result<f64> {
        let (n, c, d) = (self.n, self.classes, self.cols);
        let mut z = vec![0.0; n * c];
        self.cpu.gemm(&Gemm::new(n, c, d, false, true), &self.x, w, &mut z)?;
        // z becomes (softmax(z) − onehot(y)) / N, the loss's gradient with respect to the logits.
        let mut loss = 0.0;
        for (row, &y) in z.chunks_exact_mut(c).zip(self.y) {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|&v| (v - max).exp()).sum();
            loss += max + sum.ln() - row[y];
            row.iter_mut().for_each(|v| *v = (*v - max).exp() / sum / n as f64);
            row[y] -= 1.0 / n as f64;
        }
        self.cpu.gemm(&Gemm::new(c, d, n, true, false), &z, &self.x, grad)?;
        let mut penalty = 0.0;
        for (wr, gr) in w.chunks_exact(d).zip(grad.chunks_exact_mut(d)) {
            // Every column but the last (the bias).
            for (&wv, g) in wr[..d - 1].iter().zip(&mut gr[..d - 1]) {
                penalty += wv * wv;
                *g += self.l2 * wv;
            }
        }
        Ok(loss / n as f64 + 0.5 * self.l2 * penalty)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L-BFGS's two-loop recursion: the search direction `−H·g` from the stored pairs `(s, y, 1/yᵀs)`, oldest first.
fn direction(g: &[f64], pairs: &[(Vec<f64>, Vec<f64>, f64)]) -> Vec<f64> {
    let mut q: Vec<f64> = g.to_vec();
    let mut alphas = vec![0.0; pairs.len()];
    for (k, (s, y, rho)) in pairs.iter().enumerate().rev() {
        alphas[k] = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(q, &y)| *q -= alphas[k] * y);
    }
    // Initial Hessian γ·I with γ = sᵀy / yᵀy of the newest pair (Nocedal & Wright 7.20).
    if let Some((s, y, _)) = pairs.last() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for (k, (s, y, rho)) in pairs.iter().enumerate() {
        let beta = rho * dot(y, &q);
        q.iter_mut().zip(s).for_each(|(q, &s)| *q += (alphas[k] - beta) * s);
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

impl LogisticRegression {
    /// Fits `x [n, dim]` to labels `y` in `0..classes` with penalty `l2`, starting from `init` (a warm start: a fit
    /// of the same shape, e.g. at a neighbouring λ) or from zero.
    pub fn fit(
        x: &[f32],
        y: &[usize],
        dim: usize,
        classes: usize,
        l2: f64,
        solver: &Solver,
        init: Option<&LogisticRegression>,
    ) -> Result<Self> {
        let n = y.len();
        let bad = |msg: String| Err(Error::Invalid { op: "logistic regression", msg });
        if n == 0 || dim == 0 || classes == 0 || x.len() != n * dim {
            return bad(format!(
                "{} feature values for {n} labels of dimension {dim}; need n·dim values, n ≥ 1",
                x.len()
            ));
        }
        if let Some(&label) = y.iter().find(|&&l| l >= classes) {
            return bad(format!("label {label} is not below the number of classes {classes}"));
        }
        if !(l2 >= 0.0 && l2.is_finite()) {
            return bad(format!("L2 strength {l2} must be a finite number ≥ 0"));
        }
        let cols = dim + 1;
        let mut xa = Vec::with_capacity(n * cols);
        for row in x.chunks_exact(dim) {
            xa.extend(row.iter().map(|&v| v as f64));
            xa.push(1.0);
        }
        let problem = Problem { x: xa, y, n, cols, classes, l2, cpu: CpuBackend::new() };

        let mut w = match init {
            Some(m) if m.classes == classes && m.dim == dim => m.weights.clone(),
            _ => vec![0.0; classes * cols],
        };
        let mut g = vec![0.0; w.len()];
        let mut f = problem.value_and_grad(&w, &mut g)?;
        let mut pairs: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
        let (mut iterations, mut converged) = (0, false);
        let mut w_new = vec![0.0; w.len()];
        let mut g_new = vec![0.0; w.len()];
        while iterations < solver.max_iter {
            if g.iter().all(|v| v.abs() <= solver.gtol) {
                converged = true;
                break;
            }
            iterations += 1;
            let mut d = direction(&g, &pairs);
            let mut slope = dot(&g, &d);
            if slope >= 0.0 {
                // Not a descent direction (only from rounding): restart from steepest descent.
                pairs.clear();
                d = g.iter().map(|v| -v).collect();
                slope = dot(&g, &d);
            }
            // First step without curvature information: unit length, as the gradient's scale is arbitrary.
            let mut step = if pairs.is_empty() { 1.0 / dot(&d, &d).sqrt().max(1e-12) } else { 1.0 };
            let mut accepted = None;
            for _ in 0..40 {
                w_new.iter_mut().zip(&w).zip(&d).for_each(|((wn, &w), &d)| *wn = w + step * d);
                let f_new = problem.value_and_grad(&w_new, &mut g_new)?;
                if f_new <= f + 1e-4 * step * slope {
                    accepted = Some(f_new);
                    break;
                }
                step *= 0.5;
            }
            let Some(f_new) = accepted else {
                // No decrease along a descent direction: the minimum, to rounding.
                converged = true;
                break;
            };
            let s: Vec<f64> = w_new.iter().zip(&w).map(|(a, b)| a - b).collect();
            let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &yv);
            // Keep the pair only with positive curvature, so the implied Hessian stays positive definite.
            if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&yv, &yv).sqrt() {
                if pairs.len() == solver.memory {
                    pairs.remove(0);
                }
                pairs.push((s, yv, 1.0 / sy));
            }
            std::mem::swap(&mut w, &mut w_new);
            std::mem::swap(&mut g, &mut g_new);
            f = f_new;
        }
        Ok(LogisticRegression { classes, dim, weights: w, iterations, converged })
    }

    /// The class scores `[n, classes]` of `x [n, dim]`.
    pub fn decision_function(&self, x: &[f32]) -> Vec<f64> {
        let cols = self.dim + 1;
        let mut out = Vec::with_capacity(x.len() / self.dim.max(1) * self.classes);
        for row in x.chunks_exact(self.dim.max(1)) {
            for w in self.weights.chunks_exact(cols) {
                out.push(row.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum::<f64>() + w[self.dim]);
            }
        }
        out
    }

    /// The most likely class of each row of `x [n, dim]` (ties: the lower class index).
    pub fn predict(&self, x: &[f32]) -> Vec<usize> {
        self.decision_function(x)
            .chunks_exact(self.classes)
            .map(|row| row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best }))
            .collect()
    }

    /// Fraction of rows of `x` predicted as their label (0 for no rows).
    pub fn accuracy(&self, x: &[f32], y: &[usize]) -> f64 {
        if y.is_empty() {
            return 0.0;
        }
        let hits = self.predict(x).iter().zip(y).filter(|(p, l)| p == l).count();
        hits as f64 / y.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient against central differences, on a small random problem with a penalty.
    #[test]
    fn gradient_matches_central_differences() {
        let mut rng = crate::testing::rng(5);
        let (n, dim, classes) = (7, 3, 4);
        let x: Vec<f64> = crate::testing::normal::<f64>(&mut rng, n * (dim + 1), 1.0);
        let y = [0, 1, 2, 3, 1, 2, 0];
        let problem = Problem { x, y: &y, n, cols: dim + 1, classes, l2: 0.3, cpu: CpuBackend::new() };
        let w: Vec<f64> = crate::testing::normal::<f64>(&mut rng, classes * (dim + 1), 0.5);
        let mut grad = vec![0.0; w.len()];
        problem.value_and_grad(&w, &mut grad).unwrap();
        let mut scratch = vec![0.0; w.len()];
        for k in 0..w.len() {
            let h = 1e-6;
            let (mut plus, mut minus) = (w.clone(), w.clone());
            plus[k] += h;
            minus[k] -= h;
            let fp = problem.value_and_grad(&plus, &mut scratch).unwrap();
            let fm = problem.value_and_grad(&minus, &mut scratch).unwrap();
            let numeric = (fp - fm) / (2.0 * h);
            assert!((numeric - grad[k]).abs() < 1e-7, "entry {k}: analytic {} numeric {numeric}", grad[k]);
        }
    }

    /// At the fitted minimum the gradient vanishes.
    #[test]
    fn fit_reaches_a_stationary_point() {
        let mut rng = crate::testing::rng(6);
        let (n, dim, classes) = (40, 5, 3);
        let x: Vec<f32> = crate::testing::normal::<f32>(&mut rng, n * dim, 1.0);
        let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let model = LogisticRegression::fit(&x, &y, dim, classes, 0.01, &Solver::default(), None).unwrap();
        assert!(model.converged, "{} iterations", model.iterations);
        let xa: Vec<f64> = x.chunks_exact(dim).flat_map(|r| r.iter().map(|&v| v as f64).chain([1.0])).collect();
        let problem = Problem { x: xa, y: &y, n, cols: dim + 1, classes, l2: 0.01, cpu: CpuBackend::new() };
        let mut grad = vec![0.0; model.weights.len()];
        problem.value_and_grad(&model.weights, &mut grad).unwrap();
        assert!(grad.iter().all(|g| g.abs() < 1e-4), "{grad:?}");
    }
}
