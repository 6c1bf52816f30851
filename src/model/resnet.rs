//! CLIP's modified ResNet image tower (SPEC §1.2), open_clip's `ModifiedResNet`: a three-convolution stem with an
//! average pool, four stages of anti-aliased bottlenecks, and an attention-pool head.
//!
//! Names, shapes, declaration order and initialisation follow open_clip's `visual.state_dict()` (relative to the
//! `visual` scope the caller opens): `conv1.weight`, `bn1.*`, …, `layer1.0.conv1.weight`, …,
//! `layer1.0.downsample.0.weight` (the shortcut conv), `layer1.0.downsample.1.*` (its BatchNorm), …,
//! `attnpool.positional_embedding`, `attnpool.{k,q,v,c}_proj.*`. BatchNorm running statistics are in the store's
//! buffer layout; `num_batches_tracked` is a host counter on each layer ([`ModifiedResNet::batchnorms`]).
//!
//! The backward is written out layer by layer in reverse. Its intermediate gradients live in a handful of buffers
//! shared by the whole tower ([`GradScratch`]): the backward visits one layer at a time, so each buffer only needs the
//! size of the largest activation, and the tower's gradient memory stays a small multiple of one activation.

mod attnpool;
mod bottleneck;

pub use attnpool::AttentionPool2d;
pub use bottleneck::{Bottleneck, Downsample};

use crate::backend::{Activation, Backend, Elem, Mut, Ref};
use crate::error::{check_len, Error, Result};
use crate::model::config::{VisionConfig, VisionLayers};
use crate::nn::{ActivationLayer, AvgPool2d, BatchNorm2d, Conv2dLayer, Slot};
use crate::params::{ParamBuilder, ParamStore};

/// Gradient buffers shared by the stem and every bottleneck (see the module docs); each holds `len` elements and a
/// layer uses a prefix of it.
pub struct GradScratch<B: Backend> {
    /// Gradient of a block's residual sum, kept until its shortcut is done.
    d_sum: Slot<B, B::Act>,
    a: Slot<B, B::Act>,
    b: Slot<B, B::Act>,
    c: Slot<B, B::Act>,
}

impl<B: Backend> Default for GradScratch<B> {
    fn default() -> Self {
        GradScratch { d_sum: Slot::default(), a: Slot::default(), b: Slot::default(), c: Slot::default() }
    }
}

impl<B: Backend> GradScratch<B> {
    /// Sizes every buffer to `len` (allocates only when `len` changes).
    fn ensure(&mut self, backend: &B, len: usize) -> Result<()> {
        for slot in [&mut self.d_sum, &mut self.a, &mut self.b, &mut self.c] {
            slot.ensure(backend, len)?;
        }
        Ok(())
    }
}

/// The first `len` elements of a shared buffer, to read.
fn part<B: Backend, T: Elem>(slot: &Slot<B, T>, len: usize) -> Result<Ref<'_, B, T>> {
    let whole = slot.get()?;
    check_len_at_least(B::len(whole), len)?;
    Ok(B::slice(whole, 0..len))
}

/// The first `len` elements of a shared buffer, to write.
fn part_mut<B: Backend, T: Elem>(slot: &mut Slot<B, T>, len: usize) -> Result<Mut<'_, B, T>> {
    let whole = slot.get_mut()?;
    check_len_at_least(B::len_mut(&whole), len)?;
    Ok(B::slice_mut(whole, 0..len))
}

fn check_len_at_least(have: usize, len: usize) -> Result<()> {
    crate::error::check_min_len("ModifiedResNet", "gradient scratch", have, len)
}

