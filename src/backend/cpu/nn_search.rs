//! Exhaustive top-k cosine search of queries against unit-norm keys (DeCLIP's nearest-neighbour supervision).

use crate::backend::Float;
use crate::error::Result;

#[allow(clippy::too_many_arguments)]
pub fn top_k<F: Float>(
    queries: &[F],
    keys: &[F],
    index: &mut [i32],
    sim: &mut [F],
    batch: usize,
    num_keys: usize,
    dim: usize,
    k: usize,
) -> Result<()> {
    todo!()
}
