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
    (1 - beta) * clean + beta * adv, AMAT margin rule and boundary search of
    host/src/train/{amat,margins}.rs), and Adam (torch.optim.Adam).

Modes:
  worker --state DIR   reads one JSON command per line on stdin, answers one
                       JSON line per command on stdout ({"cmd": "epoch",
                       "method": "sat"}, {"cmd": "scale", ...}, {"cmd": "quit"}).
  check --state DIR    one SAT step on the state's single batch; prints the
                       per-sample clean loss, PGD noise norms, adversarial loss
                       and the clean loss after the optimizer step as JSON.
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
    """conv3x3 -> norm -> ReLU, twice (amat: model::ConvBlock)."""

    def __init__(self, norm, c_in, c_out):
        super().__init__()
        bias = norm == "none"  # a bias before a normalisation is cancelled by it
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm1 = make_norm(norm, c_out)
        self.norm2 = make_norm(norm, c_out)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


def make_norm(kind, channels):
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":  # group norm, one group per channel (amat's choice)
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


class UNet(nn.Module):
    def __init__(self, depth, width, norm, c_in, c_out):
        super().__init__()
        self.depth = depth
        w = lambda level: width << level  # noqa: E731
        c = c_in
        for level in range(depth):
            self.add_module(f"down{level}", ConvBlock(norm, c, w(level)))
            c = w(level)
        self.bottom = ConvBlock(norm, c, w(depth))
        for level in reversed(range(depth)):
            self.add_module(f"upconv{level}", nn.ConvTranspose2d(w(level + 1), w(level), 2, stride=2))
            self.add_module(f"up{level}", ConvBlock(norm, 2 * w(level), w(level)))
        self.head = nn.Conv2d(w(0), c_out, 1)

    def forward(self, x):
        skips = []
        h = x
        for level in range(self.depth):
            s = getattr(self, f"down{level}")(h)
            h = F.max_pool2d(s, 2)
            skips.append(s)
        h = self.bottom(h)
        for level in reversed(range(self.depth)):
            skip = skips[level]
            u = getattr(self, f"upconv{level}")(h)
            dh, dw = skip.shape[2] - u.shape[2], skip.shape[3] - u.shape[3]
            if dh or dw:
                u = F.pad(u, (0, dw, 0, dh))
            h = getattr(self, f"up{level}")(torch.cat([skip, u], 1))
        return self.head(h)


# ------------------------------------------------------------------ the loss
def dice_ce_loss(pred, target):
    """Per-sample CE (mean over pixels) + 1 - soft Dice (mean over classes)."""
    classes = pred.shape[1]
    y = F.one_hot(target.long(), classes).permute(0, 3, 1, 2).float()
    log_p = pred.log_softmax(1)
    ce = -(log_p * y).sum(1).mean((1, 2))
    p = log_p.exp()
    inter = (p * y).sum((2, 3))
    total = p.sum((2, 3)) + y.sum((2, 3))
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


def pgd(model, x, y, eps, attack, lo, hi):
    """Noise delta with ||delta_i|| <= eps_i and x + delta in [lo, hi]."""
    x = x.detach()
    eps = eps.detach().float().to(x.device)
    if eps.max().item() <= 0.0:
        return torch.zeros_like(x)
    norm, steps = attack["norm"], attack["steps"]
    alpha = per_sample(eps * (attack["step_factor"] / steps), x)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if attack["random_start"]:
            delta = clip(x, random_in_ball(x, eps, norm), lo, hi)
        else:
            delta = torch.zeros_like(x)
    for _ in range(steps):
        d = delta.detach().requires_grad_(True)
        loss = dice_ce_loss(model(x + d), y).sum()
        (g,) = torch.autograd.grad(loss, [d])  # input gradient only
        with torch.no_grad():
            step = g / per_sample(sample_norms(g, "l2") + 1e-12, g) if norm == "l2" else g.sign()
            delta = project(delta + step * alpha, eps, norm)
            delta = clip(x, delta, lo, hi)
    model.train(was_training)
    return delta.detach()


