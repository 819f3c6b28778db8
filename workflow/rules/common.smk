import json

from pvdm.config import validate as pvdm_validate

# Our own validation first: it names the key and the file, then the schema check of Snakemake.
pvdm_validate(config, " + ".join(map(str, workflow.configfiles)) or "config")


validate(config, "../schemas/config.schema.yaml")

EXPERIMENTS = config.get("targets") or list(config["experiments"])


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
    """What the default target builds for each experiment: as far as its config goes."""
    targets = []
    for exp in EXPERIMENTS:
        cfg = exp_cfg(exp)
        targets.append(f"results/{exp}/data/manifest.json")
        ae = cfg.get("autoencoder", {})
        if "stage1" in ae:
            targets.append(f"results/{exp}/autoencoder/stage1/model.pt")
        if "gan" in ae:
            targets.append(f"results/{exp}/autoencoder/gan/model.pt")
            if "eval" in cfg:
                targets += evaluation_targets(exp)
    return targets


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
    if kind == "untrained":
        return f"results/{exp}/diffusion/untrained.pt"
    ema = exp_cfg(exp)["sampling"]["ema"]
    return f"results/{exp}/diffusion/{'ema' if ema else 'model'}.pt"


def sample_count(exp, frames):
    s = exp_cfg(exp)["sampling"]
    return s["num_videos"] if frames == clip_length(exp) else s["long_videos"]


def clip_length(exp):
    return exp_cfg(exp)["autoencoder"]["model"].get("frames", 16)


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
    if "sampling" not in cfg or "diffusion" not in cfg:
        return out
    s, t = cfg["sampling"], clip_length(exp)
    kinds = ["model"] + (["untrained"] if s["untrained_baseline"] else [])
    for kind in kinds:
        out.append(f"results/{exp}/metrics/fvd{t}_{kind}.json")
        if s["long_videos"] and cfg["data"]["long_frames"]:
            out.append(f"results/{exp}/metrics/fvd{s['long_frames']}_{kind}.json")
    return out
