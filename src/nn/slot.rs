//! A buffer owned by a layer, allocated on first use for a given size and reused afterwards.

use crate::backend::{Backend, Elem, Mut, Ref};
use crate::error::{Error, Result};

pub struct Slot<B: Backend, T: Elem> {
    buf: Option<B::Buf<T>>,
}

impl<B: Backend, T: Elem> Default for Slot<B, T> {
    fn default() -> Self {
        Slot { buf: None }
    }
}

impl<B: Backend, T: Elem> Slot<B, T> {
    /// The buffer, (re)allocated when its length is not `len`.
    pub fn ensure(&mut self, backend: &B, len: usize) -> Result<Mut<'_, B, T>> {
        if self.buf.as_ref().map(B::buf_len) != Some(len) {
            self.buf = Some(backend.zeros(len)?);
        }
        Ok(B::view_mut(self.buf.as_mut().expect("allocated above")))
    }

    /// The buffer as last filled; an error if the layer's forward has not run.
    pub fn get(&self) -> Result<Ref<'_, B, T>> {
        self.buf.as_ref().map(B::view).ok_or_else(|| Error::Invalid {
            op: "layer",
            msg: "buffer read before the forward pass that fills it".into(),
        })
    }

    pub fn get_mut(&mut self) -> Result<Mut<'_, B, T>> {
        self.buf.as_mut().map(B::view_mut).ok_or_else(|| Error::Invalid {
            op: "layer",
            msg: "buffer written before the forward pass that allocates it".into(),
        })
    }
}
