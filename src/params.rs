//! The parameter store: every trainable tensor of a model in ONE contiguous master buffer, its gradients in ONE buffer
//! of the same layout, and a compute-dtype copy that the layers read. Each tensor is a named view (open_clip's key
//! name) into them. One buffer means AdamW is one pass, gradient clipping one reduction, and a data-parallel
//! all-reduce one call (DESIGN "Memory").
//!
//! Non-trainable state (BatchNorm running statistics) lives in a second, smaller buffer with its own named layout, so
//! the optimiser never sees it.
//!
//! Building a model is two-phase: layers declare their tensors on a [`ParamBuilder`] (name, shape, initialiser) and
//! keep the returned [`ParamId`]s; the builder then draws the initial values in declaration order from one seeded
//! generator and uploads them.
//!
//! ```
//! use cliprt::backend::{cpu::CpuBackend, Backend};
//! use cliprt::nn::Linear;
//! use cliprt::params::ParamBuilder;
//!
//! let b = CpuBackend::<f32>::new();
//! let mut pb = ParamBuilder::new();
//! let mut proj = pb.scope("visual", |pb| Linear::new(pb, "proj", 4, 2, false))?;
//! let mut store = pb.build(&b, &mut cliprt::testing::rng(0))?;
//! assert_eq!(store.layout().entries()[0].name, "visual.proj.weight");
//!
//! let x = [1.0f32; 12]; // 3 rows of width 4
//! proj.forward(&b, &store, &x, 3)?;
//! let dy = [1.0f32; 6];
//! proj.backward(&b, &mut store, &x, &dy, None)?; // accumulates dW into store.grads
//! assert_eq!(store.grads, [3.0; 8]);
//! # Ok::<(), cliprt::Error>(())
//! ```

use std::collections::HashMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::{AdamW, Backend, DecaySegment, Elem, Mut, Ref};
use crate::error::{Error, Result};

/// A handle to one named tensor: where it sits in its buffer. Cheap to copy; layers keep these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId {
    pub offset: usize,
    pub len: usize,
}

impl ParamId {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Writable views of `N` tensors of a master-dtype buffer (gradients, running statistics).
pub type MasterViews<'a, B, const N: usize> = [Mut<'a, B, <B as Backend>::Master>; N];

/// Read access to all the compute-dtype weights, with writable views of `N` master-dtype tensors.
pub type WeightsAnd<'a, B, const N: usize> = (Ref<'a, B, <B as Backend>::Act>, MasterViews<'a, B, N>);

/// Read access to all the master weights, with writable views of `N` master-dtype tensors.
pub type MasterAnd<'a, B, const N: usize> = (Ref<'a, B, <B as Backend>::Master>, MasterViews<'a, B, N>);

/// How a tensor's initial values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    /// N(0, std²).
    Normal(f64),
    /// U(−bound, bound).
    Uniform(f64),
}

/// One named tensor of a layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub id: ParamId,
    pub init: Init,
}

/// Names, shapes and offsets of the tensors in one buffer, in declaration order.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    len: usize,
}

impl Layout {
    fn push(&mut self, name: &str, shape: &[usize], init: Init) -> Result<ParamId> {
        if self.by_name.contains_key(name) {
            return Err(Error::Param { name: name.into(), msg: "declared twice".into() });
        }
        let len = shape.iter().product();
        let id = ParamId { offset: self.len, len };
        self.by_name.insert(name.to_string(), self.entries.len());
        self.entries.push(Entry { name: name.to_string(), shape: shape.to_vec(), id, init });
        self.len += len;
        Ok(id)
    }
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Collects a model's tensor declarations, then draws and uploads them.
#[derive(Debug, Default)]
pub struct ParamBuilder {
    params: Layout,
    buffers: Layout,
    prefix: Vec<String>,
}

impl ParamBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with `name.` prepended to every name it declares (`visual.transformer.resblocks.0.` …).
    pub fn scope<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.prefix.push(name.to_string());
        let out = f(self);
        self.prefix.pop();
        out
    }

    fn full_name(&self, name: &str) -> String {
        let mut parts: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        parts.push(name);
        parts.join(".")
    }

    /// Declares a trainable tensor.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<ParamId> {
        let full = self.full_name(name);
        self.params.push(&full, shape, init)
    }

    /// Declares a non-trainable tensor (BatchNorm running statistics).
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<ParamId> {
        let full = self.full_name(name);
        self.buffers.push(&full, shape, init)
    }

    pub fn param_layout(&self) -> &Layout {
        &self.params
    }

    /// Draws every initial value (declaration order, one generator) and uploads the store.
    pub fn build<B: Backend>(self, backend: &B, rng: &mut ChaCha8Rng) -> Result<ParamStore<B>> {
        let params = draw(&self.params, rng);
        let buffers = draw(&self.buffers, rng);
        ParamStore::from_host(backend, self.params, self.buffers, &params, &buffers)
    }
}

