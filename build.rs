//! Compiles every `kernels/*.cu` into a fatbin (sm_80 and sm_90a machine code plus compute_80 PTX) with nvcc and
//! writes `$OUT_DIR/kernels.rs`, which `src/kernels.rs` includes: the module names, their fatbins (include_bytes!),
//! whether kernels were compiled, and which nvcc compiled them.
//!
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, the project-local toolchain that
//! `scripts/install-nvcc.sh` installs (`.cuda/pip/nvidia/cu13/bin/nvcc`), then `$PATH`. Without nvcc (or with
//! `CLIPRT_NO_NVCC=1`) the crate still builds, with a cargo warning, and the CUDA backend says at run time that this
//! build has no compiled kernels. A kernel that fails to compile fails the build, with nvcc's output: CI proves that
//! every kernel compiles.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Machine code for Ampere (A100) and Hopper (H100/H200, with the `a` features: wgmma, TMA), plus compute_80 PTX so
/// that any later architecture can JIT the Ampere code. Hopper-only code is guarded by `__CUDA_ARCH__ >= 900` (and
/// `__CUDA_ARCH_FEAT_SM90_ALL` for wgmma) so the sm_80 pass compiles.
const GENCODE: [&str; 6] = [
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90a,code=sm_90a",
    "-gencode",
    "arch=compute_80,code=compute_80",
];
const TARGETS: &str = "sm_80, sm_90a, compute_80 (PTX)";
/// Where scripts/install-nvcc.sh puts the pinned CUDA 13.0 nvcc, relative to the manifest directory.
const LOCAL_NVCC: &str = ".cuda/pip/nvidia/cu13/bin/nvcc";

struct Nvcc {
    path: PathBuf,
    version: String,
}

struct Kernel {
    name: String,
    source: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "CLIPRT_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // Re-run after (re)installing the project-local nvcc. Only when it exists: a missing path would make cargo re-run
    // this script (and rebuild the crate) on every build.
    let stamp = manifest_dir.join(".cuda/installed.txt");
    if stamp.exists() {
        println!("cargo:rerun-if-changed={}", stamp.display());
    }

    let kernels = list_kernels(&kernel_dir);
    for k in &kernels {
        println!("cargo:rerun-if-changed={}", k.source.display());
    }
    if let Ok(entries) = fs::read_dir(&kernel_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cuh" || e == "h") {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let no_nvcc = env::var("CLIPRT_NO_NVCC").is_ok_and(|v| !v.is_empty() && v != "0");
    let nvcc = if no_nvcc {
        println!("cargo:warning=CLIPRT_NO_NVCC is set: CUDA kernels are not compiled into this build");
        Err("CLIPRT_NO_NVCC was set at build time".to_string())
    } else {
        find_nvcc(&manifest_dir)
    };

    let generated = match nvcc {
        Ok(nvcc) => {
            compile_all(&nvcc, &kernels, &kernel_dir, &out_dir);
            generate(&kernels, Some((&nvcc, &out_dir)), None)
        }
        Err(detail) => {
            if !no_nvcc {
                println!(
                    "cargo:warning=no nvcc found ({detail}): CUDA kernels are not compiled into this build. Install \
                     the pinned CUDA 13.0 nvcc with `bash scripts/install-nvcc.sh` (or set NVCC=/path/to/nvcc), \
                     then rebuild (`touch build.rs` if cargo does not)."
                );
            }
            let reason = if no_nvcc { detail } else { "nvcc was not found at build time".to_string() };
            generate(&kernels, None, Some(&reason))
        }
    };
    let target = out_dir.join("kernels.rs");
    // Rewrite only on change, so that an unchanged build does not recompile the crate.
    if fs::read_to_string(&target).ok().as_deref() != Some(generated.as_str()) {
        fs::write(&target, generated).unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
    }
}

/// Every `kernels/*.cu`, sorted by name (the module name is the file stem).
fn list_kernels(dir: &Path) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .map(|source| Kernel { name: source.file_stem().unwrap().to_string_lossy().into_owned(), source })
            .collect(),
        Err(_) => Vec::new(),
    };
    kernels.sort_by(|a, b| a.name.cmp(&b.name));
    for k in &kernels {
        assert!(
            k.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "kernels/{}.cu: kernel file names must be [A-Za-z0-9_]",
            k.name
        );
    }
    kernels
}

/// The first nvcc that runs, in the documented order; Err says where we looked.
fn find_nvcc(manifest_dir: &Path) -> Result<Nvcc, String> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(explicit) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        // An explicit choice that does not work is an error, not something to silently route around.
        let path = PathBuf::from(explicit);
        return match nvcc_version(&path) {
            Ok(version) => Ok(Nvcc { path, version }),
            Err(e) => panic!("NVCC={} does not run: {e}; unset NVCC or point it at a working nvcc", path.display()),
        };
    }
    let mut candidates = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(root).join("bin").join(exe));
        }
    }
    candidates.push(manifest_dir.join(LOCAL_NVCC));
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join(exe)));
    }
    let mut tried = Vec::new();
    for path in candidates {
        if !path.is_file() {
            continue;
        }
        match nvcc_version(&path) {
            Ok(version) => return Ok(Nvcc { path, version }),
            Err(e) => {
                println!("cargo:warning={} does not run ({e}); skipped", path.display());
                tried.push(path.display().to_string());
            }
        }
    }
    if tried.is_empty() {
        Err(format!("looked in $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, {LOCAL_NVCC} and $PATH"))
    } else {
        Err(format!("none of {} runs", tried.join(", ")))
    }
}

