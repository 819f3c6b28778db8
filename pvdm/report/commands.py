"""`pvdm table` (the paper table) and `pvdm figures` (training curves, sample strips, FVD over checkpoints)."""

from __future__ import annotations

import argparse
import logging
import textwrap
from pathlib import Path

import numpy as np

from pvdm.cli_options import Command, opt, register_commands

log = logging.getLogger("pvdm.report")

ROWS_HELP = """\
ROWS is a JSON list with one object per table row:
  {"id": "ucf101", "label": "Ours, PVDM-L", "dataset": "ucf101", "kind": "ours",
   "paper_variant": "PVDM-L 400/400-s",
   "fvd16": "results/ucf101/metrics/fvd16.json", "fvd128": "results/ucf101/metrics/fvd128.json",
   "recon": "results/ucf101/metrics/recon.json"}
kind is one of ours, released, untrained, real_floor (a real_floor row shows the real-vs-real FVD floor
stored in its FVD files). paper_variant names a `variant` of the reported-numbers CSV (e.g. PVDM-S, PVDM-L,
"PVDM-L 400/400-s"); without it the row gets no paper comparison. fvd16, fvd128 and recon are optional;
relative paths are taken from --base-dir. A missing metric file shows as n/a with a footnote; a malformed
one stops with an error naming the file."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table",
        help="the paper table: our FVD / reconstruction metrics beside the PVDM paper's numbers",
        description=textwrap.fill(
            "Build the results table from metric files (`pvdm fvd`, `pvdm recon-metrics`) and the paper's "
            "reported numbers. Writes OUT/NAME.md, .csv (numbers), .tex and .json (for `dvc metrics`) "
            "atomically. Cells show value [95% bootstrap interval], the paper's number with its confidence "
            "tag (V read in the paper, S secondary source, M recalled) and the difference; footnotes give each "
            "protocol card and how it differs from the paper's (N, resolution, frames, EMA).", 100
        ) + "\n\n" + ROWS_HELP,
        formatter_class=_Formatter,
    )
    rows = p.add_mutually_exclusive_group(required=True)
    rows.add_argument("--rows", type=Path, help="JSON file: a list of row objects (see above)")
    rows.add_argument("--rows-json", help="the same list inline (how the Snakemake rule calls)")
    p.add_argument("--reported", type=Path, default=Path("config/paper/pvdm_reported.csv"),
                   help="CSV of the paper's reported numbers")
    p.add_argument("--out", required=True, type=Path, help="output folder (e.g. results/paper)")
    p.add_argument("--name", default="table1", help="file stem of the outputs")
    p.add_argument("--base-dir", type=Path, default=Path("."), help="folder that relative metric paths start from")
    p.set_defaults(func=run_table)

    p = sub.add_parser(
        "figures",
        help="report figures: training curves, sample strips, FVD over checkpoints (PNG)",
        description=textwrap.fill(
            "Report figures as PNG files (matplotlib, Agg), written atomically. One of: `curves` (losses and "
            "eval metrics vs step from log.jsonl files), `strip` (frames of generated videos), `fvd` (FVD vs "
            "training step from several metric files). See `pvdm figures <figure> --help`.", 100),
        formatter_class=_Formatter,
    )
    figs = p.add_subparsers(dest="figure", metavar="<figure>", required=True)

    register_commands(figs, [
        Command("curves", "losses vs step (+ eval/* metrics) from log.jsonl files", CURVES_OPTIONS, run_curves),
        Command("strip", "a strip of sample frames: first K videos x every k-th frame", STRIP_OPTIONS, run_strip),
        Command("compare", "held-out real clips, their reconstructions and generated clips, one above the other",
                COMPARE_OPTIONS, run_compare),
        Command("all", "the four report figures of an experiment (what the paper_figures rule makes)",
                [opt("--exp", required=True, help="experiment id (results/<exp>/...)"),
                 opt("--frames", required=True, type=int, help="frames of the model's clips (samples/model<frames>)"),
                 opt("--autoencoder", required=True, type=Path, help="autoencoder checkpoint of the comparison")],
                run_figures_all),
        Command("fvd", "FVD vs training step from several metric files",
                [opt("metrics", nargs="+", type=Path, help="FVD metric JSON files written by `pvdm fvd`"), PNG_OUT,
                 opt("--logy", action="store_true", help="log-scale FVD axis"), TITLE],
                run_fvd_plot),
    ])


PNG_OUT = opt("--out", required=True, type=Path, help="PNG file to write")
TITLE = opt("--title", default=None, help="figure title")
EVERY = opt("--every", type=int, default=2, help="take every k-th frame (default 2)")
CURVES_OPTIONS = [
    opt("logs", nargs="+", help="log.jsonl files, optionally as LABEL=PATH"), PNG_OUT,
    opt("--keys", nargs="+", default=None,
        help="only these log keys (e.g. g/total d/total eval/psnr); default: every numeric key"),
    opt("--logy", action="store_true", help="log-scale loss axis (drops series with values <= 0)"),
    opt("--consecutive", action="store_true",
        help="the logs are stages run one after the other (stage 1, then GAN): each continues the step axis "
        "where the previous one ended, with a line at each stage boundary"),
    TITLE,
]
STRIP_OPTIONS = [
    opt("--videos", required=True, type=Path, help="a clip store folder or .npy uint8 [N, T, H, W, C]"), PNG_OUT,
    opt("--num-videos", type=int, default=4, help="rows: the first K videos (default 4)"), EVERY,
    opt("--max-frames", type=int, default=None, help="at most this many frames per row"), TITLE,
]
COMPARE_OPTIONS = [
    opt("--real", required=True, type=Path, help="held-out clip store (e.g. results/mnist/data/test)"),
    opt("--autoencoder", required=True, type=Path, help="autoencoder checkpoint that reconstructs them"),
    opt("--generated", required=True, type=Path, help="clip store of generated clips (samples/.../clips)"), PNG_OUT,
    opt("--num-videos", type=int, default=3, help="rows per block: the first K clips (default 3)"), EVERY,
    opt("--scale", type=int, default=None,
        help="screen pixels per video pixel (default: enough for about 96-pixel frames)"),
    TITLE,
]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and descriptions keep their line breaks (the ROWS example)."""


