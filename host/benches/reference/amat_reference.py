#!/usr/bin/env python3
"""The same STD / SAT / AMAT training steps as amat, written the way a PyTorch
user would write them: the yardstick of `cargo bench --bench vs_pytorch`
(see BENCHMARKS.md) and of `tests/vs_pytorch_parity.rs`.

Everything follows amat's Rust code operation for operation, so that on the
same weights, data, order and torch seed both compute the same numbers:
  - the U-Net of host/src/model/mod.rs (conv3x3 -> norm -> ReLU twice per
    level, max-pool down, stride-2 transposed conv up, skip by concatenation,
    1x1 head; parameter names equal to amat's VarStore names);
  - the per-sample loss of host/src/builtin.rs (CE + 1 - soft Dice);
  - PGD of host/src/attack/mod.rs (per-sample eps, step c * eps / T, L2 or
    Linf, projection, clipping, evaluation mode, input gradient only);
  - the epoch loop of host/src/train/mod.rs (SAT objective
    (1 - beta) * clean + beta * adv, with AMAT's adversarial mean over the
    samples its clean gate lets through), and Adam (torch.optim.Adam);
  - AMAT's two margin rules, written from AMAT.md rather than from the Rust:
    "reference" (a crossing is any PGD iterate judged wrong, the start
    included; per-epoch update; F_i averaging; no reset) and "boundary"
    (per-batch update, bisection along the noise, optional reset_wrong).

Variants (worker mode, --variant):
  plain      as a PyTorch user first writes it: clean and attacked forwards
             apart, torch.optim.Adam's default (per-parameter loop on the CPU),
             a loss read back with .item() after every step;
  fair       what amat does too: one forward over the clean and attacked
             halves together (without batch norm), Adam(fused=True) (foreach
             where fused is unavailable), losses summed on the device and read
             once per epoch; the driver also gives it amat's allocator settings;
  compiled   fair, with the model and loss under torch.compile (Inductor);
  compiled-ro  the same with mode="reduce-overhead" (CUDA graphs; for GPUs).

Modes:
  worker --state DIR   reads one JSON command per line on stdin, answers one
                       JSON line per command on stdout ({"cmd": "epoch",
                       "method": "sat"}, {"cmd": "scale", ...}, {"cmd": "quit"}).
  check --state DIR    one SAT step on the state's single batch; prints the
                       per-sample clean loss, PGD noise norms, adversarial loss
                       and the clean loss after the optimizer step as JSON.
  amat-epochs --state DIR
                       AMAT epochs over config.json's "orders" (one list of
                       sample indices per epoch); prints the margins and mean
                       losses after each epoch as JSON.
The state directory (written by amat) holds config.json, weights.npz, data.npz.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------- the model
class ConvBlock(nn.Module):
    """conv3x3 -> norm -> ReLU, twice (amat: model::ConvBlock); in 3D
    (model/unet3d.rs) conv with a per-axis kernel -> norm -> leaky ReLU."""

    def __init__(self, norm, c_in, c_out, kernel=None):
        super().__init__()
        bias = norm == "none"  # a bias before a normalisation is cancelled by it
        if kernel is None:
            self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
            self.act = F.relu
        else:
            pad = [k // 2 for k in kernel]
            self.conv1 = nn.Conv3d(c_in, c_out, kernel, padding=pad, bias=bias)
            self.conv2 = nn.Conv3d(c_out, c_out, kernel, padding=pad, bias=bias)
            self.act = F.leaky_relu
        self.norm1 = make_norm(norm, c_out, kernel is not None)
        self.norm2 = make_norm(norm, c_out, kernel is not None)

    def forward(self, x):
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


def make_norm(kind, channels, volumetric=False):
    if kind == "batch":
        return nn.BatchNorm3d(channels) if volumetric else nn.BatchNorm2d(channels)
    if kind == "instance":  # group norm, one group per channel (amat's choice)
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


class UNet(nn.Module):
    """amat's 2D U-Net, or with `dims` 3 its 3D U-Net (model/unet3d.rs:
    per-level kernels and pooling factors, leaky ReLU)."""

    def __init__(self, depth, width, norm, c_in, c_out, dims=2, pool=None, kernel=None):
        super().__init__()
        self.depth, self.dims = depth, dims
        w = lambda level: width << level  # noqa: E731
        if dims == 3:
            self.pools = [tuple(p) for p in (pool or [[2, 2, 2]] * depth)]
            kernels = [tuple(k) for k in (kernel or [[3, 3, 3]] * (depth + 1))]
        else:
            self.pools, kernels = [2] * depth, [None] * (depth + 1)
        c = c_in
        for level in range(depth):
            self.add_module(f"down{level}", ConvBlock(norm, c, w(level), kernels[level]))
            c = w(level)
        self.bottom = ConvBlock(norm, c, w(depth), kernels[depth])
        for level in reversed(range(depth)):
            if dims == 3:
                up = nn.ConvTranspose3d(w(level + 1), w(level), self.pools[level], stride=self.pools[level])
            else:
                up = nn.ConvTranspose2d(w(level + 1), w(level), 2, stride=2)
            self.add_module(f"upconv{level}", up)
            self.add_module(f"up{level}", ConvBlock(norm, 2 * w(level), w(level), kernels[level]))
        self.head = (nn.Conv3d if dims == 3 else nn.Conv2d)(w(0), c_out, 1)

    def forward(self, x):
        skips = []
        h = x
        pool = F.max_pool3d if self.dims == 3 else F.max_pool2d
        for level in range(self.depth):
            s = getattr(self, f"down{level}")(h)
            h = pool(s, self.pools[level])
            skips.append(s)
        h = self.bottom(h)
        for level in reversed(range(self.depth)):
            skip = skips[level]
            u = getattr(self, f"upconv{level}")(h)
            missing = [a - b for a, b in zip(skip.shape[2:], u.shape[2:])]
            if any(missing):
                pad = []
                for m in reversed(missing):
                    pad += [0, m]
                u = F.pad(u, pad)
            h = getattr(self, f"up{level}")(torch.cat([skip, u], 1))
        return self.head(h)


# ------------------------------------------------------------------ the loss
def dice_ce_loss(pred, target):
    """Per-sample CE (mean over pixels) + 1 - soft Dice (mean over classes)."""
    classes = pred.shape[1]
    y = F.one_hot(target.long(), classes).movedim(-1, 1).float()
    spatial = tuple(range(2, pred.dim()))
    log_p = pred.log_softmax(1)
    ce = -(log_p * y).sum(1).mean(tuple(d - 1 for d in spatial))
    p = log_p.exp()
    inter = (p * y).sum(spatial)
    total = p.sum(spatial) + y.sum(spatial)
    dice = (inter * 2.0 + 1.0) / (total + 1.0)
    return ce + (1.0 - dice.mean(1))


# ------------------------------------------------------------------- attacks
def per_sample(v, like):
    return v.reshape([-1] + [1] * (like.dim() - 1))


def sample_norms(t, norm):
    flat = t.flatten(1)
    if norm == "l2":
        return flat.square().sum(1).sqrt()
    return flat.abs().amax(1)


def project(delta, eps, norm):
    if norm == "l2":
        scale = (eps / (sample_norms(delta, norm) + 1e-12)).clamp_max(1.0)
        return delta * per_sample(scale, delta)
    e = per_sample(eps, delta)
    return delta.minimum(e).maximum(-e)


def random_in_ball(like, eps, norm):
    if norm == "linf":
        return (torch.rand_like(like) * 2.0 - 1.0) * per_sample(eps, like)
    dims = like.numel() / like.shape[0]
    g = torch.randn_like(like)
    direction = g / per_sample(sample_norms(g, "l2") + 1e-12, like)
    r = torch.rand_like(eps).pow(1.0 / dims) * eps
    return direction * per_sample(r, like)


def clip(x, delta, lo, hi):
    return (x + delta).clamp(lo, hi) - x


def pgd(model, x, y, eps, attack, lo, hi, watch=None, loss_of=None, top=None):
    """Noise delta with ||delta_i|| <= eps_i and x + delta in [lo, hi].

    `watch(loss)` sees the per-sample loss of every iterate, the start and the
    last included (evaluation mode). `loss_of(x, y)` is the per-sample loss of
    the model at x (a compiled one, say); `top` the largest level, if the
    caller knows it without asking the device."""
    if loss_of is None:
        loss_of = lambda inputs, targets: dice_ce_loss(model(inputs), targets)  # noqa: E731
    x = x.detach()
    eps = eps.detach().float().to(x.device)
    was_training = model.training
    model.eval()
    if (eps.max().item() if top is None else top) <= 0.0:
        delta = torch.zeros_like(x)
        if watch:
            with torch.no_grad():
                watch(loss_of(x + delta, y))
        model.train(was_training)
        return delta
    norm, steps = attack["norm"], attack["steps"]
    alpha = per_sample(eps * (attack["step_factor"] / steps), x)
    with torch.no_grad():
        if attack["random_start"]:
            delta = clip(x, random_in_ball(x, eps, norm), lo, hi)
        else:
            delta = torch.zeros_like(x)
    for _ in range(steps):
        d = delta.detach().requires_grad_(True)
        per = loss_of(x + d, y)
        if watch:
            watch(per.detach())
        (g,) = torch.autograd.grad(per.sum(), [d])  # input gradient only
        with torch.no_grad():
            step = g / per_sample(sample_norms(g, "l2") + 1e-12, g) if norm == "l2" else g.sign()
            delta = project(delta + step * alpha, eps, norm)
            delta = clip(x, delta, lo, hi)
    if watch:
        with torch.no_grad():
            watch(loss_of(x + delta, y))
    model.train(was_training)
    return delta.detach()


# ------------------------------------------------------------------ training
class Trainer:
    """One run's model, optimizer and AMAT margins (amat: train::Trainer)."""

    def __init__(self, cfg, weights, device, variant="plain", net=None):
        self.cfg, self.device, self.variant = cfg, device, variant
        # A worker keeps one network (`Net`) for all its epochs, so that a
        # compiled one is compiled once; each epoch loads the state's weights.
        self.net = net or Net(cfg, device, variant)
        self.model, self.loss_of = self.net.model, self.net.loss_of
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise SystemExit(f"weights do not fit the U-Net: missing {missing}, unexpected {unexpected}")
        t = cfg["train"]
        adam = dict(lr=t["lr"], betas=tuple(t["adam_betas"]), eps=t["adam_eps"])
        if variant == "plain":
            self.opt = torch.optim.Adam(self.model.parameters(), **adam)
        else:
            self.opt = fused_adam(self.model.parameters(), adam)
        a = cfg["amat"]
        self.margins = list(a["margins"])
        # JSON has no infinity: a missing eps_max is none.
        self.eps_max = float("inf") if a.get("eps_max") is None else a["eps_max"]
        self.search_forwards = 0
        self.visits = None

    def reference_rule(self, method):
        return method == "amat" and self.cfg["amat"].get("rule", "boundary") == "reference"

    def epoch(self, method, images, targets, order):
        """One epoch over `order` (sample indices); returns (clean sum, adv sum)."""
        self.model.train()
        bs = self.cfg["train"]["batch_size"]
        # plain: Python floats after every step; the others: on the device, read once.
        zero = lambda: 0.0 if self.variant == "plain" else torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        clean_sum, adv_sum = zero(), zero()
        if self.reference_rule(method):
            # F_i starts each epoch at E_i (AMAT.md).
            self.visits = [dict(seen=False, gated=False, held=False, f=e) for e in self.margins]
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            rows = torch.tensor(idx)
            x, y = images[rows].to(self.device), targets[rows].to(self.device)
            if method == "std":
                c, a = self.clean_step(x, y)
            else:
                c, a = self.adversarial_step(method, x, y, idx)
            clean_sum += c
            adv_sum += a
        if self.reference_rule(method):
            self.end_epoch()
        return float(clean_sum), float(adv_sum)

    def end_epoch(self):
        """Reference rule: gated and held in some visit grows; gated and
        crossed in every visit moves to F_i; not gated stays (or resets)."""
        a = self.cfg["amat"]
        for i, v in enumerate(self.visits):
            if not v["seen"]:
                continue
            e = self.margins[i]
            if not v["gated"]:
                new = a["delta_eps"] if a.get("reset_wrong") else e
            elif v["held"]:
                new = min(e + a["delta_eps"], self.eps_max)
            else:
                new = v["f"]
            self.margins[i] = float(np.float32(min(max(new, 0.0), self.eps_max)))

    def minimize(self, objective):
        self.opt.zero_grad(set_to_none=True)
        objective.backward()
        self.opt.step()

    def total(self, loss):
        t = loss.detach().double().sum()
        return t.item() if self.variant == "plain" else t

    def clean_step(self, x, y):
        loss = self.loss_of(x, y)
        self.minimize(loss.mean())
        return self.total(loss), 0.0

    def adversarial_step(self, method, x, y, idx):
        cfg = self.cfg
        a = cfg["amat"]
        if method == "amat":
            levels = [self.margins[i] for i in idx]
        else:
            levels = [cfg["sat"]["eps"]] * len(idx)
        eps = torch.tensor(levels, dtype=torch.float32, device=self.device)
        lo, hi = cfg["range"]
        crossed = [False] * len(idx)

        def judge_iterate(loss):
            for r, ok in enumerate((loss <= a["tau"]).tolist()):
                crossed[r] = crossed[r] or not ok

        watch = judge_iterate if self.reference_rule(method) else None
        fair = self.variant != "plain"
        delta = pgd(
            self.model, x, y, eps, cfg["train"]["attack"], lo, hi, watch, self.loss_of, max(levels) if fair else None
        )
        beta = cfg["train"]["beta"]
        if all(e == 0.0 for e in levels):
            clean = adv = self.loss_of(x, y)
        elif fair and cfg["model"]["norm"] != "batch":
            # As amat: each sample is normalised alone, so one forward over
            # both halves gives what two would.
            both = self.loss_of(torch.cat([x, x + delta]), torch.cat([y, y]))
            clean, adv = both[: len(idx)], both[len(idx) :]
        else:
            clean = self.loss_of(x, y)
            adv = self.loss_of(x + delta, y)
        tau_clean = a.get("tau_clean")
        if method == "amat" and tau_clean is not None:
            gate = (clean.detach() <= tau_clean).tolist()
        else:
            gate = [True] * len(idx)
        n_gated = sum(gate)
        g = torch.tensor(gate, dtype=torch.float32, device=self.device)
        adv_term = (adv * g).sum() / n_gated if n_gated else adv.sum() * 0.0
        objective = clean.mean() * (1.0 - beta) + adv_term * beta
        if self.reference_rule(method):
            norms = sample_norms(delta, cfg["train"]["attack"]["norm"]).tolist()
            for r, i in enumerate(idx):
                v = self.visits[i]
                v["seen"] = True
                if not gate[r]:
                    continue
                v["gated"] = True
                if crossed[r]:
                    v["f"] = (v["f"] + norms[r]) / 2.0
                else:
                    v["held"] = True
        elif method == "amat":
            self.update_margins(x, y, delta, idx, gate, adv)
        self.minimize(objective)
        return self.total(clean), self.total(adv)

    def update_margins(self, x, y, delta, idx, gate, adv):
        """Boundary rule, after each batch."""
        a = self.cfg["amat"]
        adv_ok = (adv.detach() <= a["tau"]).tolist()
        crossed = [r for r in range(len(idx)) if gate[r] and not adv_ok[r]]
        boundary = [None] * len(idx)
        if crossed:
            rows = torch.tensor(crossed, device=self.device)
            d = delta.index_select(0, rows)
            norms = sample_norms(d, self.cfg["train"]["attack"]["norm"]).double().tolist()
            found = self.boundary(x.index_select(0, rows), y.index_select(0, rows), d, norms)
            for r, b in zip(crossed, found):
                boundary[r] = b
        delta_eps, eps_max = a["delta_eps"], self.eps_max
        for r, i in enumerate(idx):
            eps = self.margins[i]
            if not gate[r]:
                new = delta_eps if a.get("reset_wrong") else eps
            elif adv_ok[r]:
                new = min(eps + delta_eps, eps_max)
            else:
                new = min(max(boundary[r], delta_eps), eps_max)
            self.margins[i] = float(np.float32(new))

    def boundary(self, x, y, delta, norms):
        """Bisection for the smallest s with the loss at x + s * delta above tau."""
        a = self.cfg["amat"]
        tol, floor = a["search_tolerance"] * a["delta_eps"], a["delta_eps"]
        n = len(norms)
        lo, hi = [0.0] * n, [1.0] * n
        self.model.eval()
        for _ in range(a["search_steps"]):
            active = [i for i in range(n) if (hi[i] - lo[i]) * norms[i] > tol and hi[i] * norms[i] > floor]
            if not active:
                break
            self.search_forwards += len(active)
            rows = torch.tensor(active, device=self.device)
            mid = [float(np.float32(0.5 * (lo[i] + hi[i]))) for i in active]
            s = torch.tensor(mid, dtype=torch.float32, device=self.device)
            xa, ya, da = x.index_select(0, rows), y.index_select(0, rows), delta.index_select(0, rows)
            with torch.no_grad():
                ok = (self.loss_of(xa + da * per_sample(s, da), ya) <= a["tau"]).tolist()
            for k, i in enumerate(active):
                if ok[k]:
                    lo[i] = mid[k]
                else:
                    hi[i] = mid[k]
        self.model.train()
        return [h * nm for h, nm in zip(hi, norms)]


