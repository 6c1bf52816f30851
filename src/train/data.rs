//! The training stream over the shapes set: a fresh permutation of the training split every epoch, drawn from
//! `(seed, epoch)` alone, consecutive `batch` indices per step, the last partial batch of an epoch dropped (as
//! open_clip's training loader). The stream's whole state is `(epoch, batch_in_epoch)`, so a checkpoint records it
//! exactly and a resumed run sees the same batches.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::Elem;
use crate::data::shapes::{self, ShapesConfig, Split};
use crate::data::tokenizer::Tokenizer;
use crate::error::Result;

/// Where the stream is: the next batch is number `batch_in_epoch` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub batch_in_epoch: u64,
}

/// One step's inputs: normalised images `[batch, 3, R, R]` and token rows `[batch, context]`.
pub struct TrainBatch {
    pub images: Vec<f32>,
    pub tokens: Vec<i32>,
}

pub struct ShapesStream {
    cfg: ShapesConfig,
    seed: u64,
    batch: usize,
    context: usize,
    position: DataPosition,
    order: Vec<usize>,
    tokenizer: &'static Tokenizer,
    /// Captions repeat a lot (a few templates × 35 classes × sizes × positions): tokenize each once.
    token_cache: HashMap<String, Vec<i32>>,
}

impl ShapesStream {
    pub fn new(cfg: ShapesConfig, seed: u64, batch: usize, context: usize, position: DataPosition) -> Result<Self> {
        cfg.validate()?;
        let mut stream = ShapesStream {
            cfg,
            seed,
            batch,
            context,
            position,
            order: Vec::new(),
            tokenizer: Tokenizer::clip(),
            token_cache: HashMap::new(),
        };
        stream.order = stream.epoch_order(position.epoch);
        Ok(stream)
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.cfg.train_size / self.batch) as u64
    }

    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// The permutation of epoch `epoch`: ChaCha8 seeded with the run's seed, stream `epoch`.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.cfg.train_size).collect();
        order.shuffle(&mut rng);
        order
    }

    /// The training-split indices of the next batch, advancing the position.
    fn next_indices(&mut self) -> Vec<usize> {
        if self.position.batch_in_epoch >= self.batches_per_epoch() {
            self.position = DataPosition { epoch: self.position.epoch + 1, batch_in_epoch: 0 };
            self.order = self.epoch_order(self.position.epoch);
        }
        let start = self.position.batch_in_epoch as usize * self.batch;
        self.position.batch_in_epoch += 1;
        self.order[start..start + self.batch].to_vec()
    }

    /// The next batch as raw samples (RGB bytes and captions), for the multi-view objectives' augmentations;
    /// the same samples, in the same order, that [`ShapesStream::next_batch`] would have prepared.
    pub fn next_samples(&mut self) -> Result<Vec<shapes::Sample>> {
        let indices = self.next_indices();
        shapes::samples(&self.cfg, Split::Train, &indices)
    }

    /// The next batch, advancing the position.
    pub fn next_batch(&mut self) -> Result<TrainBatch> {
        let indices = self.next_indices();
        let (images, captions, _) = shapes::batch(&self.cfg, Split::Train, &indices)?;
        let mut tokens = Vec::with_capacity(self.batch * self.context);
        for caption in &captions {
            if !self.token_cache.contains_key(caption) {
                let row = self.tokenizer.tokenize_batch(&[caption.as_str()], self.context);
                self.token_cache.insert(caption.clone(), row);
            }
            tokens.extend_from_slice(&self.token_cache[caption]);
        }
        Ok(TrainBatch { images, tokens })
    }
}

/// One step's inputs on the host, images already in the compute dtype `T`.
pub struct HostBatch<T> {
    pub images: Vec<T>,
    pub tokens: Vec<i32>,
}

/// Where a run's batches come from: drawn in the step itself (the CPU: the step uses every core anyway, and this
/// keeps the CPU run exactly as it was), or one step ahead on a background thread (the GPU: drawing 256 images at
/// 224 px and converting them to bf16 takes tens of milliseconds of CPU time that would otherwise leave the GPU
/// idle). Both yield the same batches in the same order; [`Feed::position`] is where the stream stands after the
/// last batch handed out, which is what a checkpoint records.
pub enum Feed<T: Elem> {
    Inline(ShapesStream),
    Prefetch(Prefetcher<T>),
}

