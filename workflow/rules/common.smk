import json
import shlex

from pvdm.config import validate as pvdm_validate

# Our own validation first: it names the key and the file, then the schema check of Snakemake.
pvdm_validate(config, " + ".join(map(str, workflow.configfiles)) or "config")


validate(config, "../schemas/config.schema.yaml")

EXPERIMENTS = config.get("targets") or list(config["experiments"])
# The paper's reported numbers ship with the workflow (absolute: works with --directory too).
REPORTED_NUMBERS = f"{workflow.basedir}/config/paper/pvdm_reported.csv"


def exp_cfg(exp):
    return config["experiments"][exp]


def settings(exp, *sections):
    """The (dotted) sections of an experiment a job depends on, as JSON. Passed as params, so
    changing them reruns exactly the jobs that read them (Snakemake's params rerun trigger).
    """
    cfg = exp_cfg(exp)
    picked = {"seed": cfg.get("seed", 0)}
    for dotted in sections:
        *parents, leaf = dotted.split(".")
        src, dst = cfg, picked
        for key in parents:
            src, dst = src[key], dst.setdefault(key, {})
        dst[leaf] = src[leaf]
    return json.dumps(picked, sort_keys=True)


def final_targets():
    """The default target: the paper table and figures when the experiments go that far, else
    as far as each experiment's config goes (data, autoencoder, ...)."""
    targets = []
    for exp in EXPERIMENTS:
        cfg = exp_cfg(exp)
        targets.append(f"results/{exp}/data/manifest.json")
        ae = cfg.get("autoencoder", {})
        if "stage1" in ae:
            targets.append(f"results/{exp}/autoencoder/stage1/model.pt")
        if "gan" in ae or "released" in cfg:
            targets.append(autoencoder_checkpoint(exp))
        if has_figures(exp):
            t = clip_length(exp)
            targets += [
                f"results/paper/figures/{exp}_{kind}_{t}.png"
                for kind in ("autoencoder", "diffusion", "samples")
            ]
    if any("eval" in exp_cfg(exp) for exp in EXPERIMENTS):
        targets.append("results/paper/table1.md")
    return targets


def has_figures(exp):
    cfg = exp_cfg(exp)
    return "released" not in cfg and {"gan", "sampling"} <= set(
        cfg.get("autoencoder", {})
    ) | set(cfg)


def autoencoder_checkpoint(exp):
    if "released" in exp_cfg(exp):
        return f"results/{exp}/released/autoencoder.pt"
    return f"results/{exp}/autoencoder/gan/model.pt"


def table_inputs():
    return [
        path
        for exp in EXPERIMENTS
        if "eval" in exp_cfg(exp)
        for path in evaluation_targets(exp)
    ]


def table_rows_json():
    """Rows of the paper table: per experiment ours (or released), the untrained baseline and
    the real-vs-real floor, each pointing at its metric files."""
    rows = []
    for exp in EXPERIMENTS:
        cfg = exp_cfg(exp)
        if "eval" not in cfg:
            continue
        metrics = f"results/{exp}/metrics"
        dataset, t = cfg["data"]["dataset"], clip_length(exp)
        s = cfg.get("sampling")
        fvd = {}
        if s is not None:
            fvd = {"fvd16": f"{metrics}/fvd{t}_model.json"}
            if s["long_videos"] and cfg["data"]["long_frames"]:
                fvd["fvd128"] = f"{metrics}/fvd{s['long_frames']}_model.json"
        kind = "released" if "released" in cfg else "ours"
        row = {
            "id": exp,
            "label": cfg.get("label", exp),
            "dataset": dataset,
            "kind": kind,
        }
        if cfg["paper_variant"]:
            row["paper_variant"] = cfg["paper_variant"]
        rows.append({**row, **fvd, "recon": f"{metrics}/recon.json"})
        if s is not None and s["untrained_baseline"] and kind == "ours":
            untrained = {
                "fvd16": fvd["fvd16"].replace("_model.json", "_untrained.json")
            }
            rows.append(
                {
                    "id": f"{exp}_untrained",
                    "label": f"{cfg.get('label', exp)}: untrained U-Net",
                    "dataset": dataset,
                    "kind": "untrained",
                    **untrained,
                }
            )
        if fvd:
            rows.append(
                {
                    "id": f"{exp}_floor",
                    "label": f"real vs real ({dataset})",
                    "dataset": dataset,
                    "kind": "real_floor",
                    **fvd,
                }
            )
    return json.dumps(rows)