class Net:
    """The U-Net of the state's config and its per-sample loss `loss_of(x,
    y)`, compiled with torch.compile in the compiled variants."""

    def __init__(self, cfg, device, variant):
        m = cfg["model"]
        self.model = UNet(
            m["depth"], m["width"], m["norm"], cfg["in_channels"], cfg["out_channels"],
            m.get("dims", 2), m.get("pool"), m.get("kernel"),
        ).to(device)
        model = self.model

        def loss_of(x, y):
            return dice_ce_loss(model(x), y)

        if variant.startswith("compiled"):
            # Training and evaluation mode, with and without gradients, the
            # batch, the joint batch and the search's subsets: more graphs
            # than Dynamo's default cache keeps before falling back to eager.
            dynamo = torch._dynamo.config
            for key in ("cache_size_limit", "recompile_limit"):
                if hasattr(dynamo, key):
                    setattr(dynamo, key, 64)
            mode = "reduce-overhead" if variant == "compiled-ro" else None
            self.loss_of = torch.compile(loss_of, mode=mode)
        else:
            self.loss_of = loss_of


def fused_adam(params, adam):
    """torch.optim.Adam with its fused kernel, else its foreach one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **adam)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **adam)


def machine(device):
    """What the timings ran on: CPU or GPU model, cores, torch and oneDNN."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    onednn = next(
        (ln.split(" v", 1)[1].split()[0] for ln in torch.__config__.show().splitlines() if "DNN v" in ln), "unknown"
    )
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "onednn": onednn,
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------- state
def load_state(path, device):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    weights = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(path, "weights.npz")).items()}
    data = np.load(os.path.join(path, "data.npz"))
    images = torch.from_numpy(data["images"])
    targets = torch.from_numpy(data["targets"])
    return cfg, weights, images, targets


