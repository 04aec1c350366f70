//! `amat-host run --nproc N`: N data-parallel workers on this machine, each
//! this same command with the environment `torchrun` gives its workers
//! (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so a worker
//! cannot tell the two launchers apart.

use crate::dist::TIMEOUT_ENV;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// A port free on this machine now, for rank 0's store.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free local port for the workers' rendezvous")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `nproc` workers running this process's own command line and waits
/// for all; fails naming every worker that failed. `timeout` (seconds) is
/// handed to the workers as `AMAT_DIST_TIMEOUT`.
pub fn launch(nproc: usize, timeout: Option<f64>) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program to start its workers")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let port = free_port()?.to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port);
        if let Some(t) = timeout {
            cmd.env(TIMEOUT_ENV, t.to_string());
        }
        // As torchrun: workers share the cores instead of each taking all.
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", (cores / nproc).max(1).to_string());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start worker {rank} ({})", exe.display()))?;
        workers.push(child);
    }
    let mut failed = Vec::new();
    for (rank, mut w) in workers.into_iter().enumerate() {
        let status = w
            .wait()
            .with_context(|| format!("waiting for worker {rank}"))?;
        if !status.success() {
            failed.push(format!("rank {rank} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {nproc} workers failed: {} (their messages are above)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