def raw_data_input(exp):
    """The download rule's output when the dataset has no user-given root, else nothing."""
    data = exp_cfg(exp)["data"]
    if data["dataset"] == "moving_mnist" or data["root"]:
        return []
    return [f"results/raw/{data['dataset']}/download.json"]


def download_settings(dataset):
    for cfg in config["experiments"].values():
        if cfg["data"]["dataset"] == dataset:
            data = {k: cfg["data"][k] for k in ("dataset", "download")}
            return json.dumps({"data": data}, sort_keys=True)
    raise ValueError(f"no experiment uses dataset {dataset}")


def diffusion_checkpoint(exp, kind):
    """The U-Net a sample job uses: EMA or raw weights per sampling.ema, or the untrained init."""
    if "released" in exp_cfg(exp):
        return f"results/{exp}/released/diffusion.pt"
    if kind == "untrained":
        return f"results/{exp}/diffusion/untrained.pt"
    ema = exp_cfg(exp)["sampling"]["ema"]
    return f"results/{exp}/diffusion/{'ema' if ema else 'model'}.pt"


def fvd_count(exp, frames):
    """Clips per FVD: eval.fvd_videos, or for long videos at most the number sampled."""
    cfg = exp_cfg(exp)
    n = cfg["eval"]["fvd_videos"]
    return n if frames == clip_length(exp) else min(n, cfg["sampling"]["long_videos"])


def sample_count(exp, frames):
    s = exp_cfg(exp)["sampling"]
    return s["num_videos"] if frames == clip_length(exp) else s["long_videos"]


def clip_length(exp):
    # The released PVDM autoencoders are hard-wired to 16 frames.
    return exp_cfg(exp).get("autoencoder", {}).get("model", {}).get("frames", 16)


def real_store(exp, frames):
    """Real clips for FVD-<frames>: the configured split for clips, the long store for videos."""
    cfg = exp_cfg(exp)
    if frames <= cfg["data"]["clip_frames"]:
        return f"results/{exp}/data/{cfg['eval']['real_split']}"
    return f"results/{exp}/data/train_long"


def sampler_name(exp):
    s = exp_cfg(exp)["sampling"]
    kind = "ddpm" if s["steps"] == 1000 else "ddim"
    return f"{kind}{s['steps']}_eta{s['eta']:g}"


def evaluation_targets(exp):
    """Metric files of one experiment (FVD16, FVD128, baselines, reconstruction)."""
    cfg = exp_cfg(exp)
    out = [f"results/{exp}/metrics/recon.json"]
    if "sampling" not in cfg or not ("diffusion" in cfg or "released" in cfg):
        return out
    s, t = cfg["sampling"], clip_length(exp)
    baseline = s["untrained_baseline"] and "released" not in cfg
    kinds = ["model"] + (["untrained"] if baseline else [])
    out += [f"results/{exp}/metrics/fvd{t}_{kind}.json" for kind in kinds]
    if s["long_videos"] and cfg["data"]["long_frames"]:
        # The untrained baseline is measured on clips only: long videos of noise cost I3D time
        # and tell nothing more.
        out.append(f"results/{exp}/metrics/fvd{s['long_frames']}_model.json")
    return out


def released_config_args(exp):
    """--autoencoder-config / --diffusion-config for original-format files that are not the paper's."""
    rel = exp_cfg(exp)["released"]
    args = []
    for key in ("autoencoder_config", "diffusion_config"):
        if rel[key]:
            args.append(
                f"--{key.replace('_', '-')} {shlex.quote(json.dumps(rel[key]))}"
            )
    return " ".join(args)