pub struct ModifiedResNet<B: Backend> {
    // The stem: three 3×3 convolutions (the first strided), each with BatchNorm and ReLU, then AvgPool 2.
    pub conv1: Conv2dLayer<B>,
    pub bn1: BatchNorm2d<B>,
    pub act1: ActivationLayer<B>,
    pub conv2: Conv2dLayer<B>,
    pub bn2: BatchNorm2d<B>,
    pub act2: ActivationLayer<B>,
    pub conv3: Conv2dLayer<B>,
    pub bn3: BatchNorm2d<B>,
    pub act3: ActivationLayer<B>,
    pub avgpool: AvgPool2d<B>,
    /// `layer1.0`, `layer1.1`, …, `layer4.{n-1}` in order.
    pub blocks: Vec<Bottleneck<B>>,
    pub attnpool: AttentionPool2d<B>,
    pub image_size: usize,
    pub width: usize,
    pub output_dim: usize,
    /// `(n, h, w)` of each block's input in the last forward.
    block_shapes: Vec<(usize, usize, usize)>,
    batch: usize,
    /// The gradient of the current block's output and of its input; swapped after each block.
    d_block_out: Slot<B, B::Act>,
    d_block_in: Slot<B, B::Act>,
    scratch: GradScratch<B>,
}

impl<B: Backend> ModifiedResNet<B> {
    /// Declares every tensor of open_clip's `ModifiedResNet(layers, output_dim = embed_dim, heads = 32·width /
    /// head_width, image_size, width)` under its state-dict name, in state-dict order, initialised as open_clip does.
    pub fn new(pb: &mut ParamBuilder, cfg: &VisionConfig, embed_dim: usize) -> Result<Self> {
        let bad = |msg: String| Error::Invalid { op: "ModifiedResNet", msg };
        let VisionLayers::ResNet(layers) = cfg.layers else {
            return Err(bad("vision_cfg.layers must be four integers for a ResNet".into()));
        };
        let (width, image_size) = (cfg.width, cfg.image_size);
        if width < 2 || image_size == 0 || !image_size.is_multiple_of(32) || embed_dim == 0 {
            return Err(bad(format!(
                "needs width ≥ 2, image_size a positive multiple of 32 and embed_dim > 0; got width {width}, \
                 image_size {image_size}, embed_dim {embed_dim}"
            )));
        }
        let pool_dim = 32 * width;
        if cfg.head_width == 0 || !pool_dim.is_multiple_of(cfg.head_width) {
            return Err(bad(format!("32·width = {pool_dim} is not a multiple of head_width {}", cfg.head_width)));
        }
        let half = width / 2;
        let relu = || ActivationLayer::new(Activation::Relu);

        let conv1 = Conv2dLayer::new(pb, "conv1", 3, half, 3, 2, 1, None)?;
        let bn1 = BatchNorm2d::new(pb, "bn1", half, true)?;
        let conv2 = Conv2dLayer::new(pb, "conv2", half, half, 3, 1, 1, None)?;
        let bn2 = BatchNorm2d::new(pb, "bn2", half, true)?;
        let conv3 = Conv2dLayer::new(pb, "conv3", half, width, 3, 1, 1, None)?;
        let bn3 = BatchNorm2d::new(pb, "bn3", width, true)?;

        let mut blocks = Vec::new();
        let mut inplanes = width;
        for (stage, (&count, stride)) in layers.iter().zip([1, 2, 2, 2]).enumerate() {
            let planes = width << stage;
            // open_clip's _make_layer always builds the first block, even for a count of 0.
            for j in 0..count.max(1) {
                let name = format!("layer{}.{j}", stage + 1);
                blocks.push(Bottleneck::new(pb, &name, inplanes, planes, if j == 0 { stride } else { 1 })?);
                inplanes = planes * Bottleneck::<B>::EXPANSION;
            }
        }
        let attnpool =
            AttentionPool2d::new(pb, "attnpool", image_size / 32, pool_dim, pool_dim / cfg.head_width, embed_dim)?;

        Ok(ModifiedResNet {
            conv1,
            bn1,
            act1: relu(),
            conv2,
            bn2,
            act2: relu(),
            conv3,
            bn3,
            act3: relu(),
            avgpool: AvgPool2d::new(2, 2, 0),
            blocks,
            attnpool,
            image_size,
            width,
            output_dim: embed_dim,
            block_shapes: Vec::new(),
            batch: 0,
            d_block_out: Slot::default(),
            d_block_in: Slot::default(),
            scratch: GradScratch::default(),
        })
    }

