//! The CPU reference backend: plain loops over slices (and the `gemm` crate for matrix products), generic over f32
//! (training) and f64 (gradient checks). It is the executable spec every other backend is compared with, so it
//! favours clarity; it is multi-threaded over independent rows with rayon, and every reduction runs in a fixed
//! sequential order so the same inputs give bit-identical outputs whatever the thread count.
//!
//! Each family of primitives lives in its own file as free functions over slices; this file only wires them into
//! [`Backend`].

pub mod activation;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod loss;
pub mod matmul;
pub mod nn_search;
pub mod norm;
pub mod optim;
pub mod simd;
pub mod small_gemm;

use std::marker::PhantomData;
use std::ops::Range;

use half::{bf16, f16};
use rayon::prelude::*;

use super::{
    Activation, AdamW, Attention, Backend, BatchNorm, ClipLoss, Conv2d, DecaySegment, Elem, Float, Gemm, Pool2d,
};
use crate::error::{check_len, Result};

/// Elements per task of the whole-buffer fills and copies (256 KiB of f32): large enough that small buffers stay on
/// one thread.
const PARALLEL_COPY_CHUNK: usize = 1 << 16;

/// The CPU reference backend computing in `F` (f32 or f64).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend<F: Float> {
    _float: PhantomData<F>,
}

impl<F: Float> CpuBackend<F> {
    pub fn new() -> Self {
        CpuBackend { _float: PhantomData }
    }
}

impl<F: Float> Backend for CpuBackend<F> {
    type Act = F;
    type Master = F;
    type Buf<T: Elem> = Vec<T>;
    type Ref<'a, T: Elem> = &'a [T];
    type Mut<'a, T: Elem> = &'a mut [T];

    fn name(&self) -> String {
        format!("cpu-{:?}", F::DTYPE).to_lowercase()
    }

