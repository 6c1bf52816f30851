//! Finding cuBLAS, cuBLASLt and cuDNN at run time, and their versions.
//!
//! cudarc opens them by name (`libcublas.so.13`, `libcudnn.so.9`, …) through the dynamic loader's search path. On a
//! GPU machine they often live outside it: in the CUDA toolkit (`/usr/local/cuda/lib64`) or in the `nvidia/*/lib`
//! folders of the Python environment that holds PyTorch. When a library is not on the search path, [`libraries`]
//! looks in those places (and in `$CLIPRT_CUDA_LIB_DIRS`, colon-separated) and preloads the file it finds by its full
//! path; the loader then hands that copy to cudarc when cudarc asks for it by its soname. Nothing here panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::device::catch_silently;

/// The library majors the CUDA 13.0 bindings are for.
const CUBLAS_SONAME_SUFFIX: &str = ".so.13";
const CUDNN_SONAME_SUFFIX: &str = ".so.9";

/// One runtime library: whether cudarc can open it, its version, and where it was found when it was not on the
/// loader's search path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Library {
    /// The name users know it by ("cuBLAS").
    pub name: &'static str,
    pub found: bool,
    /// e.g. "13.0.2" (cuBLAS), "9.10.2" (cuDNN).
    pub version: Option<String>,
    /// The file preloaded from outside the search path, if that is how it was found.
    pub preloaded: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Libraries {
    pub cublas: Library,
    pub cublaslt: Library,
    pub cudnn: Library,
    /// Folders searched for libraries missing from the search path.
    pub searched: Vec<PathBuf>,
}

/// Probes the libraries once per process (preloading any found outside the search path).
pub fn libraries() -> &'static Libraries {
    static LIBS: OnceLock<Libraries> = OnceLock::new();
    LIBS.get_or_init(probe)
}

fn present(check: unsafe fn() -> bool) -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    catch_silently(|| unsafe { check() }).unwrap_or(false)
}

fn probe() -> Libraries {
    use cudarc::{cublas, cublaslt, cudnn};
    let mut libs = Libraries {
        cublas: Library { name: "cuBLAS", ..Default::default() },
        cublaslt: Library { name: "cuBLASLt", ..Default::default() },
        cudnn: Library { name: "cuDNN", ..Default::default() },
        searched: Vec::new(),
    };
    let mut need_cublaslt = !present(cublaslt::sys::is_culib_present);
    let mut need_cublas = !present(cublas::sys::is_culib_present);
    let mut need_cudnn = !present(cudnn::sys::is_culib_present);
    if need_cublaslt || need_cublas || need_cudnn {
        libs.searched = search_dirs();
        // cuBLAS links against cuBLASLt: load that first.
        if need_cublaslt {
            libs.cublaslt.preloaded = preload_family(&libs.searched, "libcublasLt", CUBLAS_SONAME_SUFFIX, &[]);
        }
        if need_cublas {
            libs.cublas.preloaded = preload_family(&libs.searched, "libcublas", CUBLAS_SONAME_SUFFIX, &[]);
        }
        if need_cudnn {
            // cuDNN 9 opens its sub-libraries (graph, engines, ops, cnn, adv, heuristic) itself, by soname.
            libs.cudnn.preloaded = preload_family(&libs.searched, "libcudnn", CUDNN_SONAME_SUFFIX, &["libcudnn_"]);
        }
        need_cublaslt = !present(cublaslt::sys::is_culib_present);
        need_cublas = !present(cublas::sys::is_culib_present);
        need_cudnn = !present(cudnn::sys::is_culib_present);
    }
    libs.cublaslt.found = !need_cublaslt;
    libs.cublas.found = !need_cublas;
    libs.cudnn.found = !need_cudnn;

    if libs.cublas.found {
        libs.cublas.version = catch_silently(|| {
            let get = |t| {
                let mut v = 0;
                // SAFETY: writes one int.
                let status = unsafe { cublas::sys::cublasGetProperty(t, &mut v) };
                (status == cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
            };
            use cublas::sys::libraryPropertyType::*;
            Some(format!("{}.{}.{}", get(MAJOR_VERSION)?, get(MINOR_VERSION)?, get(PATCH_LEVEL)?))
        })
        .ok()
        .flatten();
    }
    if libs.cublaslt.found {
        // SAFETY: no arguments.
        libs.cublaslt.version = catch_silently(|| unsafe { cublaslt::sys::cublasLtGetVersion() })
            .ok()
            .map(|v| format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100));
    }
    if libs.cudnn.found {
        // SAFETY: no arguments. cuDNN 9 encodes major·10000 + minor·100 + patch, cuDNN 8 major·1000 + minor·100 + patch.
        libs.cudnn.version = catch_silently(|| unsafe { cudnn::sys::cudnnGetVersion() }).ok().map(|v| {
            if v >= 10000 {
                format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
            } else {
                format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
            }
        });
    }
    libs
}

