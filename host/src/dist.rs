//! Data-parallel training's plumbing: which rank this process is (the
//! `torchrun` environment), and the collectives of libtorch's c10d (Gloo on
//! CPU, NCCL on CUDA, through `amat-dist-shim`) in the shapes training
//! needs. A collective that fails (a rank died, or none answered within the
//! timeout) is an error naming this rank, never a hang.

use anyhow::{Context, Result, bail};
use std::ops::Range;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

pub use amat_dist_shim::Rendezvous;

/// Seconds a rank waits for the others (rendezvous and each collective)
/// before it gives up; read by every rank.
pub const TIMEOUT_ENV: &str = "AMAT_DIST_TIMEOUT";
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;
/// Gradients are reduced in flat buckets of this size (DDP's default).
const BUCKET_BYTES: usize = 25 << 20;

/// This process's place in a data-parallel run, from the environment
/// `torchrun` (and `amat-host run --nproc`) gives each worker.
#[derive(Clone, Debug)]
pub struct Worker {
    pub rendezvous: Rendezvous,
    /// The rank among this node's workers: the CUDA device it takes.
    pub local_rank: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .ok()
        .with_context(|| format!("environment variable {name} = `{value}` is not a valid number"))
}

/// The rank's timeout: `AMAT_DIST_TIMEOUT` seconds, else the default.
pub fn timeout_from_env() -> Result<Duration> {
    match var(TIMEOUT_ENV) {
        Some(v) => timeout(parse::<f64>(TIMEOUT_ENV, &v)?),
        None => timeout(DEFAULT_TIMEOUT_SECS),
    }
}

