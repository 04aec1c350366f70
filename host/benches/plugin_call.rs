//! One loss call: the segmentation plugin as a wasm component, as a native
//! library, and the same loss built into the host, all behind the same
//! `Plugin` face (so each pays the host's own shape and finiteness checks);
//! forward alone and forward + backward. Then the component's compile time,
//! cold and from the cache.
//!
//! Two sizes: the [8, 2, 128, 128] predictions of a real batch, and a tiny
//! [1, 2, 4, 4] one whose kernels take almost nothing, so that what remains
//! is the fixed cost of a call (crossing into wasm, lending handles, ~20 host
//! ops each crossing back, the deadline clock). The three implementations run
//! interleaved, one call each per round in a rotating order, and each is
//! compared with the built-in loss of the same round (median of the paired
//! differences), so a machine that slows down for a while slows all three.
//!
//! Run: `bash host/scripts/build-plugins.sh release && cargo bench -p amat-host --bench plugin_call`
//! Sizes: AMAT_BENCH_ROUNDS (200), AMAT_BENCH_THREADS (libtorch threads, 1).

#[path = "common/mod.rs"]
mod common;

use amat_host::plugin::{CompileSource, Plugin, SandboxLimits, compile_component};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const WARMUP: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds of one call of `plugin`'s loss, with or without its backward.
fn call(plugin: &mut Plugin, pred: &Tensor, target: &Tensor, backward: bool) -> f64 {
    let t = Instant::now();
    let loss = plugin.loss(pred, target).unwrap();
    if backward {
        let _ = Tensor::run_backward(&[loss.sum(Kind::Float)], &[pred], false, false);
    }
    t.elapsed().as_secs_f64()
}

/// Per implementation: median seconds per call and the median paired
/// difference to the built-in loss (index 0).
fn measure(
    plugins: &mut [(&str, Plugin)],
    pred: &Tensor,
    target: &Tensor,
    backward: bool,
    rounds: usize,
) -> Vec<(f64, f64)> {
    let n = plugins.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..WARMUP + rounds {
        let mut t = vec![0.0; n];
        for k in 0..n {
            let i = (round + k) % n;
            t[i] = call(&mut plugins[i].1, pred, target, backward);
        }
        if round >= WARMUP {
            for i in 0..n {
                times[i].push(t[i]);
            }
        }
    }
    (0..n)
        .map(|i| {
            let diff = times[i].iter().zip(&times[0]).map(|(a, b)| a - b).collect();
            (median(times[i].clone()), median(diff))
        })
        .collect()
}

fn us(s: f64) -> String {
    format!("{:.1} us", s * 1e6)
}

fn main() {
    let rounds = common::env("AMAT_BENCH_ROUNDS", 200);
    tch::set_num_threads(common::env("AMAT_BENCH_THREADS", 1) as i32);
    let (wasm, native) = (common::segmentation_wasm(), common::segmentation_native());
    let limits = SandboxLimits::default();
    let mut plugins = [
        ("built-in", Plugin::builtin_segmentation(2)),
        ("wasm", Plugin::load(&wasm, &limits).unwrap()),
        ("native", Plugin::load(&native, &limits).unwrap()),
    ];
    println!(
        "one loss call, {rounds} interleaved rounds, libtorch threads {}, default sandbox limits",
        tch::get_num_threads()
    );
    tch::manual_seed(0);
    for shape in [[8i64, 2, 128, 128], [1, 2, 4, 4]] {
        let pred = Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let target = Tensor::randint(
            2,
            [shape[0], shape[2], shape[3]],
            (Kind::Int64, Device::Cpu),
        )
        .to_kind(Kind::Float);
        println!(
            "\npred {shape:?}\n{:<10} {:>12} {:>14} {:>8} {:>12} {:>14} {:>8}",
            "loss", "forward", "- built-in", "ratio", "fwd+bwd", "- built-in", "ratio"
        );
        let fwd = measure(&mut plugins, &pred, &target, false, rounds);
        let bwd = measure(&mut plugins, &pred, &target, true, rounds);
        for (k, (name, _)) in plugins.iter().enumerate() {
            let ((f, df), (b, db)) = (fwd[k], bwd[k]);
            println!(
                "{name:<10} {:>12} {:>14} {:>8.3} {:>12} {:>14} {:>8.3}",
                us(f),
                us(df),
                f / fwd[0].0,
                us(b),
                us(db),
                b / bwd[0].0
            );
        }
    }

    let bytes = std::fs::read(&wasm).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let time = |expect: CompileSource| -> Duration {
        let t = Instant::now();
        let (_, src) = compile_component(&bytes, Some(cache.path())).unwrap();
        assert_eq!(src, expect);
        t.elapsed()
    };
    let cold = time(CompileSource::Compiled);
    let cached = time(CompileSource::Cached);
    println!(
        "\ncomponent ({} KiB): compile cold {cold:?}, from cache {cached:?} ({:.0}x faster)",
        bytes.len() / 1024,
        cold.as_secs_f64() / cached.as_secs_f64()
    );
}
