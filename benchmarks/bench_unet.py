"""Paper-scale triplane U-Net (528 M parameters): fp32 forward + backward at batch 1 on CPU.

Each variant runs in its own subprocess (so ru_maxrss is its own peak) with ``--threads`` torch
threads: build the model (seed 0), one warm-up step, then ``--repeats`` timed steps of the epsilon
loss on z, c ~ U(-1, 1) ``[1, 4, 2048]`` with a random t, as the reference measurement did
(docs/original-pvdm.md#cpu-measurements).

Variants:
  ours            TriplaneUNet as shipped (yt|xt batched, sdpa attention, no recompute).
  original-style  the same weights run the way the original does: each plane through each block
                  separately, einsum attention (ADM legacy) under activation checkpointing.
                  A same-machine, same-torch stand-in for the original code.

Reference (our measurement of the original code, docs/original-pvdm.md#cpu-measurements; 2-vCPU Xeon,
torch 2.13 CPU wheel): 14.4-15.0 s, 5.25 GB peak RSS (2.25 GB before the forward). Target: <= 0.7x
that time, no more memory.

    .venv/bin/python benchmarks/bench_unet.py [--threads 2] [--repeats 2] [--variants ours original-style]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

REF_TIME_S, REF_PEAK_GB, REF_BEFORE_FWD_GB = 15.0, 5.25, 2.25


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _original_style_forward(model, x, t, cond):  # noqa: ANN001, ANN202
    """The original's execution order: per-plane blocks, checkpointed einsum attention."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from pvdm.models.unet import AttentionBlock, ResBlock, timestep_embedding

    def attention(block, h):  # noqa: ANN001, ANN202
        def run(h):  # noqa: ANN001, ANN202
            n, c, *spatial = h.shape
            h = h.reshape(n, c, -1)
            qkv = F.conv1d(block.norm(h), block.qkv.weight, block.qkv.bias)
            d = c // block.num_heads
            q, k, v = qkv.reshape(n * block.num_heads, 3 * d, -1).split(d, dim=1)
            s = 1 / math.sqrt(math.sqrt(d))
            w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1).type(q.dtype)
            a = torch.einsum("bts,bcs->bct", w, v).reshape(n, c, -1)
            return (h + F.conv1d(a, block.proj_out.weight, block.proj_out.bias)).reshape(n, c, *spatial)

        return checkpoint(run, h, use_reentrant=False)

    def block_fwd(block, h, emb):  # noqa: ANN001, ANN202
        for layer in block:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = attention(layer, h)
            else:
                h = layer(h)
        return h

    def joint(attn, planes):  # noqa: ANN001, ANN202
        if isinstance(attn, torch.nn.Identity):
            return planes
        shapes = [p.shape for p in planes]
        h = attention(attn, torch.cat([p.flatten(2) for p in planes], dim=-1))
        return [o.reshape(s) for o, s in zip(h.split([s[2] * s[3] for s in shapes], dim=-1), shapes, strict=True)]

    cfg = model.cfg
    s, f = cfg.latent_side, cfg.latent_frames
    emb = model.time_embed(timestep_embedding(t, cfg.model_channels))
    h = torch.cat([x, cond], dim=1)
    b, c = h.shape[:2]
    planes = [
        h[:, :, : s * s].reshape(b, c, s, s),
        h[:, :, s * s : s * s + f * s].reshape(b, c, f, s),
        h[:, :, s * s + f * s :].reshape(b, c, f, s),
    ]
    skips = []
    for block, attn in zip(model.input_blocks, model.input_attns, strict=True):
        planes = joint(attn, [block_fwd(block, p, emb) for p in planes])
        skips.append(planes)
    planes = joint(model.mid_attn, [block_fwd(model.middle_block, p, emb) for p in planes])
    for block, attn in zip(model.output_blocks, model.output_attns, strict=True):
        skip = skips.pop()
        planes = joint(attn, [block_fwd(block, torch.cat([p, q], 1), emb) for p, q in zip(planes, skip, strict=True)])
    return torch.cat([model.out(p).flatten(2) for p in planes], dim=-1)