# ------------------------------------------------------------------ training
class Trainer:
    """One run's model, optimizer and AMAT margins (amat: train::Trainer)."""

    def __init__(self, cfg, weights, device):
        self.cfg, self.device = cfg, device
        m = cfg["model"]
        self.model = UNet(m["depth"], m["width"], m["norm"], cfg["in_channels"], cfg["out_channels"]).to(device)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise SystemExit(f"weights do not fit the U-Net: missing {missing}, unexpected {unexpected}")
        t = cfg["train"]
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=t["lr"], betas=tuple(t["adam_betas"]), eps=t["adam_eps"]
        )
        self.margins = list(cfg["amat"]["margins"])
        self.search_forwards = 0

    def epoch(self, method, images, targets, order):
        """One epoch over `order` (sample indices); returns (clean sum, adv sum)."""
        self.model.train()
        bs = self.cfg["train"]["batch_size"]
        clean_sum = adv_sum = 0.0
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
        return clean_sum, adv_sum

    def minimize(self, objective):
        self.opt.zero_grad(set_to_none=True)
        objective.backward()
        self.opt.step()

    def clean_step(self, x, y):
        loss = dice_ce_loss(self.model(x), y)
        self.minimize(loss.mean())
        return loss.detach().double().sum().item(), 0.0

    def adversarial_step(self, method, x, y, idx):
        cfg = self.cfg
        if method == "amat":
            levels = [self.margins[i] for i in idx]
        else:
            levels = [cfg["sat"]["eps"]] * len(idx)
        eps = torch.tensor(levels, dtype=torch.float32, device=self.device)
        lo, hi = cfg["range"]
        delta = pgd(self.model, x, y, eps, cfg["train"]["attack"], lo, hi)
        pred_clean = self.model(x)
        clean = dice_ce_loss(pred_clean, y)
        beta = cfg["train"]["beta"]
        if all(e == 0.0 for e in levels):
            adv, objective = clean, clean.mean()
        else:
            adv = dice_ce_loss(self.model(x + delta), y)
            objective = clean.mean() * (1.0 - beta) + adv.mean() * beta
        if method == "amat":
            self.update_margins(x, y, delta, idx, clean, adv)
        self.minimize(objective)
        return clean.detach().double().sum().item(), adv.detach().double().sum().item()

    def update_margins(self, x, y, delta, idx, clean, adv):
        a = self.cfg["amat"]
        tau = a["tau"]
        clean_ok = (clean.detach() <= tau).tolist()
        adv_ok = (adv.detach() <= tau).tolist()
        crossed = [r for r in range(len(idx)) if clean_ok[r] and not adv_ok[r]]
        boundary = [None] * len(idx)
        if crossed:
            rows = torch.tensor(crossed, device=self.device)
            d = delta.index_select(0, rows)
            norms = sample_norms(d, self.cfg["train"]["attack"]["norm"]).double().tolist()
            found = self.boundary(x.index_select(0, rows), y.index_select(0, rows), d, norms)
            for r, b in zip(crossed, found):
                boundary[r] = b
        delta_eps, eps_max = a["delta_eps"], a["eps_max"]
        for r, i in enumerate(idx):
            eps = self.margins[i]
            if not clean_ok[r]:
                new = delta_eps
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
                ok = (dice_ce_loss(self.model(xa + da * per_sample(s, da)), ya) <= a["tau"]).tolist()
            for k, i in enumerate(active):
                if ok[k]:
                    lo[i] = mid[k]
                else:
                    hi[i] = mid[k]
        self.model.train()
        return [h * nm for h, nm in zip(hi, norms)]


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


def run_epoch(cfg, weights, device, method, images, targets, order, seed):
    """A fresh trainer from the state's weights and margins; one timed epoch."""
    trainer = Trainer(cfg, weights, device)
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


def worker(args):
    device = torch.device(args.device)
    cfg, weights, images, targets = load_state(args.state, device)
    torch.set_num_threads(cfg["threads"])
    reply = lambda obj: print(json.dumps(obj), flush=True)  # noqa: E731
    reply({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            reply({"peak_rss_mib": peak_rss_mib()})
            return
        if cmd["cmd"] == "epoch":
            t, seconds, clean, adv = run_epoch(
                cfg, weights, device, cmd["method"], images, targets, cfg["order"], cfg["torch_seed"]
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
            imgs = torch.rand([batch, cfg["in_channels"], size, size], generator=g)
            tgts = torch.randint(0, 2, [batch, size, size], generator=g).float()
            local = dict(cfg)
            local["train"] = dict(cfg["train"], batch_size=batch)
            local["amat"] = dict(cfg["amat"], margins=[cfg["sat"]["eps"]] * batch)
            times, cpu = [], []
            for _ in range(cmd["reps"]):
                t, seconds, _, _ = run_epoch(
                    local, weights, device, cmd["method"], imgs, tgts, list(range(batch)), cfg["torch_seed"]
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["worker", "check"])
    p.add_argument("--state", required=True, help="directory with config.json, weights.npz, data.npz")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    worker(args) if args.mode == "worker" else check(args)


if __name__ == "__main__":
    main()
