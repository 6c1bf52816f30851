//! Tests of backend::cpu::embedding.

use cliprt::backend::cpu::{embedding, CpuBackend};
use cliprt::backend::Backend;
use cliprt::testing::{self, check_gradient, dot, indices, normal, poisoned};
use cliprt::Error;

#[test]
fn embedding_forward_copies_table_rows() {
    // table [3, 2]; ids pick rows 2, 0, 2.
    let table = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut out = poisoned::<f32>(6);
    embedding::forward(&[2, 0, 2], &table, &mut out, 3, 2).unwrap();
    assert_eq!(out, [5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);

    let seed = testing::seed(301);
    let mut rng = testing::rng(seed);
    for &(tokens, vocab, dim) in &[(1usize, 1usize, 1usize), (7, 3, 5), (33, 50, 8)] {
        let ids = indices(&mut rng, tokens, vocab);
        let table: Vec<f32> = normal(&mut rng, vocab * dim, 1.0);
        let mut out = poisoned::<f32>(tokens * dim);
        CpuBackend::<f32>::new().embedding_forward(&ids, &table, &mut out, vocab, dim).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            assert_eq!(&out[i * dim..(i + 1) * dim], &table[id * dim..(id + 1) * dim], "token {i} (seed {seed})");
        }
    }
}

#[test]
fn embedding_grad_scatter_adds_repeated_ids() {
    let seed = testing::seed(302);
    let mut rng = testing::rng(seed);
    for &(tokens, vocab, dim) in &[(1usize, 1usize, 1usize), (9, 3, 4), (20, 6, 7)] {
        // Few ids for many tokens: most ids repeat.
        let ids = indices(&mut rng, tokens, vocab);
        let table: Vec<f64> = normal(&mut rng, vocab * dim, 1.0);
        let w: Vec<f64> = normal(&mut rng, tokens * dim, 1.0);
        // dtable accumulates: start from a known value and subtract it afterwards.
        let start: Vec<f64> = normal(&mut rng, vocab * dim, 1.0);
        let mut dtable = start.clone();
        embedding::backward(&ids, &w, &mut dtable, vocab, dim).unwrap();
        let grad: Vec<f64> = dtable.iter().zip(&start).map(|(d, s)| d - s).collect();
        check_gradient(&format!("embedding {tokens}x{vocab}x{dim}"), seed, &table, &grad, 200, |table| {
            let mut out = poisoned::<f64>(tokens * dim);
            embedding::forward(&ids, table, &mut out, vocab, dim).unwrap();
            dot(&w, &out)
        });
    }
}

#[test]
fn embedding_backward_is_a_scatter_add_in_token_order() {
    let seed = testing::seed(303);
    let mut rng = testing::rng(seed);
    let (tokens, vocab, dim) = (500usize, 7usize, 33usize);
    let ids = indices(&mut rng, tokens, vocab);
    let dout: Vec<f32> = normal(&mut rng, tokens * dim, 1.0);
    let start: Vec<f32> = normal(&mut rng, vocab * dim, 1.0);
    let mut want = start.clone();
    for (i, &id) in ids.iter().enumerate() {
        for d in 0..dim {
            want[id as usize * dim + d] += dout[i * dim + d];
        }
    }
    let mut got = start.clone();
    embedding::backward(&ids, &dout, &mut got, vocab, dim).unwrap();
    // Bit-identical: the same additions in the same order.
    assert_eq!(got, want, "seed {seed}");
}

#[test]
fn embedding_out_of_range_id_is_error() {
    let table = [0.0f32; 6];
    for bad in [3, -1, i32::MAX] {
        let ids = [0, 1, bad, 2];
        let err = embedding::forward(&ids, &table, &mut [0.0; 8], 3, 2).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Invalid { .. }), "{msg}");
        assert!(msg.contains(&bad.to_string()) && msg.contains("position 2"), "message names the id and where: {msg}");
        // The backward refuses before touching dtable.
        let mut dtable = [7.0f32; 6];
        assert!(embedding::backward(&ids, &[1.0; 8], &mut dtable, 3, 2).is_err());
        assert_eq!(dtable, [7.0; 6]);
    }
    assert!(matches!(embedding::forward(&[0], &table, &mut [0.0; 3], 3, 2), Err(Error::Shape { .. })));
    assert!(matches!(embedding::forward(&[0], &table[..5], &mut [0.0; 2], 3, 2), Err(Error::Shape { .. })));
    assert!(matches!(embedding::backward(&[0], &[0.0f32; 2], &mut [0.0; 5], 3, 2), Err(Error::Shape { .. })));
}

#[test]
fn gather_tokens_forward_picks_one_token_per_batch_row() {
    // x [2, 3, 2]; index [2, 0].
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0];
    let mut y = poisoned::<f32>(4);
    embedding::gather_tokens(&x, &[2, 0], &mut y, 2, 3, 2).unwrap();
    assert_eq!(y, [4.0, 5.0, 10.0, 11.0]);
    // Backward: zeros except the gathered rows.
    let mut dx = poisoned::<f32>(12);
    embedding::gather_tokens_backward(&[1.0, 2.0, 3.0, 4.0], &[2, 0], &mut dx, 2, 3, 2).unwrap();
    assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    // Index outside 0..seq.
    for bad in [3, -1] {
        let err = embedding::gather_tokens(&x, &[0, bad], &mut y, 2, 3, 2).unwrap_err().to_string();
        assert!(err.contains(&bad.to_string()) && err.contains("position 1"), "{err}");
        assert!(embedding::gather_tokens_backward(&[0.0f32; 4], &[bad, 0], &mut dx, 2, 3, 2).is_err());
    }
    assert!(embedding::gather_tokens(&x, &[0], &mut y, 2, 3, 2).is_err());
}

#[test]
fn gather_tokens_grad_matches_finite_differences() {
    let seed = testing::seed(304);
    let mut rng = testing::rng(seed);
    for &(batch, seq, dim) in &[(1usize, 1usize, 1usize), (3, 5, 4), (4, 2, 7)] {
        let x: Vec<f64> = normal(&mut rng, batch * seq * dim, 1.0);
        let index = indices(&mut rng, batch, seq);
        let w: Vec<f64> = normal(&mut rng, batch * dim, 1.0);
        let mut dx = poisoned::<f64>(x.len());
        CpuBackend::<f64>::new().gather_tokens_backward(&w, &index, &mut dx, batch, seq, dim).unwrap();
        check_gradient(&format!("gather {batch}x{seq}x{dim}"), seed, &x, &dx, 200, |x| {
            let mut y = poisoned::<f64>(batch * dim);
            embedding::gather_tokens(x, &index, &mut y, batch, seq, dim).unwrap();
            dot(&w, &y)
        });
    }
}