def child(variant: str, threads: int, repeats: int, device: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    rss_import = _rss_gb()
    from pvdm.diffusion import training_loss
    from pvdm.models.unet import TriplaneUNet, UNetConfig

    torch.manual_seed(0)
    model = TriplaneUNet(UNetConfig.paper()).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    rss_built = _rss_gb()
    if variant == "ours":
        net = model
    elif variant == "original-style":
        net = lambda x, t, c: _original_style_forward(model, x, t, c)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    z = (torch.rand(1, 4, 2048) * 2 - 1).to(device)
    c = (torch.rand(1, 4, 2048) * 2 - 1).to(device)
    sync = torch.cuda.synchronize if cuda else lambda: None
    fwd, total = [], []
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        loss = training_loss(net, z, cond=c)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i > 0:  # step 0 is the warm-up (first-touch page faults, oneDNN primitive creation)
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    return {
        "variant": variant,
        "device": device,
        "threads": threads,
        "params": n_params,
        "fwd_s": statistics.median(fwd),
        "fwd_bwd_s": statistics.median(total),
        "fwd_bwd_all_s": total,
        "rss_import_gb": rss_import,
        "rss_built_gb": rss_built,
        "peak_rss_gb": _peak_gb(),
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--variants", nargs="+", default=["ours", "original-style"])
    ap.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                    help="run the children with MALLOC_MMAP_THRESHOLD_=BYTES (fixed glibc threshold: freed "
                    "activations go back to the OS, so peak RSS shows the working set, not heap retention)")
    ap.add_argument("--device", default="cpu", help="cpu (the target) or cuda (peak memory = allocator peak)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeats, args.device)))
        return

    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--device", args.device]
        env = dict(os.environ)
        if args.malloc_mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"done: {variant}", file=sys.stderr, flush=True)

    print(f"\nTriplaneUNet paper preset, fp32 fwd+bwd, batch 1, {args.device}, {args.threads} threads, "
          f"torch {rows[0]['torch']}, median of {args.repeats} after 1 warm-up"
          + (f", MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if args.malloc_mmap_threshold else "") + "\n")
    print("| variant | fwd s | fwd+bwd s | x ref time | peak RSS GB | RSS import GB | RSS built GB | peak - built GB |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| original code (docs/original-pvdm.md#cpu-measurements) | 2.4-2.6 | {REF_TIME_S:.1f} | 1.00 | {REF_PEAK_GB:.2f} | "
          f"~{REF_BEFORE_FWD_GB - 2.113:.2f} | {REF_BEFORE_FWD_GB:.2f} | {REF_PEAK_GB - REF_BEFORE_FWD_GB:.2f} |")
    for r in rows:
        print(f"| {r['variant']} | {r['fwd_s']:.2f} | {r['fwd_bwd_s']:.2f} | {r['fwd_bwd_s'] / REF_TIME_S:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['rss_import_gb']:.2f} | {r['rss_built_gb']:.2f} | "
              f"{r['peak_rss_gb'] - r['rss_built_gb']:.2f} |")
    by = {r["variant"]: r for r in rows}
    if "ours" in by and "original-style" in by:
        o, b = by["ours"], by["original-style"]
        print(f"\nsame machine: ours / original-style time = {o['fwd_bwd_s'] / b['fwd_bwd_s']:.2f}, "
              f"peak RSS {o['peak_rss_gb']:.2f} vs {b['peak_rss_gb']:.2f} GB")
    if args.device != "cpu":
        print("\n" + "\n".join(f"{r['variant']}: peak CUDA memory {r['peak_cuda_gb']:.2f} GB" for r in rows))
    if args.json:
        from pvdm.utils.io import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