def run_table(args: argparse.Namespace) -> None:
    import json

    from pvdm.report.table import build_table, load_rows, parse_rows, write_table

    if not args.reported.is_file():
        raise FileNotFoundError(f"{args.reported}: no such reported-numbers CSV")
    if args.rows is not None:
        if not args.rows.is_file():
            raise FileNotFoundError(f"{args.rows}: no such rows file")
        rows = load_rows(args.rows)
    else:
        try:
            rows = parse_rows(json.loads(args.rows_json), "--rows-json")
        except json.JSONDecodeError as e:
            raise ValueError(f"--rows-json is not valid JSON: {e}") from None
    table = build_table(rows, args.reported, args.base_dir)
    write_table(table, args.out, args.name)
    missing = table.numbers[table.numbers["status"] != "ok"]
    for _, r in missing.iterrows():
        log.warning("row %s: %s", r["id"], r["status"])
    log.info("wrote %s/%s.{md,csv,tex,json} (%d rows)", args.out, args.name, len(table.numbers))


def _parse_logs(items: list[str]) -> dict[str, Path]:
    logs: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).parent.name or item, item
        if label in logs:
            raise ValueError(f"two logs labelled '{label}'; name them LABEL=PATH")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such log file")
        logs[label] = Path(path)
    return logs


def run_curves(args: argparse.Namespace) -> None:
    """Losses vs training step from one or more training logs (JSON lines with a 'step' key), and every
    eval/* metric on its own panel below. Give LABEL=PATH to name a log; a bare PATH is labelled by its
    folder."""
    from pvdm.report.figures import plot_training_curves

    plot_training_curves(_parse_logs(args.logs), args.out, args.keys, args.logy, args.title, args.consecutive)
    log.info("wrote %s", args.out)


def run_strip(args: argparse.Namespace) -> None:
    """One image with a row per video and every k-th frame across, from a clip store or a .npy file
    holding uint8 videos [N, T, H, W, 3] (or 1 channel), e.g. the sample stage's videos."""
    from pvdm.report.figures import plot_sample_strip

    if args.videos.is_dir():
        from pvdm.data.store import ClipStore

        videos = ClipStore(args.videos).clips
    elif not args.videos.is_file():
        raise FileNotFoundError(f"{args.videos}: no such file or clip store")
    else:
        videos = np.load(args.videos, mmap_mode="r", allow_pickle=False)
    if videos.ndim != 5:
        raise ValueError(f"{args.videos}: expected uint8 videos [N, T, H, W, C], got shape {videos.shape}")
    head = np.asarray(videos[: args.num_videos])  # read only the rows we draw
    plot_sample_strip(head, args.out, args.num_videos, args.every, args.max_frames, args.title)
    log.info("wrote %s", args.out)


