//! What makes the CPU kernels fast without making them thread- or machine-dependent:
//!
//! - [`multiversion!`] compiles a kernel for the baseline x86-64 target, for AVX2+FMA and for AVX-512, and picks the
//!   best the CPU has at run time. The crate is built for the baseline (SSE2), so without this the compiler
//!   vectorises 4 floats wide at best; AVX-512 halves the instruction count again (GELU runs 1.9× faster with it
//!   than with AVX2 on a Zen 4, whose 512-bit units are no wider).
//! - Reductions ([`dot`], [`sum`]) keep [`LANES`] partial sums and add them in a fixed order at the end: the
//!   compiler can then vectorise them (a plain `iter().sum()` is one serial chain of additions it may not reorder),
//!   and the result depends only on the length, never on the thread count or the instruction set.
//! - [`exp`] and [`normal_cdf`] are branch-free f32 versions of `exp` and `Φ` that vectorise (libm's are scalar
//!   calls); f64, the gradient-check dtype, keeps libm.
//!
//! All compiled versions of a kernel give the same bits: they run the same operations in the same order, and a fused
//! multiply-add is written as `mul_add` (one rounding, whether it is an FMA instruction or libm's `fmaf`); Rust never
//! contracts `a·b + c` on its own.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::backend::{DType, Float};

/// Partial sums per reduction: one AVX register of f32.
pub const LANES: usize = 8;

/// The instruction sets a [`multiversion!`] kernel may be compiled for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build target's baseline (SSE2 on x86-64).
    Baseline = 0,
    /// AVX2 and FMA.
    Avx2 = 1,
    /// AVX-512 F/VL/BW/DQ, with AVX2 and FMA.
    Avx512 = 2,
}

/// The highest level kernels may use (see [`set_max_level`]).
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Avx512 as u8);