/// Where to look for libraries missing from the search path, in order: `$CLIPRT_CUDA_LIB_DIRS`, the CUDA toolkit,
/// then the `nvidia/*/lib` folders of Python environments (usual install prefixes, `$VIRTUAL_ENV`, `$CONDA_PREFIX`,
/// and, when none of those has them, the environment `python3` runs in).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(extra) = std::env::var_os("CLIPRT_CUDA_LIB_DIRS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    for root in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"] {
        dirs.push(PathBuf::from(root));
    }
    let mut prefixes: Vec<PathBuf> = ["/usr/local", "/usr", "/opt/conda"].iter().map(PathBuf::from).collect();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            prefixes.push(PathBuf::from(p));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
    }
    let mut site_packages = Vec::new();
    for prefix in prefixes {
        for python in subdirs(&prefix.join("lib")).filter(|d| file_name(d).starts_with("python3")) {
            for kind in ["site-packages", "dist-packages"] {
                site_packages.push(python.join(kind));
            }
        }
    }
    let mut nvidia_libs: Vec<PathBuf> =
        site_packages.iter().flat_map(|sp| subdirs(&sp.join("nvidia")).map(|d| d.join("lib"))).collect();
    if nvidia_libs.is_empty() {
        if let Some(sp) = python_site_packages() {
            nvidia_libs.extend(subdirs(&sp.join("nvidia")).map(|d| d.join("lib")));
        }
    }
    dirs.extend(nvidia_libs);
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// The site-packages folder holding the `nvidia` namespace package of the `python3` on PATH, if any.
fn python_site_packages() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    let path = path.trim();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    entries.sort();
    entries.into_iter()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Finds `<stem><suffix>` in the first folder that has it and preloads it, after every `<helper prefix>*<suffix>`
/// beside it (repeating while some load, since they depend on one another). Returns the file loaded.
fn preload_family(dirs: &[PathBuf], stem: &str, suffix: &str, helper_prefixes: &[&str]) -> Option<PathBuf> {
    let main_name = format!("{stem}{suffix}");
    let dir = dirs.iter().find(|d| d.join(&main_name).is_file())?;
    let mut helpers: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = file_name(p);
            name.ends_with(suffix) && helper_prefixes.iter().any(|h| name.starts_with(h))
        })
        .collect();
    helpers.sort();
    loop {
        let before = helpers.len();
        helpers.retain(|p| !dl::open_global(p));
        if helpers.is_empty() || helpers.len() == before {
            break;
        }
    }
    let main = dir.join(main_name);
    dl::open_global(&main).then_some(main)
}

#[cfg(target_os = "linux")]
mod dl {
    use std::ffi::{c_char, c_int, c_void, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_GLOBAL: c_int = 0x100;

    /// dlopen by full path, globally, for the life of the process (the handle is never closed).
    pub fn open_global(path: &Path) -> bool {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
        // SAFETY: a NUL-terminated path; loading runs the library's initialisers, which for the NVIDIA libraries
        // only set up their own state.
        !unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
    }
}

#[cfg(not(target_os = "linux"))]
mod dl {
    pub fn open_global(_: &std::path::Path) -> bool {
        false
    }
}