fn draw(layout: &Layout, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut values = Vec::with_capacity(layout.len());
    for entry in layout.entries() {
        for _ in 0..entry.id.len {
            values.push(match entry.init {
                Init::Zeros => 0.0,
                Init::Ones => 1.0,
                Init::Constant(c) => c,
                Init::Normal(std) => {
                    let z: f64 = StandardNormal.sample(rng);
                    z * std
                }
                Init::Uniform(bound) => rng.random_range(-bound..=bound),
            });
        }
    }
    values
}

/// The parameters of one model on one backend, with their gradients and AdamW moments.
pub struct ParamStore<B: Backend> {
    layout: Layout,
    buffer_layout: Layout,
    /// Master weights (what the optimiser updates).
    pub master: B::Buf<B::Master>,
    /// Compute-dtype copy the layers read; refreshed by every optimiser step.
    pub weights: B::Buf<B::Act>,
    /// Gradients, accumulated by the backward passes; zeroed by [`ParamStore::zero_grads`].
    pub grads: B::Buf<B::Master>,
    /// Non-trainable state (BatchNorm running statistics).
    pub buffers: B::Buf<B::Master>,
    adam_m: Option<B::Buf<B::Master>>,
    adam_v: Option<B::Buf<B::Master>>,
}

impl<B: Backend> ParamStore<B> {
    /// A store holding the given host values (f64, converted to the backend's dtypes).
    pub fn from_host(
        backend: &B,
        layout: Layout,
        buffer_layout: Layout,
        params: &[f64],
        buffers: &[f64],
    ) -> Result<Self> {
        crate::error::check_len("ParamStore::from_host", "params", params.len(), layout.len())?;
        crate::error::check_len("ParamStore::from_host", "buffers", buffers.len(), buffer_layout.len())?;
        let master: Vec<B::Master> = params.iter().map(|&x| B::Master::from_real(x)).collect();
        let master = backend.upload(&master)?;
        let mut weights = backend.zeros::<B::Act>(layout.len())?;
        backend.master_to_act(B::view(&master), B::view_mut(&mut weights))?;
        let grads = backend.zeros(layout.len())?;
        let buffers: Vec<B::Master> = buffers.iter().map(|&x| B::Master::from_real(x)).collect();
        let buffers = backend.upload(&buffers)?;
        Ok(ParamStore { layout, buffer_layout, master, weights, grads, buffers, adam_m: None, adam_v: None })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn buffer_layout(&self) -> &Layout {
        &self.buffer_layout
    }
    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.layout.len()
    }