def run_compare(args: argparse.Namespace) -> None:
    """Three labelled strips (every k-th frame across): the first K clips of a held-out clip store, the
    same clips through the autoencoder, and the first K generated clips."""
    from pvdm.checkpoints import load_autoencoder
    from pvdm.data.store import ClipStore
    from pvdm.eval.reconstruction import reconstruct
    from pvdm.report.figures import plot_comparison

    for path in (args.real, args.generated):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such clip store")
    if not args.autoencoder.is_file():
        raise FileNotFoundError(f"{args.autoencoder}: no such checkpoint")
    model = load_autoencoder(args.autoencoder, map_location="cpu")
    frames = model.cfg.frames
    real, rec = next(reconstruct(model, ClipStore(args.real), args.num_videos, frames, args.num_videos))
    generated = np.asarray(ClipStore(args.generated).clips[: args.num_videos, :frames])
    blocks = [("real\n(held out)", real), ("reconstructed", rec), ("generated", generated)]
    scale = args.scale or max(1, 96 // real.shape[2])
    plot_comparison(blocks, args.out, args.every, title=args.title, scale=scale)
    log.info("wrote %s", args.out)


def run_figures_all(args: argparse.Namespace) -> None:
    """The autoencoder curves (stage 1 then GAN), the diffusion loss, a sample strip and the held-out /
    reconstructed / generated comparison of experiment EXP, from and to the paths of the pipeline's layout
    (pvdm.dag.Layout) under the working directory."""
    from pvdm.dag import FIGURES, HELD_OUT_SPLIT, Layout

    def path(template: str, **w: object) -> Path:
        return Path(template.format(exp=args.exp, frames=args.frames, **w))

    out = {figure: path(Layout.figure, figure=figure) for figure in FIGURES}
    clips = path(Layout.sample_clips, kind="model")
    common = dict(title=None, every=2)
    run_curves(argparse.Namespace(
        logs=[f"stage1={path(Layout.stage1)}/log.jsonl", f"gan={path(Layout.gan)}/log.jsonl"], out=out["autoencoder"],
        keys=None, logy=True, consecutive=True, title=f"autoencoder ({args.exp})"))
    run_curves(argparse.Namespace(logs=[f"diffusion={path(Layout.diffusion)}/log.jsonl"], out=out["diffusion"],
                                  keys=["loss"], logy=True, consecutive=False, title=f"latent diffusion ({args.exp})"))
    run_strip(argparse.Namespace(videos=clips, out=out["samples"], num_videos=6, max_frames=None,
                                 **{**common, "title": f"samples ({args.exp})"}))
    run_compare(argparse.Namespace(real=path(Layout.data) / HELD_OUT_SPLIT, autoencoder=args.autoencoder, generated=clips,
                                   out=out["compare"], num_videos=3, scale=None,
                                   **{**common, "title": f"held-out, reconstructed, generated ({args.exp})"}))


def run_fvd_plot(args: argparse.Namespace) -> None:
    """FVD across saved checkpoints: one line per clip length (FVD16, FVD128) with the bootstrap
    interval as error bars and the real-vs-real floor dashed. The step comes from the file ('step' or
    protocol.step) or its name (fvd16_step050000.json, step_50000/fvd16.json)."""
    from pvdm.report.figures import plot_fvd_checkpoints

    for path in args.metrics:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such metric file")
    plot_fvd_checkpoints(args.metrics, args.out, args.title, args.logy)
    log.info("wrote %s", args.out)


PUBLISH_WHAT = """\
What (default: everything the config's experiments have; raw data and loss curves only where present):
  --raw          results/raw/<dataset>/ of the experiments' datasets
  --checkpoints  results/<exp>/autoencoder/gan/model.pt, results/<exp>/diffusion/ema.pt (model.pt when
                 sampling.ema is false; + untrained.pt for the untrained baseline), or results/<exp>/released/*.pt
  --metrics      results/<exp>/metrics/*.json
  --table        results/paper/table1.{md,csv,tex,json} (`dvc commit paper`: they are outputs of dvc.yaml)
  --plots        loss curves as CSV in results/paper/plots/ (from the training logs), for `dvc plots show`
Examples:
  pvdm publish --metrics-only --push --remote storage /shared/pvdm-dvc
  pvdm publish --config config/ucf101.yaml --git-add --push"""


def register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="what the config's DAG costs: jobs, GPUs per job and GPU-hours per rule",
        description="For each rule of the config's DAG: the jobs, the GPUs each asks for (resources.<stage>) "
        "and the GPU-hours estimated from measured throughput (benchmarks/results/throughput.json, written by "
        "benchmarks/gpu_suite.py on a GPU; the GPU it was measured on is printed) or, where nothing was "
        "measured, from the paper's published figures (marked). A rule without a rate says so.",
    )
    _add_config_args(p)
    p.add_argument("--throughput", type=Path, default=None,
                   help="throughput file (default: benchmarks/results/throughput.json under --repo)")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> None:
    from pvdm.report.cost import THROUGHPUT, plan_costs, sampler_choices, sampler_markdown, to_markdown

    cfg, exps = _config_and_experiments(args)
    cfg = {**cfg, "targets": exps}
    throughput = args.throughput or args.repo / THROUGHPUT
    costs, measured_on = plan_costs(cfg, throughput)
    print(to_markdown(costs, measured_on), end="")
    choices, _ = sampler_choices(cfg, throughput)
    if choices:
        print("\nSampling by sampler (GPU-hours scale with network evaluations; FVD against the paper's sampler: "
              "benchmarks/results/samplers/samplers.md):\n")
        print(sampler_markdown(choices), end="")


