#![allow(unreachable_code, unused_variables, unused_imports)]
//! A plugin that misbehaves on purpose, one way per build: the cargo feature
//! picks the way (tests/support/hostile.rs builds one `.wasm` per feature).
//! Without a feature it is a well-behaved segmentation-like task (8 classes,
//! one input channel, per-sample cross-entropy), so a run trained with it can
//! be resumed with the real segmentation plugin.

use amat_plugin_sdk::{
    DecodeRequest, Dense, Example, Metric, TargetKind, Task, TaskInfo, Tensor, export_task,
};
use std::hint::black_box;

pub struct Hostile;

const CLASSES: i64 = 8;

/// Per-sample mean cross-entropy of logits [B, C, H, W] against a class map
/// [B, H, W] stored as floats.
fn cross_entropy(pred: &Tensor, target: &Tensor) -> Tensor {
    let classes = pred.size(1);
    let y = target.to_long().one_hot(classes).permute(&[0, 3, 1, 2]);
    -(&pred.log_softmax(1) * &y)
        .sum(&[1], false)
        .mean(&[1, 2], false)
}

/// Unbounded recursion on the wasm stack itself: an indirect call (which
/// cannot become a loop) whose state stays in wasm locals, not in the linear
/// memory's shadow stack.
#[cfg(feature = "deep-recursion")]
fn deep(next: fn(Next, u64) -> u64, n: u64) -> u64 {
    next(Next(next), n + 1).wrapping_mul(n | 1)
}

#[cfg(feature = "deep-recursion")]
#[derive(Clone, Copy)]
struct Next(fn(Next, u64) -> u64);

#[cfg(feature = "deep-recursion")]
fn step(next: Next, n: u64) -> u64 {
    deep(next.0, n)
}

#[cfg(feature = "stale-handle")]
thread_local! {
    static KEPT: std::cell::RefCell<Option<Tensor>> = const { std::cell::RefCell::new(None) };
}

#[cfg(feature = "fail-after")]
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Loss calls that succeed before the `fail-after` build starts failing.
#[cfg(feature = "fail-after")]
const FAIL_AFTER: u64 = match option_env!("HOSTILE_FAIL_AFTER") {
    Some(s) => parse(s),
    None => 4,
};

#[cfg(feature = "fail-after")]
const fn parse(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    n
}

impl Task for Hostile {
    fn describe() -> TaskInfo {
        TaskInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A test plugin that misbehaves on purpose".into(),
            input_channels: 1,
            output_channels: CLASSES as u32,
            target_kind: TargetKind::ClassMap,
            tau: 0.35,
            intensity_min: 0.0,
            intensity_max: 1.0,
            metric_names: vec!["accuracy".into()],
            scores: Vec::new(),
        }
    }

    fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
        #[cfg(feature = "filesystem")]
        {
            let secret = std::fs::read("/etc/passwd").map_err(|e| e.to_string())?;
            return Err(format!("read {} bytes it should not see", secret.len()));
        }
        // A square grey image of raw bytes; its class map is the intensity
        // cut into `CLASSES` bands.
        let file = request.files.first().ok_or("hostile decode: no file")?;
        let n = (file.bytes.len() as f64).sqrt() as usize;
        if n == 0 || n * n != file.bytes.len() {
            return Err(format!(
                "hostile decode: {} bytes is not a square image",
                file.bytes.len()
            ));
        }
        let image: Vec<f32> = file.bytes.iter().map(|&b| b as f32 / 255.0).collect();
        let target: Vec<f32> = file
            .bytes
            .iter()
            .map(|&b| (b as i64 * CLASSES / 256) as f32)
            .collect();
        let side = n as i64;
        Ok(vec![Example {
            id: file.name.clone(),
            image: Dense::new(vec![1, side, side], image)?,
            target: Dense::new(vec![side, side], target)?,
        }])
    }

    fn loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        #[cfg(feature = "infinite-loop")]
        loop {
            black_box(());
        }
        #[cfg(feature = "memory-bomb")]
        {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 16 << 20]));
            }
        }
        #[cfg(feature = "tensor-bomb-full")]
        return Ok(Tensor::full(1.0, &[1 << 20, 1 << 20, 1 << 10]));
        #[cfg(feature = "tensor-bomb-one-hot")]
        return Ok(target.to_long().one_hot(1 << 40));
        #[cfg(feature = "deep-recursion")]
        return Err(format!(
            "recursion ended at {}",
            step(Next(black_box(step as fn(Next, u64) -> u64)), 0)
        ));
        #[cfg(feature = "panic")]
        panic!("hostile plugin panics on purpose");
        #[cfg(feature = "environment")]
        return Err(format!(
            "HOME={:?} PATH={:?} args={:?}",
            std::env::var("HOME"),
            std::env::var("PATH"),
            std::env::args().collect::<Vec<_>>()
        ));
        #[cfg(feature = "clock")]
        return Err(format!("the time is {:?}", std::time::SystemTime::now()));
        #[cfg(feature = "huge-error")]
        return Err("x".repeat(4 << 20));
        #[cfg(feature = "fail-after")]
        {
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n > FAIL_AFTER {
                return Err(format!("hostile plugin fails on purpose at loss call {n}"));
            }
        }
        #[cfg(feature = "handle-leak")]
        for _ in 0..100 {
            // Never dropped: the handle stays in the runtime's table.
            std::mem::forget(Tensor::full(0.0, &[1]));
        }
        let loss = cross_entropy(pred, target);
        #[cfg(feature = "nan-loss")]
        return Ok(loss * f64::NAN);
        #[cfg(feature = "wrong-shape")]
        return Ok(loss.sum(&[], false));
        #[cfg(feature = "detached")]
        return Ok(loss.detach());
        #[cfg(feature = "stale-handle")]
        {
            // Keep a tensor of this call and hand it back in the next one.
            let old = KEPT.with(|k| k.borrow_mut().take());
            if let Some(old) = old {
                return Ok(old);
            }
            KEPT.with(|k| *k.borrow_mut() = Some(&loss * 1.0));
        }
        Ok(loss)
    }

    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String> {
        let hit = pred
            .argmax(1, false)
            .to_float()
            .eq(target)
            .to_float()
            .mean(&[], false)
            .to_vec();
        Ok(vec![Metric {
            name: "accuracy".into(),
            value: hit[0] as f64,
        }])
    }
}

export_task!(Hostile);
