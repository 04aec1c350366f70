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

mod silent;

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

#[cfg(feature = "metrics-drift")]
static METRIC_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The index the `one-hot-negative` build one-hots with classes = -1: on a
/// host that sizes the result from it, 2^27 columns (1 GiB of longs).
#[cfg(feature = "one-hot-negative")]
const ONE_HOT_INDEX: i64 = 1 << 27;

/// The `wrong-handles` build's prediction handle of its last 1-sample call.
#[cfg(all(feature = "wrong-handles", not(target_arch = "wasm32")))]
static LENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Hands the host a wrong handle picked by the batch size (the test picks
/// it): 1 keeps the lent prediction's handle and succeeds; 2 uses that
/// handle in a later call; 3 one this call dropped; 4 one never issued; 5
/// one past 32 bits whose low half is the prediction's (a host that
/// truncated it would alias the prediction).
#[cfg(all(feature = "wrong-handles", not(target_arch = "wasm32")))]
fn wrong_handle(pred: &Tensor) -> Option<Tensor> {
    use amat_plugin_sdk::native::{handle_of, tensor_at_handle};
    use std::sync::atomic::Ordering;
    let wrong = match pred.size(0) {
        1 => {
            LENT.store(handle_of(pred), Ordering::Relaxed);
            return None;
        }
        2 => LENT.load(Ordering::Relaxed),
        3 => {
            let t = pred * 1.0;
            handle_of(&t)
        }
        4 => u64::from(u32::MAX - 7),
        _ => (1 << 32) | handle_of(pred),
    };
    // Any op on it must fail in the host and end this call.
    Some(tensor_at_handle(wrong).exp())
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
        #[cfg(feature = "ansi-name")]
        let name = "\u{1b}[31mhostile\u{1b}[0m\nsecond line".to_string();
        #[cfg(feature = "huge-name")]
        let name = format!("hostile{}", "\u{1b}[2J".repeat(1 << 20));
        #[cfg(not(any(feature = "ansi-name", feature = "huge-name")))]
        let name = "hostile".to_string();
        #[cfg(feature = "huge-channels")]
        let output_channels = 4_000_000_000;
        #[cfg(not(feature = "huge-channels"))]
        let output_channels = CLASSES as u32;
        TaskInfo {
            name,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A test plugin that misbehaves on purpose".into(),
            input_channels: 1,
            output_channels,
            target_kind: TargetKind::ClassMap,
            tau: silent::tau(),
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
        // cut into `CLASSES` bands. With `"slices"` in the options, ten
        // slices `<file>:axial:<k>` (pixel 0 of slice k is k / 255), as a
        // volume decoder's; with `"mixed"`, slice 5 is one pixel narrower.
        let file = request.files.first().ok_or("hostile decode: no file")?;
        if request.options.contains("\"huge\"") {
            // 144 MiB a list: past what the host copies out of one call.
            let side = 6000;
            let zeros = || vec![0f32; (side * side) as usize];
            return Ok(vec![Example {
                id: "huge:axial:0".into(),
                image: Dense::new(vec![1, side, side], zeros())?,
                target: Dense::new(vec![side, side], zeros())?,
            }]);
        }
        let slices = request.options.contains("\"slices\"");
        let mixed = request.options.contains("\"mixed\"");
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
        if !(slices || mixed) {
            return Ok(vec![Example {
                id: file.name.clone(),
                image: Dense::new(vec![1, side, side], image)?,
                target: Dense::new(vec![side, side], target)?,
            }]);
        }
        let stem = file.name.split('.').next().unwrap_or("raw");
        (0..10)
            .map(|k| {
                let mut image = image.clone();
                image[0] = k as f32 / 255.0;
                let mut target = target.clone();
                let mut w = side;
                if mixed && k == 5 {
                    // Drop the last column of every row.
                    let keep = |i: &usize| (*i as i64) % side != side - 1;
                    image = image
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| keep(i))
                        .map(|(_, v)| *v)
                        .collect();
                    target = target
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| keep(i))
                        .map(|(_, v)| *v)
                        .collect();
                    w = side - 1;
                }
                Ok(Example {
                    id: format!("{stem}:axial:{k}"),
                    image: Dense::new(vec![1, side, w], image)?,
                    target: Dense::new(vec![side, w], target)?,
                })
            })
            .collect()
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
        #[cfg(feature = "one-hot-negative")]
        return Ok(Tensor::from_i64(&[ONE_HOT_INDEX], &[1]).one_hot(-1));
        #[cfg(feature = "million-ops")]
        {
            // Zero elements, but every op is a node of the host's autograd
            // graph, kept alive by the next one.
            let mut t = pred.narrow(0, 0, 0);
            for _ in 0..1_000_000 {
                t = t.exp();
            }
            return Ok(t.sum(&[1, 2, 3], false));
        }
        #[cfg(all(feature = "wrong-handles", not(target_arch = "wasm32")))]
        if let Some(t) = wrong_handle(pred) {
            return Err(format!(
                "the host accepted a wrong handle (a tensor of shape {:?})",
                t.shape()
            ));
        }
        #[cfg(feature = "stderr-spam")]
        eprintln!("hostile plugin logs at every call: {}", "x".repeat(200));
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
        let loss = silent::loss(cross_entropy, pred, target);
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
        let accuracy = Metric {
            name: "accuracy".into(),
            value: hit[0] as f64,
        };
        #[cfg(any(feature = "metrics-renamed", feature = "sdk-losses"))]
        return silent::metrics(accuracy);
        #[cfg(feature = "metrics-duplicate")]
        return Ok(vec![accuracy.clone(), accuracy]);
        #[cfg(feature = "metrics-drift")]
        if METRIC_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
            return Ok(vec![Metric {
                name: "accuracy_v2".into(),
                value: accuracy.value,
            }]);
        }
        Ok(vec![accuracy])
    }
}

export_task!(Hostile);
