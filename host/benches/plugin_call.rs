//! One loss call on [8, 2, 128, 128] predictions: the segmentation plugin as
//! a wasm component, as a native library, and the same loss built into the
//! host; forward alone and forward + backward. Then the component's compile
//! time, cold and from the cache.
//!
//! Run: `bash host/scripts/build-plugins.sh release && cargo bench -p amat-host --bench plugin_call`

use amat_host::builtin::dice_ce_loss;
use amat_host::plugin::{CompileSource, Plugin, SandboxLimits, compile_component};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const WARMUP: usize = 5;
const RUNS: usize = 40;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    (0..WARMUP).for_each(|_| f());
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn main() {
    let release = target_dir();
    let wasm = release.join("wasm32-wasip2/release/amat_segmentation.wasm");
    let native = release.join("release/libamat_segmentation.so");
    for p in [&wasm, &native] {
        assert!(
            p.exists(),
            "{} missing: run `bash host/scripts/build-plugins.sh release` first",
            p.display()
        );
    }
    println!("threads: {} (libtorch intra-op)", tch::get_num_threads());

    tch::manual_seed(0);
    let pred = Tensor::randn([8, 2, 128, 128], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let target = Tensor::randint(2, [8, 128, 128], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);

    let limits = SandboxLimits::default();
    let mut plugins = [
        ("wasm", Plugin::load(&wasm, &limits).unwrap()),
        ("native", Plugin::load(&native, &limits).unwrap()),
    ];

    let builtin_fwd = time(|| {
        let _ = dice_ce_loss(&pred, &target);
    });
    let builtin_bwd = time(|| {
        let l = dice_ce_loss(&pred, &target).sum(Kind::Float);
        let _ = Tensor::run_backward(&[l], &[&pred], false, false);
    });
    println!(
        "\n{:<10} {:>14} {:>14} {:>12} {:>12}",
        "loss", "forward", "fwd+bwd", "fwd ratio", "f+b ratio"
    );
    println!(
        "{:<10} {:>14?} {:>14?} {:>12} {:>12}",
        "built-in", builtin_fwd, builtin_bwd, "1.000", "1.000"
    );
    for (name, plugin) in plugins.iter_mut() {
        let fwd = time(|| {
            let _ = plugin.loss(&pred, &target).unwrap();
        });
        let bwd = time(|| {
            let l = plugin.loss(&pred, &target).unwrap().sum(Kind::Float);
            let _ = Tensor::run_backward(&[l], &[&pred], false, false);
        });
        println!(
            "{:<10} {:>14?} {:>14?} {:>12.3} {:>12.3}",
            name,
            fwd,
            bwd,
            fwd.as_secs_f64() / builtin_fwd.as_secs_f64(),
            bwd.as_secs_f64() / builtin_bwd.as_secs_f64()
        );
    }

    let bytes = std::fs::read(&wasm).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (_, src) = compile_component(&bytes, Some(cache.path())).unwrap();
    let cold = t.elapsed();
    assert_eq!(src, CompileSource::Compiled);
    let t = Instant::now();
    let (_, src) = compile_component(&bytes, Some(cache.path())).unwrap();
    let cached = t.elapsed();
    assert_eq!(src, CompileSource::Cached);
    println!(
        "\ncomponent ({} KiB): compile cold {cold:?}, from cache {cached:?} ({:.0}x faster)",
        bytes.len() / 1024,
        cold.as_secs_f64() / cached.as_secs_f64()
    );
}
