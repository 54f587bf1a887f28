"""How long would DP fine-tuning of the EfficientNet-Lite0 backbone take? (issue 9's next lever)

Times privmed's own DP-SGD step (``privacy.engine.DPSGD``: per-sample gradients, per-unit clipping,
secret Gaussian noise, optimizer step) on ``effnet_lite0_tail`` (BN folded) at 224 px, with the last
blocks from ``--starts`` on trainable (0: all 16 MBConv blocks and the head conv; 15: the last block,
as the tail model ships), on the CPU here or on a GPU. Inputs are random tensors of the frozen part's
output shape (the trainer caches that part's outputs); timing does not depend on their values.
Before timing on a GPU, one batch's clipped sum is computed on both devices and compared.

    python benchmarks/gpu_dp_finetune.py --device cpu --batches 32 --steps 2     # here
    python benchmarks/gpu_dp_finetune.py --device cuda --batches 256 1024       # on the lent GPU
    python benchmarks/gpu_dp_finetune.py --device cuda --no-tf32 --starts 0 --batches 256   # strict float32

Projection: the chest default recipe takes 200 DP-SGD steps of about 1,043 images (q 0.2 of 2,567
patients, 5,216 images); ``recipe_minutes`` = 200 x the time of one step at that batch (the CPU
figure scales the measured batch linearly).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from privmed.models.registry import effnet_lite0_tail  # noqa: E402
from privmed.privacy.engine import DPSGD, DPPlan  # noqa: E402

RECIPE_STEPS, RECIPE_BATCH = 200, 1043


def loss_fn(out, y):
    return F.cross_entropy(out, y, reduction="none")


def engine(start: int, batch: int, device: str, mode: str, state=None):
    model = effnet_lite0_tail(2, start=start)
    tail = model.trainable.to(device)
    if state is not None:
        tail.load_state_dict(state)
    plan = DPPlan.with_noise(noise_multiplier=5.69, sample_rate=0.2, max_grad_norm=1.0, n_units=batch,
                             steps=10_000, delta=2e-5)
    opt = torch.optim.SGD([p for p in tail.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    return model, DPSGD(tail, opt, torch.arange(batch), plan, grad_sample_mode=mode)


def batch_for(frozen: torch.nn.Module, batch: int, device: str, seed: int = 0):
    """Random inputs of the frozen part's output shape (ReLU6 range) for a 224 px film."""
    with torch.no_grad():
        shape = frozen(torch.rand(1, 1, 224, 224)).shape[1:]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g).clamp(0, 6)
    y = torch.randint(0, 2, (batch,), generator=g)
    idx = torch.arange(batch)
    return x.to(device), y.to(device), idx, idx


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_devices(start: int, device: str, mode: str, batch: int = 16) -> float:
    """Relative L2 difference of one clipped sum, CPU against ``device``, same weights and batch."""
    model, cpu = engine(start, batch, "cpu", mode)
    _, dev = engine(start, batch, device, mode, state=cpu.plain_module.state_dict())
    x, y, local, ids = batch_for(model.frozen, batch, "cpu")
    a = cpu.clipped_sum(x, y, local, ids, loss_fn)
    b = dev.clipped_sum(x.to(device), y.to(device), local, ids, loss_fn)
    num = sum(((u - v.cpu()) ** 2).sum() for u, v in zip(a, b))
    return float(torch.sqrt(num / sum((u ** 2).sum() for u in a)))


def time_steps(start: int, batch: int, device: str, mode: str, steps: int, warmup: int) -> dict:
    model, dp = engine(start, batch, device, mode)
    x, y, local, ids = batch_for(model.frozen, batch, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        dp.step(x, y, local, ids, loss_fn)
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        dp.step(x, y, local, ids, loss_fn)
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    step = times[len(times) // 2]
    n_params = sum(p.numel() for p in dp.params)
    row = {"start": start, "trainable_params": n_params, "batch": batch, "mode": mode, "device": device,
           "step_s_median": round(step, 4), "step_s_min": round(times[0], 4), "steps_timed": steps,
           "images_per_s": round(batch / step, 1),
           "recipe_minutes": round(RECIPE_STEPS * step * RECIPE_BATCH / batch / 60, 1)}
    if device.startswith("cuda"):
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--starts", type=int, nargs="+", default=[15, 11, 0])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--modes", nargs="+", default=["hooks", "ew"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=420, help="skip the remaining configs after this")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--no-tf32", action="store_true", help="strict float32 convolutions and matmuls on the GPU")
    a = ap.parse_args()
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    info = {"torch": torch.__version__, "device": a.device, "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg()[0],
            "threads": torch.get_num_threads()}
    if a.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["tf32_conv"] = torch.backends.cudnn.allow_tf32
        info["check_rel_l2"] = {f"start{s}-{m}": check_devices(s, a.device, m) for s in (15, 0) for m in a.modes}
    print(json.dumps(info), flush=True)
    rows = []
    for start in a.starts:
        for mode in a.modes:
            for batch in a.batches:
                if time.time() - t0 > a.budget_s:
                    rows.append({"start": start, "batch": batch, "mode": mode, "skipped": "time budget"})
                    continue
                try:
                    rows.append(time_steps(start, batch, a.device, mode, a.steps, a.warmup))
                except torch.OutOfMemoryError as err:
                    rows.append({"start": start, "batch": batch, "mode": mode, "error": f"out of memory: {err}"[:200]})
                    torch.cuda.empty_cache()
                print(json.dumps(rows[-1]), flush=True)
    info["load_avg_end"] = os.getloadavg()[0]
    info["seconds"] = round(time.time() - t0, 1)
    if a.out:
        a.out.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    print("| start | params | batch | mode | s/step | images/s | chest recipe (200 steps x 1,043) min | peak GiB |")
    for r in rows:
        if "step_s_median" in r:
            print(f"| {r['start']} | {r['trainable_params']:,} | {r['batch']} | {r['mode']} | {r['step_s_median']} | "
                  f"{r['images_per_s']} | {r['recipe_minutes']} | {r.get('peak_gib', '-')} |")
        else:
            print(f"| {r['start']} | - | {r['batch']} | {r['mode']} | {r.get('skipped') or r.get('error')} |")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
