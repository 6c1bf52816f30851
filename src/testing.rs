//! Test support shared by the unit and integration tests: seeded random inputs, closeness checks that report the seed,
//! and the central-difference gradient check (in f64, so it is not flaky).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::Float;

/// The generator every test draws from: reproducible from the printed seed.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A seed for a test: `CLIPRT_TEST_SEED` when set (to replay a failure), else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("CLIPRT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// `len` draws from N(0, std²).
pub fn normal<F: Float>(rng: &mut ChaCha8Rng, len: usize, std: f64) -> Vec<F> {
    (0..len)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            F::of_f64(z * std)
        })
        .collect()
}

/// `len` draws from U(lo, hi).
pub fn uniform<F: Float>(rng: &mut ChaCha8Rng, len: usize, lo: f64, hi: f64) -> Vec<F> {
    (0..len).map(|_| F::of_f64(rng.random_range(lo..hi))).collect()
}

/// Draws from N(0, 1) kept at least `margin` away from every point in `kinks` (ReLU at 0, …), so that central
/// differences never straddle a kink.
pub fn normal_away_from(rng: &mut ChaCha8Rng, len: usize, kinks: &[f64], margin: f64) -> Vec<f64> {
    (0..len)
        .map(|_| loop {
            let z: f64 = StandardNormal.sample(rng);
            if kinks.iter().all(|k| (z - k).abs() > margin) {
                break z;
            }
        })
        .collect()
}

/// Random integers in `0..n` as i32 (token ids, labels).
pub fn indices(rng: &mut ChaCha8Rng, len: usize, n: usize) -> Vec<i32> {
    (0..len).map(|_| rng.random_range(0..n) as i32).collect()
}

/// A vector of NaN: outputs are filled with it before a primitive runs, so an element it forgets to write fails.
pub fn poisoned<F: Float>(len: usize) -> Vec<F> {
    vec![F::nan(); len]
}

/// `Σ w·y`: projects an output onto fixed random weights, giving a scalar loss whose gradient w.r.t. y is w.
pub fn dot<F: Float>(w: &[F], y: &[F]) -> f64 {
    assert_eq!(w.len(), y.len(), "dot: lengths differ");
    w.iter().zip(y).map(|(a, b)| a.as_f64() * b.as_f64()).sum()
}

/// Asserts `got ≈ want`: relative error ‖got − want‖/‖want‖ ≤ rtol (or the error norm ≤ atol when want is tiny), no
/// NaN anywhere, and max-abs error ≤ atol + rtol·max|want|. The message names the check and the seed.
pub fn assert_close<F: Float>(label: &str, seed: u64, got: &[F], want: &[F], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{label} (seed {seed}): length {} vs {}", got.len(), want.len());
    let mut err2 = 0.0;
    let mut ref2 = 0.0;
    let mut max_abs = 0.0f64;
    let mut max_ref = 0.0f64;
    let mut worst = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_f64(), w.as_f64());
        assert!(!g.is_nan() && !w.is_nan(), "{label} (seed {seed}): NaN at {i} (got {g}, want {w})");
        let e = (g - w).abs();
        err2 += e * e;
        ref2 += w * w;
        max_ref = max_ref.max(w.abs());
        if e > max_abs {
            max_abs = e;
            worst = i;
        }
    }
    let (err, refn) = (err2.sqrt(), ref2.sqrt());
    assert!(
        err <= rtol * refn + atol && max_abs <= rtol * max_ref + atol,
        "{label} (seed {seed}): ‖err‖ = {err:.3e}, ‖ref‖ = {refn:.3e}, max|err| = {max_abs:.3e} at {worst} (got {}, want {}); rtol {rtol:e}, atol {atol:e}",
        got[worst].as_f64(),
        want[worst].as_f64()
    );
}

/// Checks an analytic gradient against central differences of a scalar function, in f64.
///
/// `x` is the point, `analytic` the gradient the backward pass produced, `f` the scalar loss (it receives a perturbed
/// copy of x). At most `max_probes` coordinates are probed (spread evenly) to keep large inputs fast. Fails with the
/// label, the seed and the worst coordinate.
pub fn check_gradient(
    label: &str,
    seed: u64,
    x: &[f64],
    analytic: &[f64],
    max_probes: usize,
    mut f: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(
        x.len(),
        analytic.len(),
        "{label} (seed {seed}): gradient length {} vs input {}",
        analytic.len(),
        x.len()
    );
    assert!(analytic.iter().all(|g| g.is_finite()), "{label} (seed {seed}): non-finite analytic gradient");
    let eps = 1e-6;
    let step = (x.len() / max_probes.max(1)).max(1);
    let mut probe = x.to_vec();
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for i in (0..x.len()).step_by(step) {
        let orig = probe[i];
        probe[i] = orig + eps;
        let plus = f(&probe);
        probe[i] = orig - eps;
        let minus = f(&probe);
        probe[i] = orig;
        let numeric = (plus - minus) / (2.0 * eps);
        let scale = 1.0f64.max(numeric.abs()).max(analytic[i].abs());
        let rel = (numeric - analytic[i]).abs() / scale;
        if rel > worst.0 || rel.is_nan() {
            worst = (rel, i, analytic[i], numeric);
        }
    }
    assert!(
        worst.0 <= 1e-5,
        "{label} (seed {seed}): gradient mismatch at {}: analytic {:.9e}, numeric {:.9e} (error {:.2e} relative to max(1, |g|))",
        worst.1,
        worst.2,
        worst.3,
        worst.0
    );
}

/// Builds a store from `pb` with generator `seed`, then moves every parameter by N(0, std²) noise from the same
/// generator, so that no gradient check runs at the initial values (zeros, ones) where gradients can vanish.
pub fn jittered_store<B: crate::backend::Backend>(
    backend: &B,
    pb: crate::params::ParamBuilder,
    seed: u64,
    std: f64,
) -> crate::Result<crate::params::ParamStore<B>> {
    let mut rng = rng(seed);
    let mut store = pb.build(backend, &mut rng)?;
    let jitter: Vec<f64> = normal(&mut rng, store.num_params(), std);
    let moved: Vec<f64> = store.download_master(backend)?.iter().zip(&jitter).map(|(a, j)| a + j).collect();
    store.set_master(backend, &moved)?;
    Ok(store)
}
