//! An image classification tree in torchvision's ImageFolder layout: `root/<class>/<image>`.
//!
//! - Classes are the sub-folders of `root`, sorted by name (byte order, as Python's `sorted`); a class's label is
//!   its position in that order. Hidden sub-folders (name starting with `.`, e.g. `.ipynb_checkpoints`) are skipped.
//! - A class's images are the files under its folder, searched recursively (as torchvision's `make_dataset`), whose
//!   extension is `jpg`, `jpeg` or `png` in any case, sorted by path; other files are ignored. Items are ordered by
//!   class, then by path, so the order (and every split drawn from it) is the same on every machine.
//! - The name a prompt uses for a class is the folder name with `_` turned into spaces (`golden_retriever` →
//!   "golden retriever"), unless a class-names file gives one per line (see [`ImageFolder::with_classnames`]).
//! - Images are decoded and preprocessed as open_clip's eval transform (see [`crate::data::image::preprocess`]).
//!   A file that does not decode is not an error: [`ImageFolder::load_batch`] skips it and reports it by path.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::data::image;
use crate::error::{Error, Result};

/// Extensions (lower-case) of the files taken as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// An image that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// One image of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
}

/// The listing of an ImageFolder tree (nothing is decoded until [`ImageFolder::load_batch`]).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Sub-folder names, sorted: `folders[label]`.
    pub folders: Vec<String>,
    /// Names used in prompts: `classnames[label]`.
    pub classnames: Vec<String>,
    /// Every image, by class then path.
    pub items: Vec<Item>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid { op: "image folder", msg }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`], in any case.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The image files under `dir`, recursively, sorted by path. Symbolic links are followed (as torchvision's
/// `os.walk(followlinks=True)`); a folder reached twice through links would be listed twice, as there.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| io_error(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(image_files(&path)?);
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

impl ImageFolder {
    /// Lists the tree under `root`. Errors name the folder and the fix: `root` missing or not a directory, no class
    /// sub-folders, a class folder without any image.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.exists() {
            return Err(invalid(format!(
                "{}: no such folder; pass --data shapes or the path of an ImageFolder tree (root/<class>/<image>)",
                root.display()
            )));
        }
        if !root.is_dir() {
            return Err(invalid(format!(
                "{}: not a directory; --data takes a folder laid out as root/<class>/<image>.{{jpg,jpeg,png}}",
                root.display()
            )));
        }
        let mut folders = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| io_error(root, e))? {
            let entry = entry.map_err(|e| io_error(root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !name.starts_with('.') {
                folders.push(name);
            }
        }
        folders.sort();
        if folders.is_empty() {
            return Err(invalid(format!(
                "{}: no class sub-folders; put each class's images in its own folder, root/<class>/<image>.jpg",
                root.display()
            )));
        }
        let mut items = Vec::new();
        for (label, folder) in folders.iter().enumerate() {
            let dir = root.join(folder);
            let files = image_files(&dir)?;
            if files.is_empty() {
                return Err(invalid(format!(
                    "{}: class folder holds no image (.jpg, .jpeg or .png); add images or remove the folder",
                    dir.display()
                )));
            }
            items.extend(files.into_iter().map(|path| Item { path, label }));
        }
        let classnames = folders.iter().map(|f| f.replace('_', " ")).collect();
        Ok(ImageFolder { root: root.to_path_buf(), folders, classnames, items })
    }

    /// Replaces the prompt names by `names` (one per class, in sorted-folder order); a count mismatch is an error
    /// naming `source` (the class-names file).
    pub fn with_classnames(mut self, names: Vec<String>, source: &str) -> Result<Self> {
        if names.len() != self.folders.len() {
            return Err(invalid(format!(
                "{source} gives {} class names but {} has {} class folders ({}); give one name per line, in the \
                 sorted order of the folders",
                names.len(),
                self.root.display(),
                self.folders.len(),
                preview(&self.folders)
            )));
        }
        self.classnames = names;
        Ok(self)
    }

    pub fn num_classes(&self) -> usize {
        self.folders.len()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Decodes and preprocesses the items at `indices` to `size`×`size` (open_clip's eval transform), in parallel.
    /// Returns the CHW images `[loaded.len(), 3, size, size]`, the indices that loaded (in the order given) and the
    /// files that did not, with the reason: a corrupt image is skipped, never an error.
    pub fn load_batch(&self, indices: &[usize], size: usize) -> (Vec<f32>, Vec<usize>, Vec<Skipped>) {
        let decoded: Vec<(usize, std::result::Result<Vec<f32>, String>)> = indices
            .par_iter()
            .map(|&i| {
                let path = &self.items[i].path;
                let pixels = image::load(path).and_then(|img| image::preprocess(&img, size)).map_err(|e| match e {
                    // `image::load` already names the path in its Invalid messages; keep just the reason.
                    Error::Invalid { msg, .. } => msg,
                    other => other.to_string(),
                });
                (i, pixels)
            })
            .collect();
        let mut images = Vec::with_capacity(indices.len() * 3 * size * size);
        let (mut loaded, mut skipped) = (Vec::new(), Vec::new());
        for (i, result) in decoded {
            match result {
                Ok(pixels) => {
                    images.extend_from_slice(&pixels);
                    loaded.push(i);
                }
                Err(reason) => {
                    skipped.push(Skipped { path: self.items[i].path.display().to_string(), reason });
                }
            }
        }
        (images, loaded, skipped)
    }
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(", …");
    }
    s
}
