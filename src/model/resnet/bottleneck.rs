//! open_clip's `Bottleneck` (expansion 4) with its anti-aliased downsampling: convolutions are never strided, an
//! average pool of the stride follows the 3×3 convolution, and the shortcut, when the shape changes, is
//! AvgPool(stride) → 1×1 conv → BatchNorm (`downsample.0` is the conv, `downsample.1` the BatchNorm: the pool, named
//! `-1` in open_clip, holds nothing).

use crate::backend::{Activation, Backend, Mut, Ref};
use crate::error::{check_len, Error, Result};
use crate::nn::{ActivationLayer, AvgPool2d, BatchNorm2d, Conv2dLayer, Slot};
use crate::params::{Init, ParamBuilder, ParamStore};

use super::{part, part_mut, GradScratch};

/// The shortcut of a block that changes the shape: `[AvgPool(stride)] → conv 1×1 → BatchNorm`.
pub struct Downsample<B: Backend> {
    /// `None` at stride 1 (open_clip's `AvgPool2d(1)` is the identity).
    pub avgpool: Option<AvgPool2d<B>>,
    pub conv: Conv2dLayer<B>,
    pub bn: BatchNorm2d<B>,
}

pub struct Bottleneck<B: Backend> {
    /// Full name relative to the tower (`layer2.0`).
    pub name: String,
    pub inplanes: usize,
    pub planes: usize,
    pub stride: usize,
    pub conv1: Conv2dLayer<B>,
    pub bn1: BatchNorm2d<B>,
    pub act1: ActivationLayer<B>,
    pub conv2: Conv2dLayer<B>,
    pub bn2: BatchNorm2d<B>,
    pub act2: ActivationLayer<B>,
    /// `None` at stride 1.
    pub avgpool: Option<AvgPool2d<B>>,
    pub conv3: Conv2dLayer<B>,
    pub bn3: BatchNorm2d<B>,
    pub downsample: Option<Downsample<B>>,
    pub act3: ActivationLayer<B>,
    /// `bn3 + identity`, the input of `act3`.
    sum: Slot<B, B::Act>,
    /// `(n, h, w)` of the last forward's input.
    shape: Option<(usize, usize, usize)>,
}

impl<B: Backend> Bottleneck<B> {
    pub const EXPANSION: usize = 4;

    /// Declares `{name}.conv1.weight`, `{name}.bn1.*`, `{name}.conv2.weight`, `{name}.bn2.*`, `{name}.conv3.weight`,
    /// `{name}.bn3.*` (weight zero: CLIP's zero-init of the residual branch) and, when the shape changes,
    /// `{name}.downsample.0.weight` and `{name}.downsample.1.*`, in open_clip's order.
    pub fn new(pb: &mut ParamBuilder, name: &str, inplanes: usize, planes: usize, stride: usize) -> Result<Self> {
        if stride == 0 || planes == 0 || inplanes == 0 {
            let msg = format!("{name}: inplanes {inplanes}, planes {planes} and stride {stride} must be positive");
            return Err(Error::Invalid { op: "Bottleneck", msg });
        }
        let out = planes * Self::EXPANSION;
        let pool = |stride: usize| (stride > 1).then(|| AvgPool2d::new(stride, stride, 0));
        let conv1 = Conv2dLayer::new(pb, &format!("{name}.conv1"), inplanes, planes, 1, 1, 0, None)?;
        let bn1 = BatchNorm2d::new(pb, &format!("{name}.bn1"), planes, true)?;
        let conv2 = Conv2dLayer::new(pb, &format!("{name}.conv2"), planes, planes, 3, 1, 1, None)?;
        let bn2 = BatchNorm2d::new(pb, &format!("{name}.bn2"), planes, true)?;
        let conv3 = Conv2dLayer::new(pb, &format!("{name}.conv3"), planes, out, 1, 1, 0, None)?;
        let bn3 = BatchNorm2d::with_weight_init(pb, &format!("{name}.bn3"), out, true, Init::Zeros)?;
        let downsample = if stride > 1 || inplanes != out {
            Some(Downsample {
                avgpool: pool(stride),
                conv: Conv2dLayer::new(pb, &format!("{name}.downsample.0"), inplanes, out, 1, 1, 0, None)?,
                bn: BatchNorm2d::new(pb, &format!("{name}.downsample.1"), out, true)?,
            })
        } else {
            None
        };
        Ok(Bottleneck {
            name: name.to_string(),
            inplanes,
            planes,
            stride,
            conv1,
            bn1,
            act1: ActivationLayer::new(Activation::Relu),
            conv2,
            bn2,
            act2: ActivationLayer::new(Activation::Relu),
            avgpool: pool(stride),
            conv3,
            bn3,
            downsample,
            act3: ActivationLayer::new(Activation::Relu),
            sum: Slot::default(),
            shape: None,
        })
    }

