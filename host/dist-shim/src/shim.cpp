// A C ABI over libtorch's c10d: a TCPStore rendezvous, a Gloo process
// group for CPU tensors and (made on the first collective over CUDA
// tensors, which every rank reaches together) an NCCL one for CUDA
// tensors, and the four collectives data-parallel training needs. Tensors arrive as the `at::Tensor*` behind tch's
// `C_tensor`. No C++ exception crosses this boundary: every function
// returns NULL on success or a malloc'd message the caller frees with
// amat_dist_free_error.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef AMAT_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;
  std::chrono::milliseconds timeout;
  int rank;
  int world;
};

// The backend for tensors like `t`: NCCL for CUDA tensors, Gloo otherwise.
c10d::Backend &backend(Group *g, const at::Tensor &t) {
  if (!t.is_cuda()) {
    return *g->gloo;
  }
  if (!g->nccl) {
#ifdef AMAT_NCCL
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = g->timeout;
    auto store = c10::make_intrusive<c10d::PrefixStore>("nccl", g->store);
    g->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, g->rank,
                                                          g->world, o);
#else
    throw std::runtime_error(
        "collectives over CUDA tensors need NCCL, and this amat-host was "
        "built without it (its libtorch has no CUDA, or no CUDA toolkit "
        "headers were found at build time: set CUDA_HOME)");
#endif
  }
  return *g->nccl;
}

char *message(const std::string &s) {
  char *out = static_cast<char *>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// Runs `f`, turning any exception into a message (c10's without its
// backtrace, which would bury the one line that matters).
template <typename F> char *guard(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in c10d");
  }
}

void wait(Group *g, const c10::intrusive_ptr<c10d::Work> &work) {
  work->wait(g->timeout);
}

std::vector<at::Tensor> tensors(at::Tensor **ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

} // namespace

extern "C" {

void amat_dist_free_error(char *e) { std::free(e); }

// Joins the group: rank 0 serves the store at host:port, every rank
// connects to it.
char *amat_dist_new(const char *host, int port, int rank, int world,
                    long long timeout_ms, Group **out) {
  *out = nullptr;
  return guard([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>("gloo", tcp);
    auto o = c10d::ProcessGroupGloo::Options::create(timeout);
    // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface,
    // else the address this host's name resolves to (or loopback).
    const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
    o->devices.push_back(
        ifname != nullptr && ifname[0] != '\0'
            ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
            : c10d::ProcessGroupGloo::createDefaultDevice());
    auto gloo =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    *out = new Group{tcp, gloo, {}, timeout, rank, world};
  });
}

void amat_dist_drop(Group *g) { delete g; }

// Every rank's `t` becomes root's.
char *amat_dist_broadcast(Group *g, at::Tensor **ts, int n, int root) {
  return guard([&] {
    auto v = tensors(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    for (auto &t : v) {
      std::vector<at::Tensor> one{t};
      wait(g, backend(g, t).broadcast(one, o));
    }
  });
}

// Sums the tensors over the ranks, in place. Tensors are packed into
// buckets of at most `bucket_bytes` (one flat buffer each, as DDP's
// reducer does), every bucket's reduction is started before the first is
// awaited, and results are copied back.
char *amat_dist_allreduce_sum(Group *g, at::Tensor **ts, int n,
                              long long bucket_bytes) {
  return guard([&] {
    auto v = tensors(ts, n);
    std::vector<std::vector<at::Tensor>> buckets;
    long long filled = 0;
    for (auto &t : v) {
      long long bytes = t.numel() * t.element_size();
      bool same = !buckets.empty() &&
                  buckets.back().front().scalar_type() == t.scalar_type();
      if (buckets.empty() || !same || filled + bytes > bucket_bytes) {
        buckets.emplace_back();
        filled = 0;
      }
      buckets.back().push_back(t);
      filled += bytes;
    }
    std::vector<at::Tensor> flat;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    for (auto &b : buckets) {
      std::vector<at::Tensor> parts;
      for (auto &t : b) {
        parts.push_back(t.reshape({-1}));
      }
      flat.push_back(at::cat(parts));
      std::vector<at::Tensor> one{flat.back()};
      works.push_back(backend(g, one[0]).allreduce(one, o));
    }
    for (size_t i = 0; i < buckets.size(); ++i) {
      wait(g, works[i]);
      int64_t at = 0;
      for (auto &t : buckets[i]) {
        auto n = t.numel();
        t.copy_(flat[i].narrow(0, at, n).view(t.sizes()));
        at += n;
      }
    }
  });
}

// out[r] = rank r's `t`, for r in 0..world (out holds world tensors shaped
// like t).
char *amat_dist_allgather(Group *g, at::Tensor *t, at::Tensor **out) {
  return guard([&] {
    std::vector<std::vector<at::Tensor>> outs{tensors(out, g->world)};
    std::vector<at::Tensor> in{*t};
    c10d::AllgatherOptions o;
    o.timeout = g->timeout;
    wait(g, backend(g, *t).allgather(outs, in, o));
  });
}

// Over the Gloo group (a barrier on NCCL would need a CUDA device).
char *amat_dist_barrier(Group *g) {
  return guard([&] {
    c10d::BarrierOptions o;
    o.timeout = g->timeout;
    wait(g, g->gloo->barrier(o));
  });
}

} // extern "C"
