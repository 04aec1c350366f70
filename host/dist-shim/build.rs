//! Compiles `src/shim.cpp` against the headers of the libtorch torch-sys
//! links (its build exports the lib folder as DEP_TCH_LIBTORCH_LIB; the
//! headers sit beside it, in a wheel and in a libtorch archive alike), with
//! torch-sys's own flags. NCCL is compiled in when that libtorch has CUDA
//! and a CUDA toolkit's headers (CUDA_HOME, /usr/local/cuda) and NCCL's (a
//! CUDA wheel's `nvidia-nccl` package) are found; without them the shim is
//! Gloo only.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=AMAT_DIST_NO_NCCL");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch lib folder"),
    );
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    let include = root.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        // Debug info of libtorch's headers doubles the compile (about 35 s
        // of CPU against 17) and serves no one debugging this thin shim.
        .debug(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // The wheel's libtorch is built with Gloo; its header is guarded.
        .define("USE_C10D_GLOO", None)
        .include("third_party/gloo")
        .file("src/shim.cpp");
    if let Some(dirs) = nccl_includes(&lib) {
        build
            .define("USE_C10D_NCCL", None)
            .define("AMAT_NCCL", None);
        build.includes(dirs);
        println!("cargo:rustc-cfg=amat_nccl");
        println!("cargo:rustc-link-lib=torch_cuda");
    }
    println!("cargo::rustc-check-cfg=cfg(amat_nccl)");
    build.compile("amat_dist");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    // This crate's own tests find libtorch as amat-host's binaries do.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Header folders for ProcessGroupNCCL, when this libtorch has CUDA.
fn nccl_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var_os("AMAT_DIST_NO_NCCL").is_some() || !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    // A wheel: site-packages/torch/lib -> site-packages/nvidia/*/include.
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(site) = lib.parent().and_then(Path::parent)
        && let Ok(entries) = std::fs::read_dir(site.join("nvidia"))
    {
        candidates.extend(entries.flatten().map(|e| e.path().join("include")));
    }
    if let Some(cuda) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(cuda).join("include"));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    let find = |files: &[&str]| {
        candidates
            .iter()
            .find(|d| files.iter().all(|f| d.join(f).is_file()))
            .cloned()
    };
    // The runtime wheel alone lacks the toolkit's crt/ headers that
    // cuda_runtime.h includes: a CUDA toolkit (CUDA_HOME) is needed.
    let runtime = find(&["cuda_runtime.h", "crt/host_config.h"])?;
    let nccl = find(&["nccl.h"])?;
    Some(vec![runtime, nccl])
}