def register_publish(sub: argparse._SubParsersAction) -> None:
    """`pvdm publish` (dvc add + git add + dvc push of published artifacts) and `pvdm pull-metrics`."""
    p = sub.add_parser(
        "publish",
        help="version published artifacts with DVC: dvc add, git add of the pointers, dvc push",
        description=textwrap.fill(
            "Version the artifacts a reader needs with DVC (Snakemake owns the DAG, DVC stores the bytes): "
            "`dvc add` them (modification times are kept, so Snakemake reruns nothing), print or run the "
            "`git add` of the .dvc pointers, and `dvc push` them. Run from the repository root after a "
            "pipeline run, with the same config.", 100) + "\n\n" + PUBLISH_WHAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    what = p.add_argument_group("what to publish (any of these picks only the named ones)")
    what.add_argument("--metrics-only", action="store_true", help="only the metric JSONs (same as --metrics alone)")
    for name, what_help in (("raw", "raw datasets"), ("checkpoints", "the checkpoints sampling reads"),
                            ("metrics", "metric JSONs"), ("table", "the paper table"),
                            ("plots", "loss curves as CSV, for dvc plots")):
        what.add_argument(f"--{name}", action="store_true", help=f"{what_help} (see above)")
    p.add_argument("--remote", nargs=2, metavar=("NAME", "URL"),
                   help="add (or replace) the default DVC remote first: `dvc remote add -d NAME URL` "
                   "(written to .dvc/config; URL a folder or s3://, gs://, ssh://...)")
    p.add_argument("--push", action="store_true", help="`dvc push` the published files to the default remote")
    p.add_argument("--git-add", action="store_true", help="run `git add` on the pointers (else print the command)")
    p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    p.set_defaults(func=run_publish)

    p = sub.add_parser(
        "pull-metrics",
        help="dvc pull only the metric JSONs, to rebuild the paper table without retraining",
        description=textwrap.fill(
            "`dvc pull` the metric JSONs (results/<exp>/metrics/*.json.dvc) of the config's experiments and "
            "nothing else. Then `snakemake --cores 1 results/paper/table1.md` runs one job (paper_table): "
            "upstream jobs are not run because their outputs exist and nothing upstream is newer.", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--remote", metavar="NAME", help="DVC remote to pull from (default: the default remote)")
    p.set_defaults(func=run_pull_metrics)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", metavar="YAML",
                   help="config file(s), as given to snakemake --configfile (default: config/config.yaml)")
    p.add_argument("--exp", action="append", metavar="ID",
                   help="only this experiment (repeatable; default: the config's targets, else all)")
    p.add_argument("--repo", type=Path, default=Path("."), help="repository root (where dvc.yaml is; default: .)")


def _config_and_experiments(args: argparse.Namespace) -> tuple[dict, list[str]]:
    from pvdm.config import load_config
    from pvdm.report.publish import selected_experiments

    paths = args.config or [args.repo / "config" / "config.yaml"]
    cfg = load_config(paths)
    return cfg, selected_experiments(cfg, args.exp)


def run_publish(args: argparse.Namespace) -> None:
    from pvdm.report.publish import CATEGORIES, DvcError, publish

    picked = [name for name in CATEGORIES if getattr(args, name)]
    if args.metrics_only and [name for name in picked if name != "metrics"]:
        raise ValueError("--metrics-only cannot be combined with --raw, --checkpoints, --table or --plots")
    if args.metrics_only:
        picked = ["metrics"]
    cfg, exps = _config_and_experiments(args)
    try:
        publish(args.repo, cfg, exps, picked or CATEGORIES, explicit=bool(picked),
                remote=tuple(args.remote) if args.remote else None, push=args.push, git_add=args.git_add,
                dry_run=args.dry_run)
    except DvcError as e:
        raise SystemExit(f"pvdm publish: error: {e}") from None


def run_pull_metrics(args: argparse.Namespace) -> None:
    from pvdm.report.publish import DvcError, pull_metrics

    cfg, exps = _config_and_experiments(args)
    try:
        files = pull_metrics(args.repo, cfg, exps, args.remote)
    except DvcError as e:
        raise SystemExit(f"pvdm pull-metrics: error: {e}") from None
    log.info("pulled %d metric files; now: snakemake --cores 1 results/paper/table1.md", len(files))
