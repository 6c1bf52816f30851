//! Embedding lookup with scatter-add backward, and token gathering (class / EOT pooling).

use rayon::prelude::*;

use crate::backend::Float;
use crate::error::{check_len, Error, Result};

/// Checks that every id lies in `0..n`; the error names the first one that does not and its position.
fn check_ids(op: &'static str, what: &str, ids: &[i32], n: usize) -> Result<()> {
    match ids.iter().position(|&id| id < 0 || id as usize >= n) {
        None => Ok(()),
        Some(pos) => {
            Err(Error::Invalid { op, msg: format!("{what} {} at position {pos} is outside 0..{n}", ids[pos]) })
        }
    }
}

/// `out[i, :] = table[ids[i], :]`, `table [vocab, dim]`, `out [ids.len(), dim]`.
pub fn forward<F: Float>(ids: &[i32], table: &[F], out: &mut [F], vocab: usize, dim: usize) -> Result<()> {
    check_len("embedding_forward", "table", table.len(), vocab * dim)?;
    check_len("embedding_forward", "out", out.len(), ids.len() * dim)?;
    check_ids("embedding_forward", "id", ids, vocab)?;
    if dim == 0 {
        return Ok(());
    }
    out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(row, &id)| {
        let id = id as usize;
        row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    });
    Ok(())
}

/// `dtable[ids[i], :] += dout[i, :]`.
///
/// Each table row is owned by one task, which adds its tokens' gradients in token order: the same sums, in the same
/// order, as a sequential scatter-add over the tokens, whatever the thread count.
pub fn backward<F: Float>(ids: &[i32], dout: &[F], dtable: &mut [F], vocab: usize, dim: usize) -> Result<()> {
    check_len("embedding_backward", "dtable", dtable.len(), vocab * dim)?;
    check_len("embedding_backward", "dout", dout.len(), ids.len() * dim)?;
    check_ids("embedding_backward", "id", ids, vocab)?;
    if dim == 0 {
        return Ok(());
    }
    // Counting sort of the token positions by id (stable, so each id's positions stay in token order):
    // the positions of id v are tokens[start[v]..start[v + 1]].
    let mut start = vec![0usize; vocab + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut next = start.clone();
    let mut tokens = vec![0usize; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        tokens[next[id as usize]] = i;
        next[id as usize] += 1;
    }
    dtable.par_chunks_mut(dim).enumerate().for_each(|(v, row)| {
        for &i in &tokens[start[v]..start[v + 1]] {
            for (d, &g) in row.iter_mut().zip(&dout[i * dim..(i + 1) * dim]) {
                *d += g;
            }
        }
    });
    Ok(())
}

/// `y[b, :] = x[b, index[b], :]` for `x [batch, seq, dim]`, `index [batch]`.
pub fn gather_tokens<F: Float>(
    x: &[F],
    index: &[i32],
    y: &mut [F],
    batch: usize,
    seq: usize,
    dim: usize,
) -> Result<()> {
    check_len("gather_tokens", "x", x.len(), batch * seq * dim)?;
    check_len("gather_tokens", "index", index.len(), batch)?;
    check_len("gather_tokens", "y", y.len(), batch * dim)?;
    check_ids("gather_tokens", "token index", index, seq)?;
    if dim == 0 {
        return Ok(());
    }
    y.par_chunks_mut(dim).zip(index.par_iter()).enumerate().for_each(|(b, (row, &s))| {
        let at = (b * seq + s as usize) * dim;
        row.copy_from_slice(&x[at..at + dim]);
    });
    Ok(())
}

/// `dx = 0` except `dx[b, index[b], :] = dy[b, :]`.
pub fn gather_tokens_backward<F: Float>(
    dy: &[F],
    index: &[i32],
    dx: &mut [F],
    batch: usize,
    seq: usize,
    dim: usize,
) -> Result<()> {
    check_len("gather_tokens_backward", "dy", dy.len(), batch * dim)?;
    check_len("gather_tokens_backward", "index", index.len(), batch)?;
    check_len("gather_tokens_backward", "dx", dx.len(), batch * seq * dim)?;
    check_ids("gather_tokens_backward", "token index", index, seq)?;
    if seq * dim == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(seq * dim).zip(index.par_iter()).enumerate().for_each(|(b, (dx_b, &s))| {
        dx_b.fill(F::zero());
        let s = s as usize;
        dx_b[s * dim..(s + 1) * dim].copy_from_slice(&dy[b * dim..(b + 1) * dim]);
    });
    Ok(())
}
