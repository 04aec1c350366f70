//! Data-parallel collectives from libtorch's own c10d (TCPStore rendezvous,
//! Gloo for CPU tensors, NCCL for CUDA tensors) through a small C++ shim (`src/shim.cpp`):
//! no collective is implemented here. Errors (a peer gone, a timeout) come
//! back as messages, never as exceptions or hangs.

use std::ffi::{CStr, CString, c_char, c_int, c_longlong};
use std::time::Duration;
use tch::Tensor;
use torch_sys::C_tensor;

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn amat_dist_free_error(e: *mut c_char);
    fn amat_dist_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_longlong,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    fn amat_dist_drop(g: *mut RawGroup);
    fn amat_dist_broadcast(
        g: *mut RawGroup,
        ts: *const *mut C_tensor,
        n: c_int,
        root: c_int,
    ) -> *mut c_char;
    fn amat_dist_allreduce_sum(
        g: *mut RawGroup,
        ts: *const *mut C_tensor,
        n: c_int,
        bucket_bytes: c_longlong,
    ) -> *mut c_char;
    fn amat_dist_allgather(
        g: *mut RawGroup,
        t: *mut C_tensor,
        out: *const *mut C_tensor,
    ) -> *mut c_char;
    fn amat_dist_barrier(g: *mut RawGroup) -> *mut c_char;
}

/// Whether this build can reduce CUDA tensors (NCCL).
pub const HAS_NCCL: bool = cfg!(amat_nccl);

/// Where the group meets and who this process is in it.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    /// Rank 0's address; rank 0 serves the TCPStore on `port`.
    pub host: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// Longest wait for the rendezvous and for any collective.
    pub timeout: Duration,
}

/// One process's membership of a c10d process group.
pub struct Group {
    raw: *mut RawGroup,
    rank: usize,
    world: usize,
}

// c10d backends serve collectives from any thread; `&mut self` on every
// collective keeps calls from one Group in order.
unsafe impl Send for Group {}

/// A c10d error message, owned.
fn take(e: *mut c_char) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(e) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { amat_dist_free_error(e) };
    Err(msg)
}

fn ptrs(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
    // c10d writes through these (in-place collectives); tch's tensors share
    // storage, so a `&Tensor` names the storage the caller asked to change.
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

impl Group {
    /// Joins the group; blocks until all `world` ranks have, or the timeout.
    /// Collectives over CPU tensors go through Gloo; the first over CUDA
    /// tensors (on every rank at once) sets up NCCL.
    pub fn join(rv: &Rendezvous) -> Result<Self, String> {
        let host = CString::new(rv.host.as_str()).map_err(|_| "a NUL in the host name")?;
        let mut raw = std::ptr::null_mut();
        take(unsafe {
            amat_dist_new(
                host.as_ptr(),
                rv.port as c_int,
                rv.rank as c_int,
                rv.world as c_int,
                rv.timeout.as_millis().min(i64::MAX as u128) as c_longlong,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw,
            rank: rv.rank,
            world: rv.world,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Every rank's tensors take `root`'s values, in place.
    pub fn broadcast(&mut self, ts: &[&Tensor], root: usize) -> Result<(), String> {
        let p = ptrs(ts);
        take(unsafe { amat_dist_broadcast(self.raw, p.as_ptr(), p.len() as c_int, root as c_int) })
    }

    /// Sums each tensor over the ranks, in place, in flat buckets of at most
    /// `bucket_bytes` (a tensor larger than that is a bucket of its own).
    pub fn all_reduce_sum(&mut self, ts: &[&Tensor], bucket_bytes: usize) -> Result<(), String> {
        let p = ptrs(ts);
        take(unsafe {
            amat_dist_allreduce_sum(
                self.raw,
                p.as_ptr(),
                p.len() as c_int,
                bucket_bytes.min(i64::MAX as usize) as c_longlong,
            )
        })
    }

    /// Every rank's `t` (the same shape on every rank), in rank order.
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Vec<Tensor>, String> {
        let out: Vec<Tensor> = (0..self.world).map(|_| t.empty_like()).collect();
        let p = ptrs(&out.iter().collect::<Vec<_>>());
        take(unsafe { amat_dist_allgather(self.raw, t.as_ptr() as *mut C_tensor, p.as_ptr()) })?;
        Ok(out)
    }

    pub fn barrier(&mut self) -> Result<(), String> {
        take(unsafe { amat_dist_barrier(self.raw) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { amat_dist_drop(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Runs `f(rank, group)` on `world` threads joined in one Gloo group.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(usize, &mut Group) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let rv = Rendezvous {
                        host: "127.0.0.1".into(),
                        port,
                        rank,
                        world,
                        timeout: Duration::from_secs(30),
                    };
                    let mut g = Group::join(&rv).expect("join");
                    f(rank, &mut g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_over_two_ranks() {
        let out = on_ranks(2, |rank, g| {
            let r = rank as f64;
            // Broadcast: rank 1 takes rank 0's values.
            let w = Tensor::full([3], r + 10.0, (Kind::Float, Device::Cpu));
            g.broadcast(&[&w], 0).unwrap();
            // All-reduce over three tensors and two dtypes, buckets of 16 bytes:
            // the first two share a bucket, the third and fourth have their own.
            let a = Tensor::from_slice(&[1.0f32, 2.0]) * (r + 1.0);
            let b = Tensor::from_slice(&[3.0f32]) * (r + 1.0);
            let c = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)) * (r + 1.0);
            let d = Tensor::from_slice(&[5.0f64]) * (r + 1.0);
            g.all_reduce_sum(&[&a, &b, &c, &d], 16).unwrap();
            let gathered = g
                .all_gather(&Tensor::from_slice(&[rank as i64, 7]))
                .unwrap();
            g.barrier().unwrap();
            let v =
                |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap();
            (
                v(&w),
                v(&a),
                v(&b),
                v(&c),
                v(&d),
                gathered.iter().map(v).collect::<Vec<_>>(),
            )
        });
        for (w, a, b, c, d, gathered) in out {
            assert_eq!(w, vec![10.0; 3]);
            assert_eq!(a, vec![3.0, 6.0]);
            assert_eq!(b, vec![9.0]);
            assert_eq!(c, vec![3.0; 6]);
            assert_eq!(d, vec![15.0]);
            assert_eq!(gathered, vec![vec![0.0, 7.0], vec![1.0, 7.0]]);
        }
    }

    #[test]
    fn a_missing_peer_is_an_error_within_the_timeout() {
        let rv = Rendezvous {
            host: "127.0.0.1".into(),
            port: free_port(),
            rank: 0,
            world: 2,
            timeout: Duration::from_millis(1500),
        };
        let err = Group::join(&rv).err().expect("no peer came");
        assert!(!err.is_empty());
    }

    #[test]
    fn a_peer_that_leaves_fails_the_collective() {
        let out = on_ranks(2, |rank, g| {
            let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
            g.all_reduce_sum(&[&t], 1 << 20).unwrap();
            if rank == 1 {
                return None;
            }
            // Rank 1 has returned (its group is dropped): this reduction fails.
            std::thread::sleep(Duration::from_millis(300));
            Some(g.all_reduce_sum(&[&t], 1 << 20))
        });
        let err = out[0].as_ref().unwrap().as_ref().expect_err("a failure");
        assert!(!err.is_empty(), "{err}");
    }
}