    /// The compute-dtype view of one tensor.
    pub fn weight(&self, id: ParamId) -> Ref<'_, B, B::Act> {
        B::slice(B::view(&self.weights), id.range())
    }
    /// The master view of one tensor (the logit scale is read in the master dtype).
    pub fn master_weight(&self, id: ParamId) -> Ref<'_, B, B::Master> {
        B::slice(B::view(&self.master), id.range())
    }

    pub fn id(&self, name: &str) -> Result<ParamId> {
        self.layout
            .get(name)
            .map(|e| e.id)
            .ok_or_else(|| Error::Param { name: name.into(), msg: "no such parameter".into() })
    }

    pub fn zero_grads(&mut self, backend: &B) -> Result<()> {
        backend.fill(B::view_mut(&mut self.grads), B::Master::from_real(0.0))
    }

    /// Host copies of the master weights, gradients and buffers (tests, checkpoints).
    pub fn download_master(&self, backend: &B) -> Result<Vec<f64>> {
        Ok(backend.download(B::view(&self.master))?.into_iter().map(Elem::to_real).collect())
    }
    pub fn download_grads(&self, backend: &B) -> Result<Vec<f64>> {
        Ok(backend.download(B::view(&self.grads))?.into_iter().map(Elem::to_real).collect())
    }
    pub fn download_buffers(&self, backend: &B) -> Result<Vec<f64>> {
        Ok(backend.download(B::view(&self.buffers))?.into_iter().map(Elem::to_real).collect())
    }

    /// Overwrites the master weights (and the compute copy) from host values.
    pub fn set_master(&mut self, backend: &B, values: &[f64]) -> Result<()> {
        crate::error::check_len("ParamStore::set_master", "values", values.len(), self.layout.len())?;
        let host: Vec<B::Master> = values.iter().map(|&x| B::Master::from_real(x)).collect();
        backend.write(&host, B::view_mut(&mut self.master))?;
        backend.master_to_act(B::view(&self.master), B::view_mut(&mut self.weights))
    }

    /// Weight-decay segments in open_clip's rule: decay only tensors of 2+ dimensions whose name does not contain
    /// `bn`, `ln`, `bias` or `logit_scale` (token and positional embeddings ARE decayed).
    pub fn decay_segments(&self) -> Vec<DecaySegment> {
        let mut segments: Vec<DecaySegment> = Vec::new();
        for e in self.layout.entries() {
            let name = e.name.as_str();
            let exempt = e.shape.len() < 2 || ["bn", "ln", "bias", "logit_scale"].iter().any(|k| name.contains(k));
            let decay = !exempt;
            match segments.last_mut() {
                Some(last) if last.decay == decay => last.len += e.id.len,
                _ => segments.push(DecaySegment { start: e.id.offset, len: e.id.len, decay }),
            }
        }
        segments.retain(|s| s.len > 0);
        segments
    }

    /// One AdamW step over the whole buffer (moments allocated on first use), refreshing the compute copy.
    pub fn adamw_step(&mut self, backend: &B, hp: &AdamW) -> Result<()> {
        if self.adam_m.is_none() {
            self.adam_m = Some(backend.zeros(self.layout.len())?);
            self.adam_v = Some(backend.zeros(self.layout.len())?);
        }
        let segments = self.decay_segments();
        let (m, v) = (self.adam_m.as_mut().unwrap(), self.adam_v.as_mut().unwrap());
        backend.adamw_update(
            hp,
            &segments,
            B::view_mut(&mut self.master),
            B::view(&self.grads),
            B::view_mut(m),
            B::view_mut(v),
            Some(B::view_mut(&mut self.weights)),
        )
    }

    /// The AdamW moments `(m, v)` on the host, `None` before the first step (checkpoint sidecars).
    pub fn download_adam_moments(&self, backend: &B) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        match (&self.adam_m, &self.adam_v) {
            (Some(m), Some(v)) => {
                let host = |x| -> Result<Vec<f64>> {
                    Ok(backend.download(B::view(x))?.into_iter().map(Elem::to_real).collect())
                };
                Ok(Some((host(m)?, host(v)?)))
            }
            _ => Ok(None),
        }
    }

    /// Restores the AdamW moments (resuming a run).
    pub fn set_adam_moments(&mut self, backend: &B, m: &[f64], v: &[f64]) -> Result<()> {
        crate::error::check_len("ParamStore::set_adam_moments", "m", m.len(), self.layout.len())?;
        crate::error::check_len("ParamStore::set_adam_moments", "v", v.len(), self.layout.len())?;
        let up = |x: &[f64]| backend.upload(&x.iter().map(|&x| B::Master::from_real(x)).collect::<Vec<_>>());
        self.adam_m = Some(up(m)?);
        self.adam_v = Some(up(v)?);
        Ok(())
    }

    /// L2 norm of the whole gradient buffer (one reduction).
    pub fn grad_norm(&self, backend: &B) -> Result<f64> {
        Ok(backend.sum_squares(B::view(&self.grads))?.sqrt())
    }

    /// `grads *= alpha` (gradient clipping).
    pub fn scale_grads(&mut self, backend: &B, alpha: f64) -> Result<()> {
        backend.scale_master(alpha, B::view_mut(&mut self.grads))
    }

    /// Clamps every value of one tensor's master weights to `[lo, hi]` and refreshes its compute copy (open_clip
    /// clamps the logit scale to `[0, ln 100]` after each step); returns the tensor's values after clamping.
    pub fn clamp_master(&mut self, backend: &B, id: ParamId, lo: f64, hi: f64) -> Result<Vec<f64>> {
        let values: Vec<f64> =
            backend.download(B::slice(B::view(&self.master), id.range()))?.into_iter().map(Elem::to_real).collect();
        if values.iter().all(|&x| (lo..=hi).contains(&x)) {
            return Ok(values);
        }
        let clamped: Vec<f64> = values.iter().map(|&x| x.clamp(lo, hi)).collect();
        let host: Vec<B::Master> = clamped.iter().map(|&x| B::Master::from_real(x)).collect();
        backend.write(&host, B::slice_mut(B::view_mut(&mut self.master), id.range()))?;
        backend.master_to_act(
            B::slice(B::view(&self.master), id.range()),
            B::slice_mut(B::view_mut(&mut self.weights), id.range()),
        )?;
        Ok(clamped)
    }

    /// Splits the gradient buffer into writable views of the given tensors (which must not overlap), in the order
    /// asked: a layer's backward takes its `dW` and `db` at once.
    pub fn grads_mut<const N: usize>(&mut self, ids: [ParamId; N]) -> Result<MasterViews<'_, B, N>> {
        split_views::<B, B::Master, N>(B::view_mut(&mut self.grads), ids)
    }

    /// Gradient views plus read access to all the weights, for a backward pass that needs both.
    pub fn weights_and_grads<const N: usize>(&mut self, ids: [ParamId; N]) -> Result<WeightsAnd<'_, B, N>> {
        let grads = split_views::<B, B::Master, N>(B::view_mut(&mut self.grads), ids)?;
        Ok((B::view(&self.weights), grads))
    }

    /// Gradient views plus read access to all the master weights (the logit scale is read in the master dtype).
    pub fn master_and_grads<const N: usize>(&mut self, ids: [ParamId; N]) -> Result<MasterAnd<'_, B, N>> {
        let grads = split_views::<B, B::Master, N>(B::view_mut(&mut self.grads), ids)?;
        Ok((B::view(&self.master), grads))
    }

    /// Writable views of buffer tensors (running statistics) plus read access to all the weights: a training-mode
    /// BatchNorm forward reads its affine weights while it updates its statistics.
    pub fn weights_and_buffers<const N: usize>(&mut self, ids: [ParamId; N]) -> Result<WeightsAnd<'_, B, N>> {
        let buffers = split_views::<B, B::Master, N>(B::view_mut(&mut self.buffers), ids)?;
        Ok((B::view(&self.weights), buffers))
    }
}

