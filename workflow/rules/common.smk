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