impl<T: Elem> Feed<T> {
    /// The next batch as raw samples (the multi-view objectives draw their views from them); only the inline feed
    /// has them.
    pub fn next_samples(&mut self) -> Result<Vec<shapes::Sample>> {
        match self {
            Feed::Inline(stream) => stream.next_samples(),
            Feed::Prefetch(_) => Err(crate::error::Error::Invalid {
                op: "training data",
                msg: "raw samples come from the inline feed only (multi-view objectives draw batches inline)".into(),
            }),
        }
    }
}

impl<T: Elem> Feed<T> {
    pub fn new(stream: ShapesStream, prefetch: bool) -> Self {
        if prefetch {
            Feed::Prefetch(Prefetcher::spawn(stream))
        } else {
            Feed::Inline(stream)
        }
    }

    pub fn next_batch(&mut self) -> Result<HostBatch<T>> {
        match self {
            Feed::Inline(stream) => {
                let batch = stream.next_batch()?;
                Ok(HostBatch { images: convert(&batch.images), tokens: batch.tokens })
            }
            Feed::Prefetch(p) => p.next_batch(),
        }
    }

    pub fn position(&self) -> DataPosition {
        match self {
            Feed::Inline(stream) => stream.position(),
            Feed::Prefetch(p) => p.position,
        }
    }
}

/// f32 pixels to the compute dtype (a copy for f32), in parallel for large batches.
fn convert<T: Elem>(images: &[f32]) -> Vec<T> {
    use rayon::prelude::*;
    if images.len() < 1 << 16 {
        images.iter().map(|&x| T::from_real(x as f64)).collect()
    } else {
        images.par_iter().map(|&x| T::from_real(x as f64)).collect()
    }
}

type Prefetched<T> = Result<(HostBatch<T>, DataPosition)>;

/// A [`ShapesStream`] on its own thread, one batch ahead (a channel of one: the batch waiting, plus the one being
/// drawn). Dropping it stops the thread.
pub struct Prefetcher<T: Elem> {
    rx: Option<std::sync::mpsc::Receiver<Prefetched<T>>>,
    worker: Option<std::thread::JoinHandle<()>>,
    position: DataPosition,
}

impl<T: Elem> Prefetcher<T> {
    fn spawn(mut stream: ShapesStream) -> Self {
        let position = stream.position();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Prefetched<T>>(1);
        let worker = std::thread::Builder::new()
            .name("cliprt-data".into())
            .spawn(move || loop {
                let item = stream.next_batch().map(|batch| {
                    let images = convert(&batch.images);
                    (HostBatch { images, tokens: batch.tokens }, stream.position())
                });
                let failed = item.is_err();
                // The receiver is gone (the run ended): stop.
                if tx.send(item).is_err() || failed {
                    break;
                }
            })
            .ok();
        Prefetcher { rx: Some(rx), worker, position }
    }

    fn next_batch(&mut self) -> Result<HostBatch<T>> {
        let received = match (&self.rx, &self.worker) {
            (Some(rx), Some(_)) => rx.recv().ok(),
            _ => None,
        };
        match received {
            Some(Ok((batch, position))) => {
                self.position = position;
                Ok(batch)
            }
            Some(Err(e)) => Err(e),
            None => Err(crate::error::Error::Invalid {
                op: "training data",
                msg: "the data thread stopped (it could not be started, or failed before); rerun, or use \
                      --device cpu to draw batches inline"
                    .into(),
            }),
        }
    }
}

impl<T: Elem> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Close the channel first so a worker blocked on sending wakes up and ends, then wait for it.
        self.rx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> ShapesStream {
        let cfg = ShapesConfig { resolution: 16, train_size: 40, held_out_size: 10, second_object: false, seed: 3 };
        ShapesStream::new(cfg, 7, 8, 16, DataPosition::default()).unwrap()
    }

    /// The prefetching feed yields exactly the inline feed's batches and positions, across an epoch boundary.
    #[test]
    fn prefetch_matches_inline() {
        let mut inline = Feed::<f32>::new(stream(), false);
        let mut ahead = Feed::<f32>::new(stream(), true);
        for _ in 0..12 {
            let (a, b) = (inline.next_batch().unwrap(), ahead.next_batch().unwrap());
            assert_eq!(a.images, b.images);
            assert_eq!(a.tokens, b.tokens);
            assert_eq!(inline.position(), ahead.position());
        }
        // bf16 conversion rounds each pixel once.
        let mut bf = Feed::<half::bf16>::new(stream(), true);
        let mut f = Feed::<f32>::new(stream(), false);
        let (x, y) = (bf.next_batch().unwrap(), f.next_batch().unwrap());
        assert!(x.images.iter().zip(&y.images).all(|(a, b)| *a == half::bf16::from_f32(*b)));
    }
}