    /// Every BatchNorm of the block with its name relative to the tower, in state-dict order.
    pub fn batchnorms(&self) -> Vec<(String, &BatchNorm2d<B>)> {
        let mut out = vec![
            (format!("{}.bn1", self.name), &self.bn1),
            (format!("{}.bn2", self.name), &self.bn2),
            (format!("{}.bn3", self.name), &self.bn3),
        ];
        if let Some(ds) = &self.downsample {
            out.push((format!("{}.downsample.1", self.name), &ds.bn));
        }
        out
    }

    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        let mut out = vec![&mut self.bn1, &mut self.bn2, &mut self.bn3];
        if let Some(ds) = &mut self.downsample {
            out.push(&mut ds.bn);
        }
        out
    }

    /// Output height and width for an input of `h × w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.stride, w / self.stride)
    }

    /// `x [n, inplanes, h, w]` → `out [n, 4·planes, h/stride, w/stride]`.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        check_len("Bottleneck", "x", B::len(x), n * self.inplanes * h * w)?;
        let (ho, wo) = self.out_hw(h, w);
        // act1(bn1(conv1(x)))
        self.conv1.forward(backend, params, x, n, h, w)?;
        self.bn1.forward(backend, params, self.conv1.out()?, n, h * w)?;
        self.act1.forward(backend, self.bn1.out()?)?;
        // act2(bn2(conv2(·)))
        self.conv2.forward(backend, params, self.act1.out()?, n, h, w)?;
        self.bn2.forward(backend, params, self.conv2.out()?, n, h * w)?;
        self.act2.forward(backend, self.bn2.out()?)?;
        // avgpool(·) when strided
        if let Some(pool) = &mut self.avgpool {
            pool.forward(backend, self.act2.out()?, n, self.planes, h, w)?;
        }
        let conv3_in = match &self.avgpool {
            Some(pool) => pool.out()?,
            None => self.act2.out()?,
        };
        // bn3(conv3(·))
        self.conv3.forward(backend, params, conv3_in, n, ho, wo)?;
        self.bn3.forward(backend, params, self.conv3.out()?, n, ho * wo)?;
        // identity = downsample(x) or x; sum = bn3 + identity (the input x outlives the layers' buffers, so each case
        // makes its own call)
        let sum = self.sum.ensure(backend, n * self.planes * Self::EXPANSION * ho * wo)?;
        match &mut self.downsample {
            None => backend.add(self.bn3.out()?, x, sum)?,
            Some(ds) => {
                match &mut ds.avgpool {
                    Some(pool) => {
                        pool.forward(backend, x, n, self.inplanes, h, w)?;
                        ds.conv.forward(backend, params, pool.out()?, n, ho, wo)?;
                    }
                    None => ds.conv.forward(backend, params, x, n, ho, wo)?,
                }
                ds.bn.forward(backend, params, ds.conv.out()?, n, ho * wo)?;
                backend.add(self.bn3.out()?, ds.bn.out()?, sum)?;
            }
        }
        // out = act3(sum)
        self.act3.forward(backend, self.sum.get()?)?;
        self.shape = Some((n, h, w));
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.act3.out()
    }

    /// `d_out` → `dx` (overwritten) for the forward's input `x`; parameter gradients accumulated. The gradients in
    /// between live in `s`, shared by every block (each of its buffers holds the largest activation).
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        mut dx: Mut<'_, B, B::Act>,
        s: &mut GradScratch<B>,
    ) -> Result<()> {
        let (n, h, w) = self.shape.ok_or(Error::Invalid { op: "Bottleneck", msg: "backward before forward".into() })?;
        let (ho, wo) = self.out_hw(h, w);
        let x_len = n * self.inplanes * h * w;
        let mid = n * self.planes * h * w; // conv1 … act2
        let pooled = n * self.planes * ho * wo; // conv3's input
        let out = n * self.planes * Self::EXPANSION * ho * wo; // conv3 … out
        let x_pooled = n * self.inplanes * ho * wo; // the shortcut conv's input

        // out = act3(sum)                                                      d_out → d_sum
        self.act3.backward(backend, self.sum.get()?, d_out, part_mut(&mut s.d_sum, out)?)?;

        // sum = bn3(conv3(avgpool(act2))) + identity: the residual branch first, …
        // bn3                                                                  d_sum → a
        self.bn3.backward(backend, params, self.conv3.out()?, part(&s.d_sum, out)?, part_mut(&mut s.a, out)?)?;
        // conv3                                                                a → b
        let conv3_in = match &self.avgpool {
            Some(pool) => pool.out()?,
            None => self.act2.out()?,
        };
        self.conv3.backward(backend, params, conv3_in, part(&s.a, out)?, Some(part_mut(&mut s.b, pooled)?))?;
        // avgpool                                                              b → c
        let d_act2_out = match &self.avgpool {
            Some(pool) => {
                pool.backward(backend, part(&s.b, pooled)?, part_mut(&mut s.c, mid)?)?;
                part(&s.c, mid)?
            }
            None => part(&s.b, mid)?,
        };
        // act2                                                                 (b or c) → a
        self.act2.backward(backend, self.bn2.out()?, d_act2_out, part_mut(&mut s.a, mid)?)?;
        // bn2                                                                  a → b
        self.bn2.backward(backend, params, self.conv2.out()?, part(&s.a, mid)?, part_mut(&mut s.b, mid)?)?;
        // conv2                                                                b → a
        self.conv2.backward(backend, params, self.act1.out()?, part(&s.b, mid)?, Some(part_mut(&mut s.a, mid)?))?;
        // act1                                                                 a → b
        self.act1.backward(backend, self.bn1.out()?, part(&s.a, mid)?, part_mut(&mut s.b, mid)?)?;
        // bn1                                                                  b → a
        self.bn1.backward(backend, params, self.conv1.out()?, part(&s.b, mid)?, part_mut(&mut s.a, mid)?)?;
        // conv1                                                                a → dx
        self.conv1.backward(backend, params, x, part(&s.a, mid)?, Some(B::reborrow(&mut dx)))?;

        // … then the shortcut, added into dx.
        let Some(ds) = &mut self.downsample else {
            // identity = x                                                     dx += d_sum
            return backend.axpy(1.0, part(&s.d_sum, out)?, dx);
        };
        // downsample.1 (BatchNorm)                                             d_sum → a
        ds.bn.backward(backend, params, ds.conv.out()?, part(&s.d_sum, out)?, part_mut(&mut s.a, out)?)?;
        match &ds.avgpool {
            Some(pool) => {
                // downsample.0 (conv)                                          a → b
                let d_pooled = Some(part_mut(&mut s.b, x_pooled)?);
                ds.conv.backward(backend, params, pool.out()?, part(&s.a, out)?, d_pooled)?;
                // downsample's AvgPool                                         b → c, dx += c
                pool.backward(backend, part(&s.b, x_pooled)?, part_mut(&mut s.c, x_len)?)?;
                backend.axpy(1.0, part(&s.c, x_len)?, dx)
            }
            None => {
                // downsample.0 (conv)                                          a → b, dx += b
                ds.conv.backward(backend, params, x, part(&s.a, out)?, Some(part_mut(&mut s.b, x_len)?))?;
                backend.axpy(1.0, part(&s.b, x_len)?, dx)
            }
        }
    }

    /// Elements of the largest tensor the backward passes through `s` for input `n × h × w`.
    pub fn scratch_len(&self, n: usize, h: usize, w: usize) -> usize {
        let (ho, wo) = self.out_hw(h, w);
        let widest = (self.inplanes.max(self.planes) * h * w).max(self.planes * Self::EXPANSION * ho * wo);
        n * widest
    }
}
