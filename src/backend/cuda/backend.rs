//! [`CudaBackend`]: `trait Backend` on one NVIDIA GPU.
//!
//! Each method checks nothing the launcher below it checks again; it picks the launcher (hand-written kernel,
//! cuBLASLt or cuDNN), lends it scratch from the grow-only pool, and queues the work on the one stream. Nothing here
//! waits for the GPU except `download`, `sum`, `sum_squares` (their results are host values) and the id checks of
//! `embedding_forward` / the plan of `embedding_backward` (host round trips, noted there).
//!
//! `A` is the compute dtype of activations and of the weight shadow: `bf16` for training (tensor-core GEMMs with
//! fp32 accumulation), `f32` for parity with the CPU reference (true fp32 GEMMs, no TF32). Master weights,
//! gradients, optimiser moments, statistics and losses are f32 in both.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};

use super::attention_naive::attention_naive_saved_len;
use super::bias::sum_rows_scratch_len;
use super::blas::{Blas, GemmMode, LtType};
use super::clip_loss::{clip_loss_saved_len, clip_loss_scratch_len, ClipLossPlan};
use super::dnn::Dnn;
use super::embedding::{group_by_id, GroupedRuns};
use super::launch::{cuda_error, KernelFloat};
use super::memory::{DeviceBuf, MemoryCounters, MemoryStats, ScratchPool};
use super::norm::layernorm_backward_scratch_len;
use super::optim::{reduce_scratch_len, DecayRuns};
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::backend::{
    Activation, AdamW, Attention, Backend, BatchNorm, ClipLoss, Conv2d, DType, DecaySegment, Elem, Gemm, Pool2d,
};
use crate::error::{check_len, Error, Result};

/// A compute dtype of the CUDA backend: f32 (parity) or bf16 (training).
pub trait CudaAct: Elem + KernelFloat + LtType + GemmMode<Self> + GemmMode<f32> {}
impl CudaAct for f32 {}
impl CudaAct for bf16 {}

/// The device of this process, opened once (module loading takes a moment) and shared by every backend.
pub fn shared_device() -> Result<Arc<CudaDevice>> {
    static DEVICE: OnceLock<std::result::Result<Arc<CudaDevice>, String>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            CudaDevice::new().map(Arc::new).map_err(|e| match e {
                Error::CudaUnavailable(why) => why,
                other => other.to_string(),
            })
        })
        .clone()
        .map_err(Error::CudaUnavailable)
}

/// `trait Backend` on the GPU, computing activations in `A`.
pub struct CudaBackend<A: CudaAct> {
    dev: Arc<CudaDevice>,
    blas: Blas,
    /// cuDNN, or why it is missing (then only the convolution and BatchNorm primitives fail, with that reason).
    dnn: std::result::Result<Dnn, String>,
    scratch: ScratchPool,
    counters: Arc<MemoryCounters>,
    /// The AdamW decay runs of the last segment list (the parameter layout does not change during training).
    decay_runs: Mutex<Option<(Vec<DecaySegment>, usize, DecayRuns)>>,
    _act: PhantomData<A>,
}

impl<A: CudaAct> std::fmt::Debug for CudaBackend<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("act", &A::DTYPE).field("device", &self.dev).finish()
    }
}

impl<A: CudaAct> CudaBackend<A> {
    /// The backend on device 0: [`Error::CudaUnavailable`] (never a panic) without a GPU, a driver, cuBLASLt or
    /// compiled kernels. A missing cuDNN is reported by the convolution and BatchNorm primitives only.
    pub fn new() -> Result<Self> {
        let dev = shared_device()?;
        let blas = Blas::new(&dev)?;
        let dnn = Dnn::new(&dev).map_err(|e| e.to_string());
        let counters = Arc::new(MemoryCounters::default());
        let scratch = ScratchPool::new(dev.stream().clone(), counters.clone());
        Ok(CudaBackend { dev, blas, dnn, scratch, counters, decay_runs: Mutex::new(None), _act: PhantomData })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub fn blas(&self) -> &Blas {
        &self.blas
    }

    /// cuDNN, or the reason it could not be loaded.
    pub fn dnn(&self) -> Result<&Dnn> {
        self.dnn.as_ref().map_err(|why| Error::CudaUnavailable(why.clone()))
    }

    /// Allocations and bytes so far (buffers and scratch).
    pub fn memory_stats(&self) -> MemoryStats {
        self.counters.snapshot()
    }

    /// Bytes held by the scratch pool.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.bytes()
    }

