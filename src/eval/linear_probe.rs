//! Linear probe (SPEC §1.8): logistic regression on frozen image features, scored on held-out images.
//!
//! Features are first standardised per dimension with the training features' statistics (see [`standardize`]).
//! The L2 strength λ is chosen as CLIP chose C: by validation. A stratified validation split (default 20 % of each
//! class, seeded) is carved from the training features; a model is fitted on the rest for every λ of a log grid,
//! strongest first, each warm-started from the previous one; the λ with the best validation accuracy wins (ties: the
//! stronger penalty, the simpler model). The model is then refitted on all training features with that λ and scored
//! on the test features.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::logistic::{LogisticRegression, Solver};

/// Options of the probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Candidate L2 strengths (λ of [`crate::eval::logistic`]); swept strongest first.
    pub grid: Vec<f64>,
    /// Fraction of each class's training features held out for validation.
    pub val_fraction: f64,
    /// Seed of the validation split.
    pub seed: u64,
    pub solver: Solver,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            grid: (-6..=0).map(|e| 10f64.powi(e)).collect(),
            val_fraction: 0.2,
            seed: 0,
            solver: Solver::default(),
        }
    }
}

/// One point of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    pub l2: f64,
    pub val_accuracy: f64,
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Test accuracy of the refitted model.
    pub accuracy: f64,
    /// The chosen L2 strength.
    pub l2: f64,
    /// Validation accuracy at the chosen λ (`None` when the validation split was empty: see [`linear_probe`]).
    pub val_accuracy: Option<f64>,
    pub sweep: Vec<SweepPoint>,
    /// Training features of the final fit; the `n_val` validation ones are among them.
    pub n_train: usize,
    pub n_val: usize,
    pub n_test: usize,
    /// L-BFGS iterations of the final fit, and whether it converged.
    pub iterations: usize,
    pub converged: bool,
}

/// Splits indices `0..labels.len()` per class into `(first, second)`, `second` holding `round(fraction · n_c)` of
/// each class's `n_c` items, drawn by a seeded shuffle of that class's indices. A class of one item stays whole in
/// `first`; a class of two or more keeps at least one item on each side. Both lists come back sorted.
pub fn stratified_split(labels: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut by_class = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.shuffle(&mut rng);
        let n = members.len();
        let take = if n < 2 { 0 } else { ((fraction * n as f64).round() as usize).clamp(1, n - 1) };
        second.extend_from_slice(&members[..take]);
        first.extend_from_slice(&members[take..]);
    }
    first.sort_unstable();
    second.sort_unstable();
    (first, second)
}

/// The rows of `x [n, dim]` at `indices`.
pub fn gather_rows<T: Copy>(x: &[T], dim: usize, indices: &[usize]) -> Vec<T> {
    indices.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect()
}

/// Centres and scales each feature dimension by the training features' mean and standard deviation (scikit-learn's
/// `StandardScaler`; a constant dimension is only centred), applied to both sets. Unit-norm CLIP features can be
/// nearly collinear (an untrained model's all point almost the same way): unscaled, the probe then needs huge
/// weights, tiny penalties and thousands of L-BFGS iterations; scaled, one λ grid suits every model.
pub fn standardize(train_x: &[f32], test_x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (train_x.len() / dim.max(1)).max(1) as f64;
    let mut mean = vec![0f64; dim];
    for row in train_x.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64 / n);
    }
    let mut var = vec![0f64; dim];
    for row in train_x.chunks_exact(dim) {
        var.iter_mut().zip(row).zip(&mean).for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2) / n);
    }
    let scale: Vec<f64> = var.iter().map(|&v| if v > 0.0 { 1.0 / v.sqrt() } else { 1.0 }).collect();
    let apply = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).zip(&scale).map(|((&v, m), s)| ((v as f64 - m) * s) as f32))
            .collect()
    };
    (apply(train_x), apply(test_x))
}

/// Fits the probe on `train_x [n_train, dim]` and scores it on `test_x [n_test, dim]`; labels in `0..classes`.
/// When no class has two training items the validation split is empty: the sweep is skipped and the grid's middle
/// value is used.
#[allow(clippy::too_many_arguments)]
pub fn linear_probe(
    train_x: &[f32],
    train_y: &[usize],
    test_x: &[f32],
    test_y: &[usize],
    dim: usize,
    classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeReport> {
    if train_y.is_empty() || test_y.is_empty() {
        return Err(Error::Invalid {
            op: "linear probe",
            msg: format!(
                "{} training and {} test images; the probe needs at least one of each (use more images, or \
                 --no-probe)",
                train_y.len(),
                test_y.len()
            ),
        });
    }
    if cfg.grid.is_empty() {
        return Err(Error::Invalid { op: "linear probe", msg: "empty L2 grid; give at least one value".into() });
    }
    let (train_x, test_x) = &standardize(train_x, test_x, dim);
    let mut grid = cfg.grid.clone();
    grid.sort_by(|a, b| b.total_cmp(a));
    let (fit_idx, val_idx) = stratified_split(train_y, cfg.val_fraction, cfg.seed);
    let mut sweep = Vec::new();
    let (mut best_l2, mut best_val, mut warm) = (grid[grid.len() / 2], None::<f64>, None);
    if !val_idx.is_empty() {
        let (fx, fy) = (gather_rows(train_x, dim, &fit_idx), gather_rows(train_y, 1, &fit_idx));
        let (vx, vy) = (gather_rows(train_x, dim, &val_idx), gather_rows(train_y, 1, &val_idx));
        let mut previous: Option<LogisticRegression> = None;
        for &l2 in &grid {
            let model = LogisticRegression::fit(&fx, &fy, dim, classes, l2, &cfg.solver, previous.as_ref())?;
            let val_accuracy = model.accuracy(&vx, &vy);
            sweep.push(SweepPoint { l2, val_accuracy });
            // Strictly better only: on a tie the earlier (stronger) penalty stays.
            if best_val.is_none_or(|b| val_accuracy > b) {
                (best_l2, best_val, warm) = (l2, Some(val_accuracy), Some(model.clone()));
            }
            previous = Some(model);
        }
    }
    let model = LogisticRegression::fit(train_x, train_y, dim, classes, best_l2, &cfg.solver, warm.as_ref())?;
    Ok(ProbeReport {
        accuracy: model.accuracy(test_x, test_y),
        l2: best_l2,
        val_accuracy: best_val,
        sweep,
        n_train: train_y.len(),
        n_val: val_idx.len(),
        n_test: test_y.len(),
        iterations: model.iterations,
        converged: model.converged,
    })
}
