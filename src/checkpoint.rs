//! Model files: exactly open_clip's state dict (names, shapes, f32 tensors, BatchNorm `num_batches_tracked` as
//! int64) in safetensors, so a file moves between cliprt and open_clip unchanged. Loading is strict: every tensor of
//! the model must be present with its shape, and nothing else may be. Writes are atomic (temp file + rename), so an
//! interrupted save never leaves a truncated model behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::backend::{Backend, Elem};
use crate::error::{Error, Result};
use crate::params::{Layout, ParamStore};

/// The values of one state-dict tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A state dict on the host: name → (shape, values), sorted by name.
pub type StateDict = BTreeMap<String, (Vec<usize>, TensorData)>;

/// The store's parameters and buffers plus the integer `counters` (e.g. `visual.bn1.num_batches_tracked`).
pub fn state_dict<B: Backend>(backend: &B, store: &ParamStore<B>, counters: &[(String, u64)]) -> Result<StateDict> {
    let mut dict = StateDict::new();
    let mut put = |layout: &Layout, values: Vec<f64>| {
        for e in layout.entries() {
            let data = values[e.id.range()].iter().map(|&v| v as f32).collect();
            dict.insert(e.name.clone(), (e.shape.clone(), TensorData::F32(data)));
        }
    };
    put(store.layout(), store.download_master(backend)?);
    put(store.buffer_layout(), store.download_buffers(backend)?);
    for (name, value) in counters {
        dict.insert(name.clone(), (vec![], TensorData::I64(vec![*value as i64])));
    }
    Ok(dict)
}

/// Writes the store's values from `dict`, which must hold exactly the store's tensors plus the `counter_names`;
/// returns the counters' values. Nothing is written when anything is missing, extra or mis-shaped.
pub fn apply_state_dict<B: Backend>(
    backend: &B,
    store: &mut ParamStore<B>,
    dict: &StateDict,
    counter_names: &[String],
) -> Result<Vec<(String, u64)>> {
    let mut expected: BTreeSet<&str> = store.layout().entries().iter().map(|e| e.name.as_str()).collect();
    expected.extend(store.buffer_layout().entries().iter().map(|e| e.name.as_str()));
    expected.extend(counter_names.iter().map(String::as_str));
    let present: BTreeSet<&str> = dict.keys().map(String::as_str).collect();
    let missing: Vec<&str> = expected.difference(&present).copied().collect();
    let unexpected: Vec<&str> = present.difference(&expected).copied().collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::Invalid {
            op: "load state dict",
            msg: format!(
                "the file does not match this model: missing {} ({}), unexpected {} ({}); check the model config",
                missing.len(),
                preview(&missing),
                unexpected.len(),
                preview(&unexpected)
            ),
        });
    }
    let gather = |layout: &Layout| -> Result<Vec<f64>> {
        let mut values = vec![0.0; layout.len()];
        for e in layout.entries() {
            let (shape, data) = &dict[&e.name];
            if shape != &e.shape {
                let msg = format!("`{}` has shape {shape:?} in the file, the model needs {:?}", e.name, e.shape);
                return Err(Error::Invalid { op: "load state dict", msg });
            }
            let TensorData::F32(data) = data else {
                return Err(Error::Invalid {
                    op: "load state dict",
                    msg: format!("`{}` is not a float tensor", e.name),
                });
            };
            for (v, &x) in values[e.id.range()].iter_mut().zip(data) {
                *v = x as f64;
            }
        }
        Ok(values)
    };
    let params = gather(store.layout())?;
    let buffers = gather(store.buffer_layout())?;
    let mut counters = Vec::with_capacity(counter_names.len());
    for name in counter_names {
        match &dict[name] {
            (_, TensorData::I64(v)) if v.len() == 1 && v[0] >= 0 => counters.push((name.clone(), v[0] as u64)),
            _ => {
                let msg = format!("`{name}` must be one non-negative int64");
                return Err(Error::Invalid { op: "load state dict", msg });
            }
        }
    }
    store.set_master(backend, &params)?;
    let host: Vec<B::Master> = buffers.iter().map(|&x| B::Master::from_real(x)).collect();
    backend.write(&host, B::view_mut(&mut store.buffers))?;
    Ok(counters)
}

fn preview(names: &[&str]) -> String {
    let mut s = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(", …");
    }
    s
}

/// Writes `dict` as safetensors to `path` atomically (a temp file in the same folder, then a rename).
pub fn save_safetensors(path: &Path, dict: &StateDict) -> Result<()> {
    write_atomic(path, &serialize_safetensors(dict)?)
}

/// The safetensors bytes of `dict` (to write the same model to several files, serialise once).
pub fn serialize_safetensors(dict: &StateDict) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = dict
        .iter()
        .map(|(name, (shape, data))| match data {
            TensorData::F32(v) => (name.clone(), bytemuck::cast_slice(v).to_vec(), Dtype::F32, shape.clone()),
            TensorData::I64(v) => (name.clone(), bytemuck::cast_slice(v).to_vec(), Dtype::I64, shape.clone()),
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, dtype, shape)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid { op: "save safetensors", msg: format!("`{name}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Invalid { op: "save safetensors", msg: e.to_string() })
}

/// Writes `bytes` to `path` atomically: a hidden temp file in the same folder (`.<name>.<pid>.tmp`, so the rename
/// never crosses file systems), synced, then renamed over `path`. A reader never sees half a file and an old file
/// survives a failed write; the temp file is removed when anything fails. Every file cliprt writes goes through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // Name the file the caller asked for, and the temp file that actually failed.
    let io_tmp = |source| Error::Io { path: format!("{} (via {})", path.display(), tmp.display()), source };
    let written = std::fs::File::create(&tmp).map_err(io_tmp).and_then(|mut file| {
        file.write_all(bytes).map_err(io_tmp)?;
        file.sync_all().map_err(io_tmp)
    });
    let renamed = written.and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.display().to_string(), source })
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// Reads a safetensors file into a state dict; float tensors of any precision become f32, integers int64.
pub fn load_safetensors(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Invalid {
        op: "load safetensors",
        msg: format!("{}: not a readable safetensors file ({e})", path.display()),
    })?;
    let mut dict = StateDict::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => {
                TensorData::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
            }
            Dtype::F64 => TensorData::F32(
                data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            ),
            Dtype::F16 => TensorData::F32(
                data.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            ),
            Dtype::BF16 => TensorData::F32(
                data.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            ),
            Dtype::I64 => {
                TensorData::I64(data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect())
            }
            other => {
                let msg = format!("{}: tensor `{name}` has unsupported dtype {other:?}", path.display());
                return Err(Error::Invalid { op: "load safetensors", msg });
            }
        };
        dict.insert(name, (view.shape().to_vec(), values));
    }
    Ok(dict)
}
