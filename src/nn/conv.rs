//! 2-D convolution without bias (all of CLIP's convolutions), weight `[c_out, c_in, k, k]`.

use crate::backend::{Backend, Conv2d, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct Conv2dLayer<B: Backend> {
    pub weight: ParamId,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    spec: Option<Conv2d>,
    out: Slot<B, B::Act>,
}

impl<B: Backend> Conv2dLayer<B> {
    /// Declares `{name}.weight`, initialised like PyTorch's `nn.Conv2d` (U(±1/√fan_in)) unless `init` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        init: Option<Init>,
    ) -> Result<Self> {
        let fan_in = (c_in * kernel * kernel) as f64;
        let init = init.unwrap_or(Init::Uniform(1.0 / fan_in.sqrt()));
        let weight = pb.param(&format!("{name}.weight"), &[c_out, c_in, kernel, kernel], init)?;
        Ok(Conv2dLayer { weight, c_in, c_out, kernel, stride, pad, spec: None, out: Slot::default() })
    }

    /// `x [n, c_in, h, w]` → `out [n, c_out, out_h, out_w]`.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let spec = Conv2d {
            n,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            kernel_h: self.kernel,
            kernel_w: self.kernel,
            stride: self.stride,
            pad: self.pad,
        };
        let y = self.out.ensure(backend, spec.output_len())?;
        backend.conv2d_forward(&spec, x, params.weight(self.weight), y)?;
        self.spec = Some(spec);
        Ok(())
    }

    /// The last forward's shape (output height and width included).
    pub fn spec(&self) -> Result<Conv2d> {
        self.spec.ok_or(Error::Invalid { op: "Conv2dLayer", msg: "shape asked before the forward pass".into() })
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Option<Mut<'_, B, B::Act>>,
    ) -> Result<()> {
        let spec = self.spec()?;
        if let Some(dx) = dx {
            backend.conv2d_backward_data(&spec, dy, params.weight(self.weight), dx)?;
        }
        let [dw] = params.grads_mut([self.weight])?;
        backend.conv2d_backward_filter(&spec, dy, x, dw)
    }
}