    fn stream_ptr(&self) -> cudarc::driver::sys::CUstream {
        self.dev.stream().cu_stream()
    }

    /// Copies a host slice into a device view of the same length (any device type, e.g. the u32 plans and u64
    /// flags that are not `Elem`s).
    fn write_raw<T: cudarc::driver::DeviceRepr>(&self, host: &[T], mut dst: CudaMut<'_, T>) -> Result<()> {
        self.dev.write_into(host, &mut dst)
    }

    fn bind(&self) -> Result<()> {
        self.dev.context().bind_to_thread().map_err(cuda_error("cuCtxSetCurrent"))
    }
}

/// The same view seen as `U` when `T` and `U` are the same type (generic code dispatching on `A::DTYPE`).
fn same_ref<'a, T: Elem, U: Elem>(x: CudaRef<'a, T>) -> CudaRef<'a, U> {
    assert_eq!(T::DTYPE, U::DTYPE, "view reinterpreted across element types");
    // SAFETY: T and U are the same type (same DTYPE tag, and DTYPE is unique per Elem type).
    unsafe { CudaRef::from_raw(x.ptr(), x.len()) }
}

fn same_mut<'a, T: Elem, U: Elem>(x: CudaMut<'a, T>) -> CudaMut<'a, U> {
    assert_eq!(T::DTYPE, U::DTYPE, "view reinterpreted across element types");
    // SAFETY: as in `same_ref`; the borrow moves with the view.
    unsafe { CudaMut::from_raw(x.ptr(), x.len()) }
}

impl<A: CudaAct> Backend for CudaBackend<A> {
    type Act = A;
    type Master = f32;
    type Buf<T: Elem> = DeviceBuf<T>;
    type Ref<'a, T: Elem> = CudaRef<'a, T>;
    type Mut<'a, T: Elem> = CudaMut<'a, T>;

    fn name(&self) -> String {
        format!("cuda-{:?}", A::DTYPE).to_lowercase()
    }