/// The line of `nvcc --version` that names the release, e.g. "Cuda compilation tools, release 13.0, V13.0.88".
fn nvcc_version(path: &Path) -> Result<String, String> {
    let out = Command::new(path).arg("--version").output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("exit status {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.contains("release"))
        .or_else(|| text.lines().last())
        .unwrap_or("unknown version")
        .trim()
        .to_string())
}

/// Compiles every kernel file into `$OUT_DIR/<name>.fatbin`, a few at a time; any failure ends the build with nvcc's
/// output for each file that failed.
fn compile_all(nvcc: &Nvcc, kernels: &[Kernel], kernel_dir: &Path, out_dir: &Path) {
    let jobs = env::var("NUM_JOBS").ok().and_then(|j| j.parse::<usize>().ok()).unwrap_or(2).clamp(1, 2);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(kernels.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(kernel) = kernels.get(i) else { break };
                if let Err(msg) = compile_one(nvcc, kernel, kernel_dir, out_dir) {
                    failures.lock().unwrap().push(msg);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        for msg in &failures {
            eprintln!("{msg}");
        }
        eprintln!("{} kernel file(s) failed to compile with {}", failures.len(), nvcc.path.display());
        std::process::exit(1);
    }
}

fn compile_one(nvcc: &Nvcc, kernel: &Kernel, kernel_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let output = out_dir.join(format!("{}.fatbin", kernel.name));
    let mut cmd = Command::new(&nvcc.path);
    cmd.arg("--fatbin")
        .args(GENCODE)
        .args(["-O3", "--std=c++17"])
        .arg("-I")
        .arg(kernel_dir)
        .arg("-o")
        .arg(&output)
        .arg(&kernel.source);
    let out = cmd.output().map_err(|e| format!("kernels/{}.cu: could not run nvcc: {e}", kernel.name))?;
    if !out.status.success() {
        return Err(format!(
            "kernels/{}.cu failed to compile ({:?}):\n{}{}",
            kernel.name,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // nvcc warnings are worth seeing; cargo shows build-script output only on failure, so repeat them as warnings.
    for line in String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=kernels/{}.cu: {line}", kernel.name);
    }
    Ok(())
}

/// The text of `$OUT_DIR/kernels.rs`. `compiled` is the nvcc and the folder holding the fatbins.
fn generate(kernels: &[Kernel], compiled: Option<(&Nvcc, &Path)>, reason: Option<&str>) -> String {
    let mut s = String::from("// Generated by build.rs: the CUDA kernel modules embedded in this build.\n\n");
    let _ = writeln!(s, "/// Whether nvcc compiled `kernels/*.cu` into this build.");
    let _ = writeln!(s, "pub const KERNELS_COMPILED: bool = {};", compiled.is_some());
    let opt = |v: Option<&str>| v.map_or("None".to_string(), |v| format!("Some({v:?})"));
    let _ = writeln!(s, "/// The `release` line of `nvcc --version` of the nvcc that compiled them.");
    let _ = writeln!(s, "pub const NVCC_VERSION: Option<&str> = {};", opt(compiled.map(|(n, _)| n.version.as_str())));
    let _ = writeln!(s, "/// Path of that nvcc on the build machine.");
    let path = compiled.map(|(n, _)| n.path.display().to_string());
    let _ = writeln!(s, "pub const NVCC_PATH: Option<&str> = {};", opt(path.as_deref()));
    let _ = writeln!(s, "/// Why kernels were not compiled (None when they were).");
    let _ = writeln!(s, "pub const NOT_COMPILED_REASON: Option<&str> = {};", opt(reason));
    let _ = writeln!(s, "/// The GPU targets each fatbin holds.");
    let _ = writeln!(s, "pub const TARGETS: &str = {TARGETS:?};");
    let _ = writeln!(s, "/// One entry per `kernels/*.cu`, sorted by name; `fatbin` is empty when not compiled.");
    let _ = writeln!(s, "pub const MODULES: &[EmbeddedModule] = &[");
    for k in kernels {
        let fatbin = match compiled {
            Some((_, out_dir)) => {
                format!("include_bytes!({:?})", out_dir.join(format!("{}.fatbin", k.name)).display().to_string())
            }
            None => "&[]".to_string(),
        };
        let _ = writeln!(s, "    EmbeddedModule {{ name: {:?}, fatbin: {fatbin} }},", k.name);
    }
    s.push_str("];\n");
    s
}