/// Carves disjoint writable sub-views out of one view, returned in the order of `ids`.
pub fn split_views<'a, B: Backend, T: Elem, const N: usize>(
    whole: Mut<'a, B, T>,
    ids: [ParamId; N],
) -> Result<[Mut<'a, B, T>; N]> {
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| ids[i].offset);
    for w in order.windows(2) {
        if ids[w[0]].offset + ids[w[0]].len > ids[w[1]].offset {
            return Err(Error::Invalid {
                op: "split_views",
                msg: format!("views {:?} and {:?} overlap", ids[w[0]], ids[w[1]]),
            });
        }
    }
    let total = B::len_mut(&whole);
    if let Some(&last) = order.last() {
        if ids[last].offset + ids[last].len > total {
            return Err(Error::Invalid {
                op: "split_views",
                msg: format!("view {:?} past the end ({total})", ids[last]),
            });
        }
    }
    let mut out: Vec<Option<Mut<'a, B, T>>> = (0..N).map(|_| None).collect();
    let mut rest = whole;
    let mut consumed = 0;
    for &i in &order {
        let (_, tail) = B::split_at_mut(rest, ids[i].offset - consumed);
        let (view, tail) = B::split_at_mut(tail, ids[i].len);
        out[i] = Some(view);
        rest = tail;
        consumed = ids[i].offset + ids[i].len;
    }
    Ok(out.into_iter().map(|v| v.expect("every id was placed")).collect::<Vec<_>>().try_into().ok().expect("N views"))
}