/// Caps the instruction set the kernels use, for tests and debugging: every level gives the same bits, only the speed
/// differs. Affects the whole process.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The level the kernels run at: the best this CPU supports, capped by [`set_max_level`].
pub fn level() -> Level {
    if has_avx512() {
        Level::Avx512
    } else if has_avx2_fma() {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

/// Whether kernels may use AVX-512 (F, VL, BW, DQ, with AVX2 and FMA): the CPU has it and no cap forbids it. The
/// feature checks are cached by std, so this is a few loads.
#[inline(always)]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        MAX_LEVEL.load(Ordering::Relaxed) >= Level::Avx512 as u8
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether kernels may use AVX2 and FMA: the CPU has them and no cap forbids them.
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        MAX_LEVEL.load(Ordering::Relaxed) >= Level::Avx2 as u8
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn name(args) -> ret { body }` compiled three times: for the baseline target, with AVX2+FMA and with
/// AVX-512, the best one the CPU has chosen at run time. Everything the body calls must be `#[inline(always)]` (or a
/// small closure or iterator adapter, which the compiler inlines anyway) to be compiled for the wider sets too. The
/// body must not hand work to rayon: closures run on other threads are compiled once, for the baseline.
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $bound:path),*>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                fn avx512 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$($g),*>)? ($($arg),*)
                }
                if $crate::backend::cpu::simd::has_avx512() {
                    // SAFETY: the CPU supports the features `avx512` is compiled for (checked just above).
                    return unsafe { avx512 $(::<$($g),*>)? ($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$($g),*>)? ($($arg),*)
                }
                if $crate::backend::cpu::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `avx2` is compiled for (checked just above).
                    return unsafe { avx2 $(::<$($g),*>)? ($($arg),*) };
                }
            }
            body $(::<$($g),*>)? ($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Adds the lanes of a partial-sum register in a fixed (pairwise) order.
#[inline(always)]
pub fn reduce_lanes<F: Float>(acc: [F; LANES]) -> F {
    let a = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// `Σ a_i·b_i` in a fixed order that depends only on the length: element i is multiply-added (fused) into lane
/// `i mod LANES` of one partial-sum register for every full group of LANES, the lanes are then added pairwise, and
/// the tail after the last full group in order.
///
/// One register, not several: the compiler turns this form into one vector FMA per group, while every multi-register
/// form tried was split into 2-wide pieces. Independent dot products overlap in the out-of-order window instead.
#[inline(always)]
pub fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let n = a.len().min(b.len());
    let (a8, _) = a[..n].as_chunks::<LANES>();
    let (b8, _) = b[..n].as_chunks::<LANES>();
    let mut acc = [F::zero(); LANES];
    for (a, b) in a8.iter().zip(b8) {
        for l in 0..LANES {
            acc[l] = a[l].mul_add(b[l], acc[l]);
        }
    }
    let mut total = reduce_lanes(acc);
    for i in a8.len() * LANES..n {
        total = a[i].mul_add(b[i], total);
    }
    total
}

/// `Σ a_i`, in the lane order of [`dot`].
#[inline(always)]
pub fn sum<F: Float>(a: &[F]) -> F {
    let mut acc = [F::zero(); LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut total = reduce_lanes(acc);
    for &v in tail {
        total += v;
    }
    total
}

/// `a·b + c` rounded once: an FMA instruction in the AVX2 and AVX-512 builds, libm's (slow but exact) `fmaf` in the
/// baseline build, so all give the same bits.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `e^x` in f32, branch-free (Cephes `expf`): `e^x = 2^j·e^f` with `j = round(x·log₂e)`, `f = x − j·ln 2` in
/// `[−ln2/2, ln2/2]` (ln 2 split in two so the subtraction is exact), `e^f` by a degree-6 polynomial, and `2^j`
/// applied as two factors so that results in the denormal range and overflow to +∞ come out right. Within 2 ulp of
/// the true value; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer (|x·log₂e| < 2^22 after the clamp).
    const ROUND: f32 = 12_582_912.0;
    // e^−104 rounds to 0 and e^89 to +∞, so clamping there changes nothing else.
    let x = x.clamp(-104.0, 89.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let j = shifted - ROUND;
    let f = madd(j, -LN2_LO, madd(j, -LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd(p, f, 1.398_199_9e-3);
    p = madd(p, f, 8.333_452e-3);
    p = madd(p, f, 4.166_579_6e-2);
    p = madd(p, f, 1.666_666_5e-1);
    p = madd(p, f, 0.5);
    let ef = madd(p, f * f, f) + 1.0;
    // 2^j = 2^j1·2^j2 with both halves in the normal range (j in [−150, 129]). The integer j is read from the low
    // mantissa bits of `shifted` (a float-to-int cast would not vectorise); a NaN x gives a NaN ef.
    let j = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let (j1, j2) = (j >> 1, j - (j >> 1));
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    ef * pow2(j1) * pow2(j2)
}

/// `e^x` in the kernel's dtype: [`exp_f32`] for f32, libm for f64.
#[inline(always)]
pub fn exp<F: Float>(x: F) -> F {
    if F::DTYPE == DType::F32 {
        F::of_f64(exp_f32(x.as_f64() as f32) as f64)
    } else {
        x.exp()
    }
}

/// `Φ(x) = ½(1 + erf(x/√2))`, the standard normal CDF, in f32, from Norbert Juffa's faithfully rounded `erff`
/// (<https://stackoverflow.com/a/35148199>, as used by MLX and PyTorch's Metal backend): for `|z| ≤ 0.9277` an odd
/// polynomial, beyond it `erf(|z|) = 1 − e^r(|z|)`. On the negative side `Φ = ½e^r` directly, which is never worse
/// than `½(1 + erf)` in f32 (no cancellation to 0 below x ≈ −5.5). Within a few ulp of the true value, or 3e−8 absolute
/// in the far negative tail.
#[inline(always)]
pub fn normal_cdf_f32(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = z.abs();
    let s = z * z;
    // |z| ≤ 0.9277: erf(z) = z + z·P(z²).
    let mut p = -5.967_617e-4f32;
    p = madd(p, s, 4.991_194_2e-3);
    p = madd(p, s, -2.676_813_5e-2);
    p = madd(p, s, 1.128_199_3e-1);
    p = madd(p, s, -3.761_253_4e-1);
    p = madd(p, s, 1.283_791_7e-1);
    let erf_small = madd(p, z, z);
    // |z| > 0.9277: erf(|z|) = 1 − e^r.
    let mut r = madd(-1.728_534_7e-5f32, t, 3.831_971_3e-4);
    let u = madd(-3.883_964_4e-3f32, t, 2.425_462_2e-2);
    r = madd(r, s, u);
    r = madd(r, t, -1.067_778_8e-1);
    r = madd(r, t, -6.348_467e-1);
    r = madd(r, t, -1.287_175_1e-1);
    r = madd(r, t, -t);
    let tail = 0.5 * exp_f32(r);
    if t <= 0.927_734_4 {
        0.5 + 0.5 * erf_small
    } else if z > 0.0 {
        1.0 - tail
    } else if z < 0.0 {
        tail
    } else {
        // NaN.
        z
    }
}

/// `Φ(x)` in the kernel's dtype: [`normal_cdf_f32`] for f32, libm's `erf` for f64.
#[inline(always)]
pub fn normal_cdf<F: Float>(x: F) -> F {
    if F::DTYPE == DType::F32 {
        F::of_f64(normal_cdf_f32(x.as_f64() as f32) as f64)
    } else {
        F::of_f64(0.5) * (F::one() + (x * F::of_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            let got = exp_f32(x);
            worst = worst.max(ulps(got, (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "exp_f32 worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        let tiny = exp_f32(-95.0) as f64;
        assert!((tiny / (-95f64).exp() - 1.0).abs() < 1e-3, "denormal range: {tiny}");
        let big = exp_f32(88.5) as f64;
        assert!((big / 88.5f64.exp() - 1.0).abs() < 1e-6, "top of the range: {big}");
    }

    #[test]
    fn normal_cdf_f32_is_within_a_few_ulp_of_f64() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x < 6.0 {
            let want = 0.5 * libm::erfc(-(x as f64) / std::f64::consts::SQRT_2);
            // The tail `½e^r` is accurate to about 2^−25 absolute (the polynomial is fitted for erf near ±1, as
            // float `½(1 + erf)` is), far better than the 0 that float `½(1 + erf)` gives below x ≈ −5.5.
            let err = (normal_cdf_f32(x) as f64 - want).abs();
            if err > 3e-8 {
                worst = worst.max(ulps(normal_cdf_f32(x), want));
            }
            x += 0.00731;
        }
        assert!(worst <= 4.0, "normal_cdf_f32 worst error {worst} ulp");
        assert_eq!(normal_cdf_f32(0.0), 0.5);
        assert_eq!(normal_cdf_f32(f32::INFINITY), 1.0);
        assert_eq!(normal_cdf_f32(f32::NEG_INFINITY), 0.0);
        assert!(normal_cdf_f32(f32::NAN).is_nan());
    }

    #[test]
    fn lane_reductions_match_sequential_sums_closely() {
        let a: Vec<f64> = (0..37).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-12);
        assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12);
    }
}