    // ----------------------------------------------------------------------------------------------- memory --------
    fn zeros<T: Elem>(&self, len: usize) -> Result<DeviceBuf<T>> {
        self.bind()?;
        DeviceBuf::zeros(self.dev.stream(), &self.counters, len)
    }
    fn upload<T: Elem>(&self, host: &[T]) -> Result<DeviceBuf<T>> {
        let mut buf = self.zeros::<T>(host.len())?;
        self.write(host, buf.view_mut())?;
        Ok(buf)
    }
    fn download<T: Elem>(&self, x: CudaRef<'_, T>) -> Result<Vec<T>> {
        let mut host = bytemuck::zeroed_vec::<T>(x.len());
        self.dev.download_into(x, &mut host)?;
        Ok(host)
    }
    fn write<T: Elem>(&self, host: &[T], dst: CudaMut<'_, T>) -> Result<()> {
        self.write_raw(host, dst)
    }
    fn fill<T: Elem>(&self, mut dst: CudaMut<'_, T>, value: T) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if bytemuck::bytes_of(&value).iter().all(|&b| b == 0) {
            self.bind()?;
            // SAFETY: dst covers num_bytes() bytes.
            return unsafe {
                cudarc::driver::result::memset_d8_async(dst.ptr(), 0, dst.num_bytes(), self.stream_ptr())
            }
            .map_err(cuda_error("fill (cuMemsetD8Async)"));
        }
        self.dev.fill(&mut dst, value)
    }
    fn copy<T: Elem>(&self, src: CudaRef<'_, T>, dst: CudaMut<'_, T>) -> Result<()> {
        check_len("copy", "dst", dst.len(), src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both views hold src.num_bytes() bytes and do not overlap (a write view is exclusive).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr(), src.ptr(), src.num_bytes(), self.stream_ptr()) }
            .map_err(cuda_error("copy (cuMemcpyDtoDAsync)"))
    }
    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn view<T: Elem>(buf: &DeviceBuf<T>) -> CudaRef<'_, T> {
        buf.view()
    }
    fn view_mut<T: Elem>(buf: &mut DeviceBuf<T>) -> CudaMut<'_, T> {
        buf.view_mut()
    }
    fn as_ref<'a, T: Elem>(x: &'a CudaMut<'_, T>) -> CudaRef<'a, T> {
        x.as_ref()
    }
    fn reborrow<'a, T: Elem>(x: &'a mut CudaMut<'_, T>) -> CudaMut<'a, T> {
        x.reborrow()
    }
    fn slice<'a, T>(x: CudaRef<'a, T>, range: Range<usize>) -> CudaRef<'a, T>
    where
        T: Elem + 'a,
    {
        x.slice(range)
    }
    fn slice_mut<'a, T>(x: CudaMut<'a, T>, range: Range<usize>) -> CudaMut<'a, T>
    where
        T: Elem + 'a,
    {
        x.slice(range)
    }
    fn split_at_mut<'a, T>(x: CudaMut<'a, T>, mid: usize) -> (CudaMut<'a, T>, CudaMut<'a, T>)
    where
        T: Elem + 'a,
    {
        x.split_at(mid)
    }
    fn len<T: Elem>(x: CudaRef<'_, T>) -> usize {
        x.len()
    }
    fn len_mut<T: Elem>(x: &CudaMut<'_, T>) -> usize {
        x.len()
    }

    // ----------------------------------------------------------------------------------------------- casts ---------
    fn master_to_act(&self, x: CudaRef<'_, f32>, y: CudaMut<'_, A>) -> Result<()> {
        match A::DTYPE {
            DType::BF16 => self.dev.cast_f32_to_bf16(&x, &mut same_mut(y)),
            _ => self.copy(x, same_mut(y)),
        }
    }
    fn act_to_master(&self, x: CudaRef<'_, A>, y: CudaMut<'_, f32>) -> Result<()> {
        match A::DTYPE {
            DType::BF16 => self.dev.cast_bf16_to_f32(&same_ref(x), &mut { y }),
            _ => self.copy(same_ref(x), y),
        }
    }
    fn cast_to_bf16(&self, x: CudaRef<'_, f32>, mut y: CudaMut<'_, bf16>) -> Result<()> {
        self.dev.cast_f32_to_bf16(&x, &mut y)
    }
    fn cast_from_bf16(&self, x: CudaRef<'_, bf16>, mut y: CudaMut<'_, f32>) -> Result<()> {
        self.dev.cast_bf16_to_f32(&x, &mut y)
    }
    fn cast_to_f16(&self, x: CudaRef<'_, f32>, mut y: CudaMut<'_, f16>) -> Result<()> {
        self.dev.cast_f32_to_f16(&x, &mut y)
    }
    fn cast_from_f16(&self, x: CudaRef<'_, f16>, mut y: CudaMut<'_, f32>) -> Result<()> {
        self.dev.cast_f16_to_f32(&x, &mut y)
    }

    // ----------------------------------------------------------------------------------------------- GEMM ----------
    fn gemm(&self, spec: &Gemm, a: CudaRef<'_, A>, b: CudaRef<'_, A>, mut c: CudaMut<'_, A>) -> Result<()> {
        self.blas.gemm::<A, A>(spec, &a, &b, &mut c)
    }
    fn gemm_bias(
        &self,
        spec: &Gemm,
        a: CudaRef<'_, A>,
        b: CudaRef<'_, A>,
        bias: CudaRef<'_, A>,
        mut c: CudaMut<'_, A>,
    ) -> Result<()> {
        self.blas.gemm_bias::<A, A>(spec, &a, &b, &bias, &mut c)
    }
    fn gemm_to_master(&self, spec: &Gemm, a: CudaRef<'_, A>, b: CudaRef<'_, A>, mut c: CudaMut<'_, f32>) -> Result<()> {
        self.blas.gemm::<A, f32>(spec, &a, &b, &mut c)
    }
    fn add_row_vector(&self, mut y: CudaMut<'_, A>, v: CudaRef<'_, A>, rows: usize, cols: usize) -> Result<()> {
        self.dev.add_row_vector(&mut y, &v, rows, cols)
    }
    fn sum_rows(
        &self,
        x: CudaRef<'_, A>,
        mut out: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.scratch.with("sum_rows", sum_rows_scratch_len(rows, cols), |mut s| {
            self.dev.sum_rows(&x, &mut out, rows, cols, accumulate, &mut s)
        })
    }

    // ----------------------------------------------------------------------------------------------- element-wise --
    fn add(&self, a: CudaRef<'_, A>, b: CudaRef<'_, A>, mut out: CudaMut<'_, A>) -> Result<()> {
        self.dev.add(&a, &b, &mut out)
    }
    fn axpy(&self, alpha: f64, x: CudaRef<'_, A>, mut y: CudaMut<'_, A>) -> Result<()> {
        self.dev.axpy(alpha, &x, &mut y)
    }
    fn scale(&self, alpha: f64, mut y: CudaMut<'_, A>) -> Result<()> {
        self.dev.scale(alpha, &mut y)
    }
    fn scale_master(&self, alpha: f64, mut y: CudaMut<'_, f32>) -> Result<()> {
        self.dev.scale(alpha, &mut y)
    }
    fn activation_forward(&self, kind: Activation, x: CudaRef<'_, A>, mut y: CudaMut<'_, A>) -> Result<()> {
        self.dev.activation_forward(kind, &x, &mut y)
    }
    fn activation_backward(
        &self,
        kind: Activation,
        x: CudaRef<'_, A>,
        dy: CudaRef<'_, A>,
        mut dx: CudaMut<'_, A>,
    ) -> Result<()> {
        self.dev.activation_backward(kind, &x, &dy, &mut dx)
    }

    // ----------------------------------------------------------------------------------------------- layout --------
    fn transpose(
        &self,
        x: CudaRef<'_, A>,
        mut y: CudaMut<'_, A>,
        batch: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.dev.transpose(&x, &mut y, batch, rows, cols)
    }
    fn copy_rows(
        &self,
        src: CudaRef<'_, A>,
        src_stride: usize,
        mut dst: CudaMut<'_, A>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.dev.copy_rows(&src, src_stride, &mut dst, dst_stride, rows, cols)
    }
    fn gather_tokens(
        &self,
        x: CudaRef<'_, A>,
        index: CudaRef<'_, i32>,
        mut y: CudaMut<'_, A>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        self.scratch
            .with("flag", 1, |mut bad| self.dev.gather_tokens_checked(&x, &index, &mut y, batch, seq, dim, &mut bad))
    }
    fn gather_tokens_backward(
        &self,
        dy: CudaRef<'_, A>,
        index: CudaRef<'_, i32>,
        mut dx: CudaMut<'_, A>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        self.scratch.with("flag", 1, |mut bad| {
            self.dev.gather_tokens_backward_checked(&dy, &index, &mut dx, batch, seq, dim, &mut bad)
        })
    }

    // ----------------------------------------------------------------------------------------------- embedding -----
    /// Waits for the kernel: the ids are checked on the device and a bad one is reported (one word read back).
    fn embedding_forward(
        &self,
        ids: CudaRef<'_, i32>,
        table: CudaRef<'_, A>,
        mut out: CudaMut<'_, A>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        self.scratch
            .with("flag", 1, |mut bad| self.dev.embedding_forward_checked(&ids, &table, &mut out, vocab, dim, &mut bad))
    }
    /// Reads the ids back to group them by id on the host (a stable counting sort: each table row is then summed
    /// in token order by one thread per column, no float atomics); the groups go to the device through scratch.
    fn embedding_backward(
        &self,
        ids: CudaRef<'_, i32>,
        dout: CudaRef<'_, A>,
        mut dtable: CudaMut<'_, f32>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        check_len("embedding_backward", "dtable", dtable.len(), vocab * dim)?;
        check_len("embedding_backward", "dout", dout.len(), ids.len() * dim)?;
        let mut host_ids = vec![0i32; ids.len()];
        self.dev.download_into(ids, &mut host_ids)?;
        let g = group_by_id(&host_ids, vocab)?;
        // Sized for the most distinct ids these tokens can have, not for this batch's count, so that the scratch
        // stops growing after the first step whatever the captions.
        let most_runs = host_ids.len().min(vocab);
        let total = host_ids.len() + 2 * most_runs + 1;
        self.scratch.with("embedding_plan", total, |plan: CudaMut<'_, u32>| {
            let used = g.positions.len() + g.run_start.len() + g.run_id.len();
            let (mut positions, rest) = plan.slice(..used).split_at(g.positions.len());
            let (mut run_start, mut run_id) = rest.split_at(g.run_start.len());
            self.write_raw(&g.positions, positions.reborrow())?;
            self.write_raw(&g.run_start, run_start.reborrow())?;
            self.write_raw(&g.run_id, run_id.reborrow())?;
            let runs = GroupedRuns {
                positions: positions.as_ref(),
                run_start: run_start.as_ref(),
                run_id: run_id.as_ref(),
                runs: g.run_id.len(),
                tokens: host_ids.len(),
                vocab,
            };
            self.dev.embedding_backward_grouped(&runs, &dout, &mut dtable, dim)
        })
    }

    // ----------------------------------------------------------------------------------------------- norms ---------
    fn layernorm_forward(
        &self,
        x: CudaRef<'_, A>,
        gamma: CudaRef<'_, A>,
        beta: CudaRef<'_, A>,
        mut y: CudaMut<'_, A>,
        mut mean: CudaMut<'_, f32>,
        mut rstd: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<()> {
        self.dev.layernorm_forward(&x, &gamma, &beta, &mut y, &mut mean, &mut rstd, rows, cols, eps)
    }
    fn layernorm_backward(
        &self,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        gamma: CudaRef<'_, A>,
        mean: CudaRef<'_, f32>,
        rstd: CudaRef<'_, f32>,
        mut dx: CudaMut<'_, A>,
        mut dgamma: CudaMut<'_, f32>,
        mut dbeta: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.scratch.with("layernorm_backward", layernorm_backward_scratch_len(rows, cols), |mut s| {
            self.dev.layernorm_backward(
                &dy,
                &x,
                &gamma,
                &mean,
                &rstd,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
                &mut s,
                rows,
                cols,
            )
        })
    }
    fn batchnorm_forward_train(
        &self,
        spec: &BatchNorm,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        beta: Option<CudaRef<'_, A>>,
        mut y: CudaMut<'_, A>,
        mut save_mean: CudaMut<'_, f32>,
        mut save_rstd: CudaMut<'_, f32>,
        mut running_mean: CudaMut<'_, f32>,
        mut running_var: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.dnn()?.batchnorm_forward_train(
            &self.dev,
            spec,
            &x,
            gamma.as_ref(),
            beta.as_ref(),
            &mut y,
            &mut save_mean,
            &mut save_rstd,
            &mut running_mean,
            &mut running_var,
        )
    }
    fn batchnorm_forward_eval(
        &self,
        spec: &BatchNorm,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        beta: Option<CudaRef<'_, A>>,
        running_mean: CudaRef<'_, f32>,
        running_var: CudaRef<'_, f32>,
        mut y: CudaMut<'_, A>,
    ) -> Result<()> {
        self.dnn()?.batchnorm_forward_eval(
            &self.dev,
            spec,
            &x,
            gamma.as_ref(),
            beta.as_ref(),
            &running_mean,
            &running_var,
            &mut y,
        )
    }
    fn batchnorm_backward(
        &self,
        spec: &BatchNorm,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        save_mean: CudaRef<'_, f32>,
        save_rstd: CudaRef<'_, f32>,
        mut dx: CudaMut<'_, A>,
        mut dgamma: Option<CudaMut<'_, f32>>,
        mut dbeta: Option<CudaMut<'_, f32>>,
    ) -> Result<()> {
        self.dnn()?.batchnorm_backward(
            &self.dev,
            spec,
            &dy,
            &x,
            gamma.as_ref(),
            &save_mean,
            &save_rstd,
            &mut dx,
            dgamma.as_mut(),
            dbeta.as_mut(),
        )
    }
    fn l2norm_forward(
        &self,
        x: CudaRef<'_, A>,
        mut y: CudaMut<'_, A>,
        mut norms: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.dev.l2norm_forward(&x, &mut y, &mut norms, rows, cols)
    }
    fn l2norm_backward(
        &self,
        dy: CudaRef<'_, A>,
        y: CudaRef<'_, A>,
        norms: CudaRef<'_, f32>,
        mut dx: CudaMut<'_, A>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.dev.l2norm_backward(&dy, &y, &norms, &mut dx, rows, cols)
    }

    // ----------------------------------------------------------------------------------------------- convolution ---
    fn conv2d_forward(&self, spec: &Conv2d, x: CudaRef<'_, A>, w: CudaRef<'_, A>, mut y: CudaMut<'_, A>) -> Result<()> {
        self.dnn()?.conv2d_forward(&self.dev, spec, &x, &w, &mut y)
    }
    fn conv2d_backward_data(
        &self,
        spec: &Conv2d,
        dy: CudaRef<'_, A>,
        w: CudaRef<'_, A>,
        mut dx: CudaMut<'_, A>,
    ) -> Result<()> {
        self.dnn()?.conv2d_backward_data(&self.dev, spec, &dy, &w, &mut dx)
    }
    fn conv2d_backward_filter(
        &self,
        spec: &Conv2d,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        mut dw: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.dnn()?.conv2d_backward_filter(&self.dev, spec, &dy, &x, &mut dw)
    }
    fn avgpool2d_forward(&self, spec: &Pool2d, x: CudaRef<'_, A>, mut y: CudaMut<'_, A>) -> Result<()> {
        self.dev.avgpool2d_forward(spec, &x, &mut y)
    }
    fn avgpool2d_backward(&self, spec: &Pool2d, dy: CudaRef<'_, A>, mut dx: CudaMut<'_, A>) -> Result<()> {
        self.dev.avgpool2d_backward(spec, &dy, &mut dx)
    }

    // ----------------------------------------------------------------------------------------------- attention -----
    fn softmax_forward(&self, x: CudaRef<'_, A>, mut y: CudaMut<'_, A>, rows: usize, cols: usize) -> Result<()> {
        self.dev.softmax_forward(&x, &mut y, rows, cols)
    }
    fn softmax_backward(
        &self,
        y: CudaRef<'_, A>,
        dy: CudaRef<'_, A>,
        mut dx: CudaMut<'_, A>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.dev.softmax_backward(&y, &dy, &mut dx, rows, cols)
    }
    /// bf16 activations with head dim 32, 64 or 128 run the fused flash kernel (kernels/attention.cu), which saves
    /// only the row log-sum-exps `[batch, heads, seq_q]`; other head dims, and f32 (the parity mode), run the naive
    /// kernel (kernels/attention_naive.cu), which saves the probabilities `[batch, heads, seq_q, seq_k]`. The layer
    /// sizes `saved` from this and never reads it.
    fn attention_saved_len(&self, spec: &Attention) -> usize {
        if A::DTYPE == DType::BF16 && super::attention::attention_supported(spec) {
            super::attention::attention_saved_len(spec)
        } else {
            attention_naive_saved_len(spec)
        }
    }
    fn attention_forward(
        &self,
        spec: &Attention,
        qkv: CudaRef<'_, A>,
        key_padding: Option<CudaRef<'_, u8>>,
        mut out: CudaMut<'_, A>,
        mut saved: CudaMut<'_, f32>,
    ) -> Result<()> {
        if A::DTYPE == DType::BF16 && super::attention::attention_supported(spec) {
            let mut out = same_mut::<A, bf16>(out);
            return self.dev.attention_forward(spec, &same_ref(qkv), key_padding.as_ref(), &mut out, &mut saved);
        }
        self.dev.attention_naive_forward(spec, &qkv, key_padding.as_ref(), &mut out, &mut saved)
    }
    fn attention_backward(
        &self,
        spec: &Attention,
        qkv: CudaRef<'_, A>,
        key_padding: Option<CudaRef<'_, u8>>,
        out: CudaRef<'_, A>,
        saved: CudaRef<'_, f32>,
        dout: CudaRef<'_, A>,
        mut dqkv: CudaMut<'_, A>,
    ) -> Result<()> {
        if A::DTYPE == DType::BF16 && super::attention::attention_supported(spec) {
            let len = super::attention::attention_scratch_len(spec);
            let (qkv, out, dout) = (same_ref::<A, bf16>(qkv), same_ref::<A, bf16>(out), same_ref::<A, bf16>(dout));
            let mut dqkv = same_mut::<A, bf16>(dqkv);
            return self.scratch.with("attention_backward", len, |mut s| {
                self.dev.attention_backward(spec, &qkv, key_padding.as_ref(), &out, &saved, &dout, &mut dqkv, &mut s)
            });
        }
        let len = super::attention_naive::attention_naive_scratch_len(spec);
        self.scratch.with("attention_backward", len, |mut s| {
            self.dev.attention_naive_backward(spec, &qkv, key_padding.as_ref(), &saved, &dout, &mut dqkv, &mut s)
        })
    }

    // ----------------------------------------------------------------------------------------------- losses --------
    fn cross_entropy_forward(
        &self,
        logits: CudaRef<'_, A>,
        targets: CudaRef<'_, i32>,
        mut losses: CudaMut<'_, f32>,
        mut lse: CudaMut<'_, f32>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
    ) -> Result<()> {
        self.scratch.with("flag", 1, |mut bad| {
            self.dev.cross_entropy_forward_checked(
                &logits,
                &targets,
                &mut losses,
                &mut lse,
                rows,
                classes,
                ignore_index,
                label_smoothing,
                &mut bad,
            )
        })
    }
    fn cross_entropy_backward(
        &self,
        logits: CudaRef<'_, A>,
        targets: CudaRef<'_, i32>,
        lse: CudaRef<'_, f32>,
        mut dlogits: CudaMut<'_, A>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.dev.cross_entropy_backward(
            &logits,
            &targets,
            &lse,
            &mut dlogits,
            rows,
            classes,
            ignore_index,
            label_smoothing,
            grad_scale,
        )
    }
    fn clip_loss_saved_len(&self, spec: &ClipLoss) -> usize {
        clip_loss_saved_len(spec)
    }
    fn clip_loss_forward(
        &self,
        spec: &ClipLoss,
        image: CudaRef<'_, A>,
        text: CudaRef<'_, A>,
        log_scale: CudaRef<'_, f32>,
        mut loss: CudaMut<'_, f32>,
        mut saved: CudaMut<'_, f32>,
    ) -> Result<()> {
        // The fused path for every spec (the materialised clip_loss_naive stays as the bench baseline). One scratch
        // size for forward and backward, so the pool grows once.
        spec.validate("clip_loss_forward")?;
        let plan = ClipLossPlan::new(spec);
        self.scratch.with("clip_loss", clip_loss_scratch_len::<A>(spec, &plan, true), |mut s| {
            self.dev.clip_loss_forward(spec, &plan, &image, &text, &log_scale, &mut loss, &mut saved, &mut s)
        })
    }
    fn clip_loss_backward(
        &self,
        spec: &ClipLoss,
        image: CudaRef<'_, A>,
        text: CudaRef<'_, A>,
        log_scale: CudaRef<'_, f32>,
        saved: CudaRef<'_, f32>,
        dloss: f64,
        mut dimage: CudaMut<'_, A>,
        mut dtext: Option<CudaMut<'_, A>>,
        mut dlog_scale: CudaMut<'_, f32>,
    ) -> Result<()> {
        spec.validate("clip_loss_backward")?;
        let plan = ClipLossPlan::new(spec);
        self.scratch.with("clip_loss", clip_loss_scratch_len::<A>(spec, &plan, true), |mut s| {
            self.dev.clip_loss_backward(
                &self.blas,
                spec,
                &plan,
                &image,
                &text,
                &log_scale,
                &saved,
                dloss,
                &mut dimage,
                dtext.as_mut(),
                &mut dlog_scale,
                &mut s,
            )
        })
    }

    // ----------------------------------------------------------------------------------------------- search --------
    fn nn_search(
        &self,
        queries: CudaRef<'_, A>,
        keys: CudaRef<'_, A>,
        mut index: CudaMut<'_, i32>,
        mut sim: CudaMut<'_, f32>,
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
    ) -> Result<()> {
        // The fused search (kernels/nn_queue.cu); the two-pass nn_search_naive stays as the benchmark baseline.
        self.scratch.with("nn_search", self.dev.nn_queue_scratch_len(batch, num_keys, k), |mut s| {
            self.dev.nn_queue_search(&queries, &keys, &mut index, &mut sim, batch, num_keys, dim, k, &mut s)
        })
    }

    // ----------------------------------------------------------------------------------------------- optimiser -----
    fn adamw_update(
        &self,
        hp: &AdamW,
        segments: &[DecaySegment],
        mut params: CudaMut<'_, f32>,
        grads: CudaRef<'_, f32>,
        mut m: CudaMut<'_, f32>,
        mut v: CudaMut<'_, f32>,
        shadow: Option<CudaMut<'_, A>>,
    ) -> Result<()> {
        let n = params.len();
        let mut cache = self.decay_runs.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*cache, Some((s, len, _)) if s == segments && *len == n) {
            *cache = Some((segments.to_vec(), n, self.dev.decay_runs(segments, n)?));
        }
        let (_, _, runs) = cache.as_ref().expect("filled above");
        match shadow {
            Some(mut shadow) => {
                self.dev.adamw_update_with_shadow(hp, runs, &mut params, &grads, &mut m, &mut v, &mut shadow)
            }
            None => self.dev.adamw_update(hp, runs, &mut params, &grads, &mut m, &mut v),
        }
    }
    fn sum_squares(&self, x: CudaRef<'_, f32>) -> Result<f64> {
        self.scratch.with("reduce", reduce_scratch_len(x.len()), |mut s| self.dev.sum_squares_with_scratch(&x, &mut s))
    }
    fn sum(&self, x: CudaRef<'_, f32>) -> Result<f64> {
        self.scratch.with("reduce", reduce_scratch_len(x.len()), |mut s| self.dev.sum_with_scratch(&x, &mut s))
    }
}