    /// Every BatchNorm with its name relative to the tower (`bn1`, `layer1.0.bn3`, `layer1.0.downsample.1`, …), in
    /// state-dict order: a checkpoint writer emits `{name}.num_batches_tracked` from each.
    pub fn batchnorms(&self) -> Vec<(String, &BatchNorm2d<B>)> {
        let mut out =
            vec![("bn1".to_string(), &self.bn1), ("bn2".to_string(), &self.bn2), ("bn3".to_string(), &self.bn3)];
        for block in &self.blocks {
            out.extend(block.batchnorms());
        }
        out
    }

    /// The same BatchNorms, writable (a checkpoint reader restores `num_batches_tracked`), in the same order.
    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        let mut out = vec![&mut self.bn1, &mut self.bn2, &mut self.bn3];
        for block in &mut self.blocks {
            out.extend(block.batchnorms_mut());
        }
        out
    }

    /// Training mode normalises with batch statistics (and updates the running ones); evaluation uses the running ones.
    pub fn set_training(&mut self, training: bool) {
        for bn in self.batchnorms_mut() {
            bn.training = training;
        }
    }

    /// `images [batch, 3, image_size, image_size]` → `out [batch, output_dim]`.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        batch: usize,
    ) -> Result<()> {
        let (n, size) = (batch, self.image_size);
        check_len("ModifiedResNet", "images", B::len(images), n * 3 * size * size)?;

        // stem: act1(bn1(conv1)) at half resolution, act2(bn2(conv2)), act3(bn3(conv3)), avgpool
        self.conv1.forward(backend, params, images, n, size, size)?;
        let (h, w) = (self.conv1.spec()?.out_h(), self.conv1.spec()?.out_w());
        self.bn1.forward(backend, params, self.conv1.out()?, n, h * w)?;
        self.act1.forward(backend, self.bn1.out()?)?;
        self.conv2.forward(backend, params, self.act1.out()?, n, h, w)?;
        self.bn2.forward(backend, params, self.conv2.out()?, n, h * w)?;
        self.act2.forward(backend, self.bn2.out()?)?;
        self.conv3.forward(backend, params, self.act2.out()?, n, h, w)?;
        self.bn3.forward(backend, params, self.conv3.out()?, n, h * w)?;
        self.act3.forward(backend, self.bn3.out()?)?;
        self.avgpool.forward(backend, self.act3.out()?, n, self.width, h, w)?;

        // layer1 … layer4
        let (mut h, mut w) = (self.avgpool.spec()?.out_h(), self.avgpool.spec()?.out_w());
        self.block_shapes.clear();
        for i in 0..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(i);
            let x = match done.last() {
                Some(prev) => prev.out()?,
                None => self.avgpool.out()?,
            };
            rest[0].forward(backend, params, x, n, h, w)?;
            self.block_shapes.push((n, h, w));
            (h, w) = rest[0].out_hw(h, w);
        }

        // attnpool
        let features = self.blocks.last().expect("at least one block per stage").out()?;
        self.attnpool.forward(backend, params, features, n)?;
        self.batch = n;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.attnpool.out()
    }

    /// `d_out [batch, output_dim]` → every parameter gradient (accumulated). No image gradient. Needs the
    /// training-mode forward of the same `images`.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
    ) -> Result<()> {
        if self.block_shapes.len() != self.blocks.len() {
            return Err(Error::Invalid { op: "ModifiedResNet", msg: "backward before forward".into() });
        }
        if self.batchnorms_mut().iter().any(|bn| !bn.training) {
            let msg = "backward needs training mode (BatchNorm with batch statistics); call set_training(true)".into();
            return Err(Error::Invalid { op: "ModifiedResNet", msg });
        }
        let n = self.batch;
        check_len("ModifiedResNet", "d_out", B::len(d_out), n * self.output_dim)?;
        // One size fits every gradient the stem and the blocks pass around.
        let stem = self.conv1.spec()?;
        let stem_len = n * self.width * stem.out_h() * stem.out_w();
        let len = self
            .blocks
            .iter()
            .zip(&self.block_shapes)
            .map(|(b, &(n, h, w))| b.scratch_len(n, h, w))
            .fold(stem_len, usize::max);
        self.d_block_out.ensure(backend, len)?;
        self.d_block_in.ensure(backend, len)?;
        self.scratch.ensure(backend, len)?;

        // attnpool                                                            d_out → d_block_out
        let features = self.blocks.last().expect("at least one block per stage").out()?;
        let features_len = B::len(features);
        self.attnpool.backward(backend, params, d_out, part_mut(&mut self.d_block_out, features_len)?)?;

        // layer4 … layer1                                                     d_block_out → d_block_in, swap
        for i in (0..self.blocks.len()).rev() {
            let (done, rest) = self.blocks.split_at_mut(i);
            let x = match done.last() {
                Some(prev) => prev.out()?,
                None => self.avgpool.out()?,
            };
            let block = &mut rest[0];
            let (out_len, in_len) = (B::len(block.out()?), B::len(x));
            let d_out = part(&self.d_block_out, out_len)?;
            let dx = part_mut(&mut self.d_block_in, in_len)?;
            block.backward(backend, params, x, d_out, dx, &mut self.scratch)?;
            std::mem::swap(&mut self.d_block_out, &mut self.d_block_in);
        }

        // the stem, from the gradient of its pooled output
        let s = &mut self.scratch;
        let pooled = B::len(self.avgpool.out()?);
        let (wide, narrow) = (B::len(self.conv3.out()?), B::len(self.conv1.out()?));
        // avgpool                                                             d_block_out → a
        self.avgpool.backward(backend, part(&self.d_block_out, pooled)?, part_mut(&mut s.a, wide)?)?;
        // act3                                                                a → b
        self.act3.backward(backend, self.bn3.out()?, part(&s.a, wide)?, part_mut(&mut s.b, wide)?)?;
        // bn3                                                                 b → a
        self.bn3.backward(backend, params, self.conv3.out()?, part(&s.b, wide)?, part_mut(&mut s.a, wide)?)?;
        // conv3                                                               a → b
        self.conv3.backward(backend, params, self.act2.out()?, part(&s.a, wide)?, Some(part_mut(&mut s.b, narrow)?))?;
        // act2                                                                b → a
        self.act2.backward(backend, self.bn2.out()?, part(&s.b, narrow)?, part_mut(&mut s.a, narrow)?)?;
        // bn2                                                                 a → b
        self.bn2.backward(backend, params, self.conv2.out()?, part(&s.a, narrow)?, part_mut(&mut s.b, narrow)?)?;
        // conv2                                                               b → a
        self.conv2.backward(
            backend,
            params,
            self.act1.out()?,
            part(&s.b, narrow)?,
            Some(part_mut(&mut s.a, narrow)?),
        )?;
        // act1                                                                a → b
        self.act1.backward(backend, self.bn1.out()?, part(&s.a, narrow)?, part_mut(&mut s.b, narrow)?)?;
        // bn1                                                                 b → a
        self.bn1.backward(backend, params, self.conv1.out()?, part(&s.b, narrow)?, part_mut(&mut s.a, narrow)?)?;
        // conv1 (no image gradient)                                           a
        self.conv1.backward(backend, params, images, part(&s.a, narrow)?, None)
    }
}
