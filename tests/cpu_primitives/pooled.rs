//! `Transformer::forward_pooled` / `backward_pooled` (the last block run for one token per sequence) against the full
//! forward and backward: the same pooled rows, the same input gradient and parameter gradients, for a causal Transformer
//! pooled at a different position in each sequence and a bidirectional one pooled at the first token.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::Activation;
use cliprt::model::transformer::{Transformer, TransformerInit};
use cliprt::params::ParamBuilder;
use cliprt::testing::{self, assert_close, normal, rng, seed};

type Cpu = CpuBackend<f64>;

#[test]
fn pooled_transformer_matches_the_pooled_rows_of_the_full_one() {
    let s = seed(501);
    let b = Cpu::new();
    let (batch, seq, width) = (5, 7, 16);
    for (causal, layers) in [(true, 2), (false, 3), (true, 1)] {
        // Two copies of the same Transformer with the same parameters.
        let build = |pb: &mut ParamBuilder| {
            Transformer::new(pb, width, layers, 2, 2.0, Activation::Gelu, causal, TransformerInit::Clip).unwrap()
        };
        let (mut pb_full, mut pb_pooled) = (ParamBuilder::new(), ParamBuilder::new());
        let (mut full, mut pooled) = (build(&mut pb_full), build(&mut pb_pooled));
        let mut p_full = testing::jittered_store(&b, pb_full, s, 0.3).unwrap();
        let mut p_pooled = pb_pooled.build(&b, &mut rng(s)).unwrap();
        p_pooled.set_master(&b, &p_full.download_master(&b).unwrap()).unwrap();
        let mut r = rng(s + layers as u64);
        let x: Vec<f64> = normal(&mut r, batch * seq * width, 1.0);
        let index: Vec<i32> = if causal { vec![6, 0, 3, 5, 1] } else { vec![0; batch] };
        let d_pooled: Vec<f64> = normal(&mut r, batch * width, 1.0);

        full.forward(&b, &p_full, &x, batch, seq, None).unwrap();
        let out = full.out().unwrap().to_vec();
        let mut d_out = vec![0.0; batch * seq * width];
        for (i, &t) in index.iter().enumerate() {
            let row = (i * seq + t as usize) * width;
            d_out[row..row + width].copy_from_slice(&d_pooled[i * width..(i + 1) * width]);
        }
        let mut dx_full = vec![f64::NAN; x.len()];
        full.backward(&b, &mut p_full, &x, &d_out, None, &mut dx_full).unwrap();

        pooled.forward_pooled(&b, &p_pooled, &x, batch, seq, &index).unwrap();
        let want: Vec<f64> = index
            .iter()
            .enumerate()
            .flat_map(|(i, &t)| out[(i * seq + t as usize) * width..][..width].to_vec())
            .collect();
        let label = format!("causal {causal}, {layers} layers");
        assert_close(&format!("{label}: pooled output"), s, pooled.out().unwrap(), &want, 1e-12, 1e-12);
        let mut dx = vec![f64::NAN; x.len()];
        pooled.backward_pooled(&b, &mut p_pooled, &x, &d_pooled, &mut dx).unwrap();
        assert_close(&format!("{label}: dx"), s, &dx, &dx_full, 1e-12, 1e-12);
        let (g_full, g_pooled) = (p_full.download_grads(&b).unwrap(), p_pooled.download_grads(&b).unwrap());
        assert_close(&format!("{label}: parameter gradients"), s, &g_pooled, &g_full, 1e-12, 1e-12);
    }
}