def peak_rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_epoch(cfg, weights, device, method, images, targets, order, seed, variant="plain", net=None):
    """A fresh trainer from the state's weights and margins; one timed epoch."""
    trainer = Trainer(cfg, weights, device, variant, net)
    torch.manual_seed(seed)
    sync(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, start = time.process_time(), time.perf_counter()
    clean, adv = trainer.epoch(method, images, targets, order)
    sync(device)
    seconds = time.perf_counter() - start
    trainer.cpu_seconds = time.process_time() - cpu
    trainer.minor_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return trainer, seconds, clean, adv


def with_rule(cfg, method):
    """The bench's method names: "amat-b" is AMAT with the boundary rule."""
    if method == "amat-b":
        return dict(cfg, amat=dict(cfg["amat"], rule="boundary")), "amat"
    return dict(cfg), method


def worker(args):
    device = torch.device(args.device)
    cfg, weights, images, targets = load_state(args.state, device)
    torch.set_num_threads(cfg["threads"])
    variant = args.variant
    net = Net(cfg, device, variant)
    reply = lambda obj: print(json.dumps(obj), flush=True)  # noqa: E731
    reply({"ready": True, "threads": torch.get_num_threads(), "variant": variant, **machine(device)})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            reply({"peak_rss_mib": peak_rss_mib()})
            return
        if cmd["cmd"] == "rss":
            reply({"peak_rss_mib": peak_rss_mib()})
            continue
        if cmd["cmd"] == "epoch":
            c, method = with_rule(cfg, cmd["method"])
            t, seconds, clean, adv = run_epoch(
                c, weights, device, method, images, targets, cfg["order"], cfg["torch_seed"], variant, net
            )
            reply(
                {
                    "seconds": seconds,
                    "cpu_seconds": t.cpu_seconds,
                    "steps": -(-len(cfg["order"]) // cfg["train"]["batch_size"]),
                    "clean_loss": clean / len(cfg["order"]),
                    "adv_loss": adv / len(cfg["order"]),
                    "search_forwards": t.search_forwards,
                    "minor_faults": t.minor_faults,
                    "peak_rss_mib": peak_rss_mib(),
                }
            )
        elif cmd["cmd"] == "scale":
            # One step of `method` on `batch` random images of side `size`.
            g = torch.Generator().manual_seed(cmd["seed"])
            size, batch = cmd["size"], cmd["batch"]
            side = [size] * cfg["model"].get("dims", 2)
            imgs = torch.rand([batch, cfg["in_channels"], *side], generator=g)
            tgts = torch.randint(0, 2, [batch, *side], generator=g).float()
            local, method = with_rule(cfg, cmd["method"])
            local["train"] = dict(cfg["train"], batch_size=batch)
            local["amat"] = dict(local["amat"], margins=[cfg["sat"]["eps"]] * batch)
            times, cpu = [], []
            for _ in range(cmd["reps"]):
                t, seconds, _, _ = run_epoch(
                    local, weights, device, method, imgs, tgts, list(range(batch)), cfg["torch_seed"], variant, net
                )
                times.append(seconds)
                cpu.append(t.cpu_seconds)
            reply({"seconds": times, "cpu_seconds": cpu, "peak_rss_mib": peak_rss_mib()})
        else:
            reply({"error": f"unknown command {cmd['cmd']!r}"})


def check(args):
    """One SAT step on the whole state (one batch), no random start."""
    device = torch.device(args.device)
    cfg, weights, images, targets = load_state(args.state, device)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["torch_seed"])
    t = Trainer(cfg, weights, device)
    x, y = images.to(device), targets.to(device)
    eps = torch.full([x.shape[0]], cfg["sat"]["eps"], dtype=torch.float32, device=device)
    lo, hi = cfg["range"]
    delta = pgd(t.model, x, y, eps, cfg["train"]["attack"], lo, hi)
    clean = dice_ce_loss(t.model(x), y)
    adv = dice_ce_loss(t.model(x + delta), y)
    # Batch-norm statistics moved in the forwards above: step from the state's weights.
    t = Trainer(cfg, weights, device)
    t.adversarial_step("sat", x, y, list(range(x.shape[0])))
    with torch.no_grad():
        after = dice_ce_loss(t.model(x), y)
    out = {
        "clean_loss": clean.tolist(),
        "delta_norm": sample_norms(delta, cfg["train"]["attack"]["norm"]).tolist(),
        "adv_loss": adv.tolist(),
        "loss_after_step": after.tolist(),
    }
    print(json.dumps(out))


def amat_epochs(args):
    """AMAT epochs over the given orders, no random start (config.json)."""
    device = torch.device(args.device)
    cfg, weights, images, targets = load_state(args.state, device)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["torch_seed"])
    t = Trainer(cfg, weights, device)
    out = []
    for order in cfg["orders"]:
        clean, adv = t.epoch("amat", images, targets, order)
        out.append({"margins": list(t.margins), "clean_loss": clean / len(order), "adv_loss": adv / len(order)})
    print(json.dumps({"epochs": out}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["worker", "check", "amat-epochs"])
    p.add_argument("--state", required=True, help="directory with config.json, weights.npz, data.npz")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="plain", choices=["plain", "fair", "compiled", "compiled-ro"])
    args = p.parse_args()
    {"worker": worker, "check": check, "amat-epochs": amat_epochs}[args.mode](args)


if __name__ == "__main__":
    main()
