//! The training stream over the shapes set: a fresh permutation of the training split every epoch, drawn from
//! `(seed, epoch)` alone, consecutive `batch` indices per step, the last partial batch of an epoch dropped (as
//! open_clip's training loader). The stream's whole state is `(epoch, batch_in_epoch)`, so a checkpoint records it
//! exactly and a resumed run sees the same batches.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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

    /// The next batch, advancing the position.
    pub fn next_batch(&mut self) -> Result<TrainBatch> {
        if self.position.batch_in_epoch >= self.batches_per_epoch() {
            self.position = DataPosition { epoch: self.position.epoch + 1, batch_in_epoch: 0 };
            self.order = self.epoch_order(self.position.epoch);
        }
        let start = self.position.batch_in_epoch as usize * self.batch;
        let indices = &self.order[start..start + self.batch];
        let (images, captions, _) = shapes::batch(&self.cfg, Split::Train, indices)?;
        let mut tokens = Vec::with_capacity(self.batch * self.context);
        for caption in &captions {
            if !self.token_cache.contains_key(caption) {
                let row = self.tokenizer.tokenize_batch(&[caption.as_str()], self.context);
                self.token_cache.insert(caption.clone(), row);
            }
            tokens.extend_from_slice(&self.token_cache[caption]);
        }
        self.position.batch_in_epoch += 1;
        Ok(TrainBatch { images, tokens })
    }
}