    fn zeros<T: Elem>(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zeroed(); len])
    }
    fn upload<T: Elem>(&self, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }
    fn download<T: Elem>(&self, x: &[T]) -> Result<Vec<T>> {
        Ok(x.to_vec())
    }
    fn write<T: Elem>(&self, host: &[T], dst: &mut [T]) -> Result<()> {
        check_len("write", "dst", dst.len(), host.len())?;
        dst.copy_from_slice(host);
        Ok(())
    }
    fn fill<T: Elem>(&self, dst: &mut [T], value: T) -> Result<()> {
        // Split over threads: zeroing the gradients (one buffer as large as the model) is limited by one core's
        // store bandwidth otherwise.
        dst.par_chunks_mut(PARALLEL_COPY_CHUNK).for_each(|dst| dst.fill(value));
        Ok(())
    }
    fn copy<T: Elem>(&self, src: &[T], dst: &mut [T]) -> Result<()> {
        check_len("copy", "dst", dst.len(), src.len())?;
        dst.par_chunks_mut(PARALLEL_COPY_CHUNK)
            .zip(src.par_chunks(PARALLEL_COPY_CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn view<T: Elem>(buf: &Vec<T>) -> &[T] {
        buf
    }
    fn view_mut<T: Elem>(buf: &mut Vec<T>) -> &mut [T] {
        buf
    }
    fn as_ref<'a, T: Elem>(x: &'a &mut [T]) -> &'a [T] {
        x
    }
    fn reborrow<'a, T: Elem>(x: &'a mut &mut [T]) -> &'a mut [T] {
        x
    }
    fn slice<'a, T>(x: &'a [T], range: Range<usize>) -> &'a [T]
    where
        T: Elem + 'a,
    {
        &x[range]
    }
    fn slice_mut<'a, T>(x: &'a mut [T], range: Range<usize>) -> &'a mut [T]
    where
        T: Elem + 'a,
    {
        &mut x[range]
    }
    fn split_at_mut<'a, T>(x: &'a mut [T], mid: usize) -> (&'a mut [T], &'a mut [T])
    where
        T: Elem + 'a,
    {
        x.split_at_mut(mid)
    }
    fn len<T: Elem>(x: &[T]) -> usize {
        x.len()
    }
    fn len_mut<T: Elem>(x: &&mut [T]) -> usize {
        x.len()
    }

    fn master_to_act(&self, x: &[F], y: &mut [F]) -> Result<()> {
        self.copy(x, y)
    }
    fn act_to_master(&self, x: &[F], y: &mut [F]) -> Result<()> {
        self.copy(x, y)
    }
    fn cast_to_bf16(&self, x: &[F], y: &mut [bf16]) -> Result<()> {
        elementwise::cast_to_bf16(x, y)
    }
    fn cast_from_bf16(&self, x: &[bf16], y: &mut [F]) -> Result<()> {
        elementwise::cast_from_bf16(x, y)
    }
    fn cast_to_f16(&self, x: &[F], y: &mut [f16]) -> Result<()> {
        elementwise::cast_to_f16(x, y)
    }
    fn cast_from_f16(&self, x: &[f16], y: &mut [F]) -> Result<()> {
        elementwise::cast_from_f16(x, y)
    }

    fn gemm(&self, spec: &Gemm, a: &[F], b: &[F], c: &mut [F]) -> Result<()> {
        matmul::gemm(spec, a, b, c)
    }
    fn gemm_to_master(&self, spec: &Gemm, a: &[F], b: &[F], c: &mut [F]) -> Result<()> {
        matmul::gemm(spec, a, b, c)
    }
    fn add_row_vector(&self, y: &mut [F], v: &[F], rows: usize, cols: usize) -> Result<()> {
        matmul::add_row_vector(y, v, rows, cols)
    }
    fn sum_rows(&self, x: &[F], out: &mut [F], rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        matmul::sum_rows(x, out, rows, cols, accumulate)
    }

    fn add(&self, a: &[F], b: &[F], out: &mut [F]) -> Result<()> {
        elementwise::add(a, b, out)
    }
    fn axpy(&self, alpha: f64, x: &[F], y: &mut [F]) -> Result<()> {
        elementwise::axpy(alpha, x, y)
    }
    fn scale(&self, alpha: f64, y: &mut [F]) -> Result<()> {
        elementwise::scale(alpha, y)
    }
    fn scale_master(&self, alpha: f64, y: &mut [F]) -> Result<()> {
        elementwise::scale(alpha, y)
    }
    fn activation_forward(&self, kind: Activation, x: &[F], y: &mut [F]) -> Result<()> {
        activation::forward(kind, x, y)
    }
    fn activation_backward(&self, kind: Activation, x: &[F], dy: &[F], dx: &mut [F]) -> Result<()> {
        activation::backward(kind, x, dy, dx)
    }

    fn transpose(&self, x: &[F], y: &mut [F], batch: usize, rows: usize, cols: usize) -> Result<()> {
        elementwise::transpose(x, y, batch, rows, cols)
    }
    fn copy_rows(
        &self,
        src: &[F],
        src_stride: usize,
        dst: &mut [F],
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        elementwise::copy_rows(src, src_stride, dst, dst_stride, rows, cols)
    }
    fn gather_tokens(&self, x: &[F], index: &[i32], y: &mut [F], batch: usize, seq: usize, dim: usize) -> Result<()> {
        embedding::gather_tokens(x, index, y, batch, seq, dim)
    }
    fn gather_tokens_backward(
        &self,
        dy: &[F],
        index: &[i32],
        dx: &mut [F],
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        embedding::gather_tokens_backward(dy, index, dx, batch, seq, dim)
    }

    fn embedding_forward(&self, ids: &[i32], table: &[F], out: &mut [F], vocab: usize, dim: usize) -> Result<()> {
        embedding::forward(ids, table, out, vocab, dim)
    }
    fn embedding_backward(&self, ids: &[i32], dout: &[F], dtable: &mut [F], vocab: usize, dim: usize) -> Result<()> {
        embedding::backward(ids, dout, dtable, vocab, dim)
    }

    fn layernorm_forward(
        &self,
        x: &[F],
        gamma: &[F],
        beta: &[F],
        y: &mut [F],
        mean: &mut [F],
        rstd: &mut [F],
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<()> {
        norm::layernorm_forward(x, gamma, beta, y, mean, rstd, rows, cols, eps)
    }
    fn layernorm_backward(
        &self,
        dy: &[F],
        x: &[F],
        gamma: &[F],
        mean: &[F],
        rstd: &[F],
        dx: &mut [F],
        dgamma: &mut [F],
        dbeta: &mut [F],
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        norm::layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, cols)
    }
    fn batchnorm_forward_train(
        &self,
        spec: &BatchNorm,
        x: &[F],
        gamma: Option<&[F]>,
        beta: Option<&[F]>,
        y: &mut [F],
        save_mean: &mut [F],
        save_rstd: &mut [F],
        running_mean: &mut [F],
        running_var: &mut [F],
    ) -> Result<()> {
        norm::batchnorm_forward_train(spec, x, gamma, beta, y, save_mean, save_rstd, running_mean, running_var)
    }
    fn batchnorm_forward_eval(
        &self,
        spec: &BatchNorm,
        x: &[F],
        gamma: Option<&[F]>,
        beta: Option<&[F]>,
        running_mean: &[F],
        running_var: &[F],
        y: &mut [F],
    ) -> Result<()> {
        norm::batchnorm_forward_eval(spec, x, gamma, beta, running_mean, running_var, y)
    }
    fn batchnorm_backward(
        &self,
        spec: &BatchNorm,
        dy: &[F],
        x: &[F],
        gamma: Option<&[F]>,
        save_mean: &[F],
        save_rstd: &[F],
        dx: &mut [F],
        dgamma: Option<&mut [F]>,
        dbeta: Option<&mut [F]>,
    ) -> Result<()> {
        norm::batchnorm_backward(spec, dy, x, gamma, save_mean, save_rstd, dx, dgamma, dbeta)
    }
    fn l2norm_forward(&self, x: &[F], y: &mut [F], norms: &mut [F], rows: usize, cols: usize) -> Result<()> {
        norm::l2norm_forward(x, y, norms, rows, cols)
    }
    fn l2norm_backward(&self, dy: &[F], y: &[F], norms: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
        norm::l2norm_backward(dy, y, norms, dx, rows, cols)
    }

    fn conv2d_forward(&self, spec: &Conv2d, x: &[F], w: &[F], y: &mut [F]) -> Result<()> {
        conv::conv2d_forward(spec, x, w, y)
    }
    fn conv2d_backward_data(&self, spec: &Conv2d, dy: &[F], w: &[F], dx: &mut [F]) -> Result<()> {
        conv::conv2d_backward_data(spec, dy, w, dx)
    }
    fn conv2d_backward_filter(&self, spec: &Conv2d, dy: &[F], x: &[F], dw: &mut [F]) -> Result<()> {
        conv::conv2d_backward_filter(spec, dy, x, dw)
    }
    fn avgpool2d_forward(&self, spec: &Pool2d, x: &[F], y: &mut [F]) -> Result<()> {
        conv::avgpool2d_forward(spec, x, y)
    }
    fn avgpool2d_backward(&self, spec: &Pool2d, dy: &[F], dx: &mut [F]) -> Result<()> {
        conv::avgpool2d_backward(spec, dy, dx)
    }

    fn softmax_forward(&self, x: &[F], y: &mut [F], rows: usize, cols: usize) -> Result<()> {
        activation::softmax_forward(x, y, rows, cols)
    }
    fn softmax_backward(&self, y: &[F], dy: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
        activation::softmax_backward(y, dy, dx, rows, cols)
    }
    fn attention_saved_len(&self, spec: &Attention) -> usize {
        attention::saved_len(spec)
    }
    fn attention_forward(
        &self,
        spec: &Attention,
        qkv: &[F],
        key_padding: Option<&[u8]>,
        out: &mut [F],
        saved: &mut [F],
    ) -> Result<()> {
        attention::forward(spec, qkv, key_padding, out, saved)
    }
    fn attention_backward(
        &self,
        spec: &Attention,
        qkv: &[F],
        key_padding: Option<&[u8]>,
        out: &[F],
        saved: &[F],
        dout: &[F],
        dqkv: &mut [F],
    ) -> Result<()> {
        attention::backward(spec, qkv, key_padding, out, saved, dout, dqkv)
    }

    fn cross_entropy_forward(
        &self,
        logits: &[F],
        targets: &[i32],
        losses: &mut [F],
        lse: &mut [F],
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
    ) -> Result<()> {
        loss::cross_entropy_forward(logits, targets, losses, lse, rows, classes, ignore_index, label_smoothing)
    }
    fn cross_entropy_backward(
        &self,
        logits: &[F],
        targets: &[i32],
        lse: &[F],
        dlogits: &mut [F],
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
        grad_scale: f64,
    ) -> Result<()> {
        loss::cross_entropy_backward(
            logits,
            targets,
            lse,
            dlogits,
            rows,
            classes,
            ignore_index,
            label_smoothing,
            grad_scale,
        )
    }
    fn clip_loss_saved_len(&self, spec: &ClipLoss) -> usize {
        loss::clip_loss_saved_len(spec)
    }
    fn clip_loss_forward(
        &self,
        spec: &ClipLoss,
        image: &[F],
        text: &[F],
        log_scale: &[F],
        loss: &mut [F],
        saved: &mut [F],
    ) -> Result<()> {
        loss::clip_loss_forward(spec, image, text, log_scale, loss, saved)
    }
    fn clip_loss_backward(
        &self,
        spec: &ClipLoss,
        image: &[F],
        text: &[F],
        log_scale: &[F],
        saved: &[F],
        dloss: f64,
        dimage: &mut [F],
        dtext: Option<&mut [F]>,
        dlog_scale: &mut [F],
    ) -> Result<()> {
        loss::clip_loss_backward(spec, image, text, log_scale, saved, dloss, dimage, dtext, dlog_scale)
    }

    fn nn_search(
        &self,
        queries: &[F],
        keys: &[F],
        index: &mut [i32],
        sim: &mut [F],
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
    ) -> Result<()> {
        nn_search::top_k(queries, keys, index, sim, batch, num_keys, dim, k)
    }

    fn adamw_update(
        &self,
        hp: &AdamW,
        segments: &[DecaySegment],
        params: &mut [F],
        grads: &[F],
        m: &mut [F],
        v: &mut [F],
        shadow: Option<&mut [F]>,
    ) -> Result<()> {
        // The CPU computes in the master dtype, so the compute copy is the master itself, written in the same pass.
        optim::adamw_update_with_shadow(hp, segments, params, grads, m, v, shadow)
    }
    fn sum_squares(&self, x: &[F]) -> Result<f64> {
        Ok(elementwise::sum_squares(x))
    }
    fn sum(&self, x: &[F]) -> Result<f64> {
        Ok(elementwise::sum(x))
    }
}
