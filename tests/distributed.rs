//! Data-parallel training on libtorch's c10d (Gloo, on this machine's CPU):
//! two ranks train exactly as one process over the same global batches, and
//! a rank that dies stops the others with an error, never a hang, after
//! which `--resume` (with any number of ranks) completes the run.
//!
//! The network has no max-pooling (`depth = 0`): a max-pool routes the
//! gradient to the larger of two nearly equal inputs, and the float rounding
//! of a batch of 4 differs from that of a batch of 8 by about 1e-7, which
//! can flip such a near-tie; PGD then follows a different gradient and two
//! runs drift apart by far more than rounding (1e-4 in the loss after one
//! epoch with the default 2-level U-Net). Without batch norm (instance norm
//! here, per sample) nothing else depends on how a batch is split.

use crate::support;
use crate::support::runs::{epochs, latest_checkpoint, tensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tiny run; `amat` is added to its `[amat]` section.
fn config(dir: &Path, name: &str, method: &str, amat: &str) -> PathBuf {
    let text = format!(
        "[run]\nmethod = \"{method}\"\nthreads = 1\nseed = 5\nplugin = \"{}\"\n\
         [data.synthetic]\ntrain = 19\ntest = 2\nsize = 16\n\
         [model]\nwidth = 4\ndepth = 0\n\
         [train]\nepochs = 3\nwarmup_epochs = 1\nbatch_size = 8\n\
         [train.attack]\nsteps = 3\nrandom_start = false\n\
         [sat]\neps = 1.0\n[amat]\ngrow_epochs = 8\neps_max = 4.0\ntau = 3.45\n{amat}\
         [eval]\neps = [0.0]\nbatch_size = 2\nrestarts = 1\n[eval.attack]\nsteps = 1\n",
        support::native_plugin("segmentation").display()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Largest absolute difference between two safetensors files' tensors.
fn max_difference(a: &Path, b: &Path) -> f64 {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    ta.iter()
        .zip(&tb)
        .map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            (va - vb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trains `method` in one process and on two ranks (`--nproc 2`) from the
/// same config, and compares weights, margins and epoch records.
fn two_ranks_equal_one(method: &str, amat: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "run.toml", method, amat);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let out = support::run_amat_host(&["run", "--config", s(&cfg), "--out", s(&one)]);
    assert!(out.status.success());
    let out =
        support::run_amat_host(&["run", "--nproc", "2", "--config", s(&cfg), "--out", s(&two)]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rank 1: training done"), "{stdout}");
    assert!(stdout.contains("run finished"), "{stdout}");

    let (a, b) = (latest_checkpoint(&one), latest_checkpoint(&two));
    let w = max_difference(
        &a.join("weights.safetensors"),
        &b.join("weights.safetensors"),
    );
    assert!(w < 1e-5, "{method}: weights differ by {w}");
    let o = max_difference(
        &a.join("optimizer.safetensors"),
        &b.join("optimizer.safetensors"),
    );
    assert!(o < 1e-5, "{method}: optimizer state differs by {o}");
    let (ea, eb) = (epochs(&one), epochs(&two));
    assert_eq!(ea.len(), 3);
    assert_eq!(ea.len(), eb.len());
    for (ra, rb) in ea.iter().zip(&eb) {
        for key in [
            "clean_loss",
            "eps_median",
            "grown",
            "crossed",
            "stayed",
            "not_learned",
        ] {
            let (x, y) = (ra[key].as_f64().unwrap(), rb[key].as_f64().unwrap());
            assert!(
                (x - y).abs() < 1e-5,
                "{method}, epoch {}: {key} {x} vs {y}",
                ra["epoch"]
            );
        }
    }
    if method == "amat" {
        let m = max_difference(
            &a.join("margins.safetensors"),
            &b.join("margins.safetensors"),
        );
        assert!(m < 1e-5, "margins differ by {m}");
        // The margins moved, so their agreement says something.
        let last = &ea[2];
        for key in ["grown", "crossed", "not_learned"] {
            assert!(last[key].as_f64().unwrap() > 0.0, "no {key}: {last}");
        }
    }
}

#[test]
fn two_ranks_train_sat_as_one_process_over_the_same_batches() {
    two_ranks_equal_one("sat", "");
}

/// The reference rule with the clean gate: margins are observed on each
/// rank and replayed everywhere at the epoch's end; the gate's count is
/// summed over the ranks. 19 samples in batches of 8 leave a last batch of
/// 3, split 2 + 1.
#[test]
fn two_ranks_train_amat_as_one_process_over_the_same_batches() {
    two_ranks_equal_one("amat", "tau_clean = 3.3\n");
}

/// The boundary rule moves margins after each batch; the ranks replay each
/// other's moves at the epoch's end.
#[test]
fn two_ranks_keep_the_boundary_rule_s_margins_as_one_process() {
    two_ranks_equal_one("amat", "tau_clean = 3.3\nrule = \"boundary\"\n");
}

/// One worker as `torchrun` starts it.
fn worker(rank: usize, port: u16, args: &[&str]) -> std::process::Child {
    support::amat_host()
        .args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_dead_rank_stops_the_other_and_the_run_resumes_on_one() {
    let tmp = tempfile::tempdir().unwrap();
    // Ten batches an epoch and six epochs: the run is far from done when
    // its first checkpoint appears.
    let cfg = config(tmp.path(), "run.toml", "sat", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("train = 19", "train = 40")
        .replace("epochs = 3", "epochs = 6")
        .replace("batch_size = 8", "batch_size = 4");
    std::fs::write(&cfg, text).unwrap();
    let run = tmp.path().join("run");
    let port = amat_host::app::launch::free_port().unwrap();
    let args = [
        "run",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--dist-timeout",
        "60",
    ];
    let rank0 = worker(0, port, &args);
    let mut rank1 = worker(1, port, &args);
    while !run.join("checkpoints/latest").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let out = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rank 0 finished without its peer: {stderr}"
    );
    assert!(
        stderr.contains("rank 0 of 2") && stderr.contains("--resume"),
        "{stderr}"
    );
    let done = epochs(&run).len();
    assert!((1..6).contains(&done), "{done} epochs recorded");

    // One process takes over from the last checkpoint.
    let out = support::run_amat_host(&["run", "--resume", s(&run)]);
    assert!(out.status.success());
    assert_eq!(epochs(&run).len(), 6);
    assert!(run.join("robustness.json").is_file());
}

#[test]
fn a_worker_without_its_rendezvous_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_amat-host"))
        .args(["run", "--config", "nothing.toml"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .env("MASTER_PORT", "29500")
        .env_remove("MASTER_ADDR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MASTER_ADDR is not set"), "{stderr}");
}
