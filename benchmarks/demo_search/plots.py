"""Plots and markdown tables of the demo search (reads results/*.jsonl, writes img/*.png, tables.md).

Usage: python plots.py            (matplotlib Agg; no torch needed)
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
IMG = HERE / "img"


def rows(name: str) -> list[dict]:
    p = RES / f"{name}.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def by_run(rs: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in rs:
        out[r["run"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: r.get("step", 0))
    return out


SHORT = {"autoencoder.model.": "", "autoencoder.stage1.": "", "resolution": "res", "patch_size": "p",
         "channels": "c", "embed_dim": "e", "batch_size": "b", "dim_head": "dh", "proj_": "pj_",
         "l1_weight": "l1", "lpips_weight": "lpips", "mse_weight": "mse", "proj_mlp_dim": "pj_mlp"}


def describe(r: dict) -> str:
    """Short label: data variant + the overrides that differ from config/config.yaml."""
    data = r["data"].replace("mm", "").replace("_d", "px/").replace("_s15", "/speed1.5") + "dig"
    parts = []
    for o in r.get("overrides", []):
        k, v = o.split("=", 1)
        if k.endswith(("dim_head", "proj_mlp_dim", "model.resolution")):
            continue  # implied by the width / data resolution
        for a, b in SHORT.items():
            k = k.replace(a, b)
        parts.append(f"{k}={v}")
    if r.get("schedule"):
        parts.append(f"sched={r['schedule']}")
    return f"{r['run']}: {data} " + " ".join(parts)


def plot_ae(runs: dict[str, list[dict]], out: Path, title: str, keep=None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    styles = ["-", "--", "-.", ":"]
    for i, (name, rs) in enumerate(sorted(runs.items())):
        if keep and name not in keep:
            continue
        x = [r["train_cpu_s"] for r in rs]
        for ax, key in zip(axes, ("psnr", "ssim"), strict=True):
            ax.plot(x, [r[key] for r in rs], marker="o", ms=3, ls=styles[(i // 10) % 4], label=describe(rs[0]))
    for ax, key in zip(axes, ("held-out PSNR (dB)", "held-out SSIM"), strict=True):
        ax.set_xlabel("training CPU seconds (1 thread)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].axhline(24, color="k", ls=":", lw=1)
    axes[0].text(0.01, 0.99, "dotted: all-black output (2 digits) = 14.28 dB", transform=axes[0].transAxes,
                 va="top", fontsize=7)
    axes[0].axhline(14.28, color="grey", ls=":", lw=1)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=6.5, loc="center right")
    fig.subplots_adjust(right=0.62)
    fig.suptitle(title)
    IMG.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def ae_table(runs: dict[str, list[dict]]) -> str:
    lines = ["| run | data + overrides of config/config.yaml | steps | train CPU s | PSNR dB | SSIM |",
             "|---|---|---|---|---|---|"]
    for name, rs in sorted(runs.items()):
        for r in rs:
            ov = " ".join(o.replace("autoencoder.", "") for o in r.get("overrides", []))
            if r.get("schedule"):
                ov += f" schedule={r['schedule']}"
            lines.append(
                f"| {name} | {describe(r).split(': ', 1)[1]} | {r['step']} | {r['train_cpu_s']} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
            )
    return "\n".join(lines)


def plot_dm(rs: list[dict], out: Path) -> None:
    runs = defaultdict(list)
    for r in rs:
        if r["kind"] == "untrained":
            continue
        runs[(r["run"], r["kind"])].append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (name, kind), v in sorted(runs.items()):
        v.sort(key=lambda r: r["step"])
        x = [r["train_cpu_s"] for r in v]
        if kind == "ema":
            axes[0].plot(x, [r["loss_recent"] for r in v], marker="o", ms=3, label=name)
        f = [(r["train_cpu_s"], r["fvd"] / r["floor"]) for r in v if "fvd" in r]
        if f:
            axes[1].plot(*zip(*f, strict=True), marker="o", ms=3, label=f"{name} {kind} (N={v[-1].get('n')})")
    axes[0].set_ylabel("training loss (mean of the last 20% of logged steps)")
    axes[1].set_ylabel("FVD16 / real-vs-real floor")
    axes[1].axhline(2.5, color="k", ls=":", lw=1)
    for ax in axes:
        ax.set_xlabel("training CPU seconds (1 thread)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def dm_table(rs: list[dict]) -> str:
    """Diffusion chunks; FVD16 against the first N real clips, the floor at the same N (two disjoint sets
    of N real clips) where measured, else at N/2 (two halves of the N: rows before the same-N floor)."""
    lines = [
        "| run | data | overrides | kind | steps | train CPU s | loss | sampler | sample CPU s / clip | N "
        "| FVD16 | floor (n) | ratio | 95% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rs, key=lambda r: (r["run"], r["kind"], r["step"])):
        loss = f"{r['loss_recent']:.4f}" if r.get("loss_recent") is not None else "-"
        fvd = floor = ratio = ci = "-"
        if "fvd" in r:
            same_n = "floor_half" in r
            fl, fl_n = r["floor"], r["n"] if same_n else r["floor_n"]
            fvd, floor, ratio, ci = f"{r['fvd']:.1f}", f"{fl:.1f} ({fl_n})", f"{r['fvd'] / fl:.2f}", f"{r['interval95']}"
        ov = " ".join(o.split(".")[-1] for o in r.get("overrides", []) if not o.startswith(("autoencoder.", "data.")))
        lines.append(
            f"| {r['run']} | {r.get('data', '-')} | {ov} | {r['kind']} | {r['step']} | {r['train_cpu_s']} | {loss} "
            f"| ddim{r['sampler_steps']} | {r['sample_cpu_s'] / r['sample_n']:.2f} | {r.get('n', '-')} | {fvd} "
            f"| {floor} | {ratio} | {ci} |"
        )
    return "\n".join(lines)


def resample_table(rs: list[dict]) -> str:
    lines = ["| run | U-Net | sampler | eta | N | FVD16 | floor (same N) | ratio | 95% |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        if "floor_half" not in r:
            continue
        lines.append(f"| {r['run']} | {Path(r['unet']).parent.name}/{Path(r['unet']).name} | ddim{r['sampler_steps']} "
                     f"| {r['eta']} | {r['n']} | {r['fvd']:.1f} | {r['floor']:.1f} | {r['ratio']:.2f} | {r['interval95']} |")
    return "\n".join(lines)


def main() -> None:
    IMG.mkdir(exist_ok=True)
    md = []
    ae = by_run(rows("ae"))
    if ae:
        plot_ae(ae, IMG / "ae_psnr_vs_cpu.png", "autoencoder stage 1: held-out quality vs training CPU")
        md += ["## Autoencoder runs", "", ae_table(ae), ""]
    loss = by_run(rows("ae_loss"))
    if loss:
        plot_ae(loss, IMG / "ae_loss_recipe.png", "MSE vs the original 4 x L1 + 4 x LPIPS recipe")
        md += ["## Loss recipe", "", ae_table(loss), ""]
    gan = by_run(rows("gan"))
    if gan:
        md += ["## GAN stage", "", ae_table(gan), ""]
    dm = rows("dm")
    if dm:
        plot_dm(dm, IMG / "dm_loss_fvd_vs_cpu.png")
        md += ["## Diffusion runs", "", dm_table(dm), ""]
    dm2 = rows("dm2")
    if dm2:
        plot_dm(dm2, IMG / "dm2_loss_fvd_vs_cpu.png")
        md += ["## Diffusion runs, second round (position embedding, Min-SNR, v-prediction)", "",
               "Losses of runs with min_snr_gamma are weighted and not comparable with the others.", "",
               dm_table(dm2), ""]
    rs = rows("resample")
    if rs:
        md += ["## Sampling again (one U-Net, other sampler settings)", "", resample_table(rs), ""]
    (HERE / "tables.md").write_text("\n".join(md) + "\n")
    print("wrote", HERE / "tables.md")


if __name__ == "__main__":
    main()