/// `secs` as a timeout, checked.
pub fn timeout(secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        bail!("a data-parallel timeout of {secs} s: give a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The worker this process is, if it was started as one rank of several
/// (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `LOCAL_RANK`);
/// None for a plain single-process run (no `WORLD_SIZE`, or 1).
pub fn worker_from_env() -> Result<Option<Worker>> {
    let Some(world) = var("WORLD_SIZE") else {
        return Ok(None);
    };
    let world: usize = parse("WORLD_SIZE", &world)?;
    if world <= 1 {
        return Ok(None);
    }
    let need = |name: &str| {
        var(name).with_context(|| {
            format!("WORLD_SIZE = {world} but {name} is not set (a launcher such as torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)")
        })
    };
    let rank: usize = parse("RANK", &need("RANK")?)?;
    if rank >= world {
        bail!("RANK = {rank} is not below WORLD_SIZE = {world}");
    }
    let port: u16 = parse("MASTER_PORT", &need("MASTER_PORT")?)?;
    let local_rank = match var("LOCAL_RANK") {
        Some(v) => parse("LOCAL_RANK", &v)?,
        None => rank,
    };
    Ok(Some(Worker {
        rendezvous: Rendezvous {
            host: need("MASTER_ADDR")?,
            port,
            rank,
            world,
            timeout: timeout_from_env()?,
        },
        local_rank,
    }))
}

/// Samples `range` of a global batch of `len` that rank `rank` of `world`
/// takes: contiguous, the first `len % world` ranks one more.
pub fn shard(len: usize, rank: usize, world: usize) -> Range<usize> {
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// A row of [`Dist::gather_rows`].
pub type Row = [f64; 5];

/// One rank's membership of the run's process group.
pub struct Dist {
    group: amat_dist_shim::Group,
    /// Training's device: the small tensors of `sum` and `gather_rows`
    /// are made there so one backend carries a step's collectives.
    device: Device,
    timeout: Duration,
}

impl Dist {
    /// Joins the group. Collectives over `device`'s tensors go through
    /// NCCL when it is a CUDA device, else Gloo; the rest through Gloo.
    pub fn join(worker: &Worker) -> Result<Self> {
        let rv = &worker.rendezvous;
        let group = amat_dist_shim::Group::join(rv).map_err(|e| {
            anyhow::anyhow!(
                "rank {} of {}: cannot join the data-parallel group at {}:{} (waiting at most {:.0} s): {e}",
                rv.rank,
                rv.world,
                rv.host,
                rv.port,
                rv.timeout.as_secs_f64()
            )
        })?;
        Ok(Self {
            group,
            device: Device::Cpu,
            timeout: rv.timeout,
        })
    }

    /// Where training's tensors live: gradients are reduced there.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    /// This rank's part of a global batch of `len`.
    pub fn shard(&self, len: usize) -> Range<usize> {
        shard(len, self.rank(), self.world())
    }

    fn failed(&self, what: &str, e: String) -> anyhow::Error {
        anyhow::anyhow!(
            "rank {} of {}: the {what} failed, so data-parallel training stops (another rank stopped, or none answered within {:.0} s; resume the run from its last checkpoint with --resume): {e}",
            self.rank(),
            self.world(),
            self.timeout.as_secs_f64()
        )
    }

    /// Every rank's tensors take rank 0's values, in place.
    pub fn broadcast(&mut self, ts: &[&Tensor]) -> Result<()> {
        let moved: Vec<Tensor> = ts.iter().map(|t| t.to_device(self.device)).collect();
        self.group
            .broadcast(&moved.iter().collect::<Vec<_>>(), 0)
            .map_err(|e| self.failed("broadcast from rank 0", e))?;
        for (t, m) in ts.iter().zip(&moved) {
            if t.device() != self.device {
                t.shallow_clone().copy_(m);
            }
        }
        Ok(())
    }

    /// Rank 0's bytes on every rank (`bytes` is read on rank 0 only).
    pub fn broadcast_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&[&len])?;
        let len = len.int64_value(&[0]) as usize;
        let data = if self.rank() == 0 {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([len as i64], (Kind::Uint8, Device::Cpu))
        };
        self.broadcast(&[&data])?;
        Ok(Vec::<u8>::try_from(data)?)
    }

    /// Sums gradients (or any tensors on the training device) over the
    /// ranks, in place, bucketed.
    pub fn all_reduce_sum(&mut self, ts: &[&Tensor]) -> Result<()> {
        self.group
            .all_reduce_sum(ts, BUCKET_BYTES)
            .map_err(|e| self.failed("gradient all-reduce", e))
    }

    /// Each value summed over the ranks.
    pub fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.group
            .all_reduce_sum(&[&t], BUCKET_BYTES)
            .map_err(|e| self.failed("sum over ranks", e))?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu))?)
    }

    /// Every rank's rows (their number may differ between ranks), in rank
    /// order.
    pub fn gather_rows(&mut self, rows: &[Row]) -> Result<Vec<Row>> {
        let counts = self.counts(rows.len())?;
        let most = counts.iter().copied().max().unwrap_or(0);
        let mut flat: Vec<f64> = rows.iter().flatten().copied().collect();
        flat.resize(most * 5, 0.0);
        let t = Tensor::from_slice(&flat).to_device(self.device);
        let all = self
            .group
            .all_gather(&t)
            .map_err(|e| self.failed("gather of the margins", e))?;
        let mut out = Vec::new();
        for (part, &n) in all.iter().zip(&counts) {
            let v = Vec::<f64>::try_from(part.to_device(Device::Cpu))?;
            out.extend(v.chunks(5).take(n).map(|c| [c[0], c[1], c[2], c[3], c[4]]));
        }
        Ok(out)
    }

    /// Each rank's `n`, in rank order.
    fn counts(&mut self, n: usize) -> Result<Vec<usize>> {
        let t = Tensor::from_slice(&[n as i64]).to_device(self.device);
        let all = self
            .group
            .all_gather(&t)
            .map_err(|e| self.failed("gather of the margins", e))?;
        Ok(all.iter().map(|t| t.int64_value(&[0]) as usize).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_a_batch_once_in_order() {
        for len in 0..12 {
            for world in 1..5 {
                let parts: Vec<Range<usize>> = (0..world).map(|r| shard(len, r, world)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
    }
}
