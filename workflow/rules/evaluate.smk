rule eval_recon:
    input:
        autoencoder=lambda w: autoencoder_checkpoint(w.exp),
        manifest="results/{exp}/data/manifest.json",
    output:
        "results/{exp}/metrics/recon.json",
    log:
        "results/{exp}/logs/eval_recon.log",
    benchmark:
        "benchmarks/{exp}/eval_recon.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        data=lambda w: f"results/{w.exp}/data",
        num=lambda w: exp_cfg(w.exp)["eval"]["recon_videos"],
        bootstrap=lambda w: exp_cfg(w.exp)["eval"]["bootstrap"],
    shell:
        "pvdm recon-metrics --autoencoder {input.autoencoder} --data {params.data} --split test "
        "--num-videos {params.num} --bootstrap {params.bootstrap} --out {output} > {log} 2>&1"


rule eval_fvd:
    input:
        samples="results/{exp}/samples/{kind}{frames}/samples.json",
        manifest="results/{exp}/data/manifest.json",
    output:
        "results/{exp}/metrics/fvd{frames}_{kind}.json",
    log:
        "results/{exp}/logs/eval_fvd{frames}_{kind}.log",
    benchmark:
        "benchmarks/{exp}/eval_fvd{frames}_{kind}.tsv"
    wildcard_constraints:
        kind="model|untrained",
        frames="[0-9]+",
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        real=lambda w: real_store(w.exp, int(w.frames)),
        fake=lambda w: f"results/{w.exp}/samples/{w.kind}{w.frames}/clips",
        ev=lambda w: exp_cfg(w.exp)["eval"],
        num=lambda w: fvd_count(w.exp, int(w.frames)),
        dataset=lambda w: exp_cfg(w.exp)["data"]["dataset"],
        ema=lambda w: (
            "yes" if w.kind == "model" and exp_cfg(w.exp)["sampling"]["ema"] else "no"
        ),
        sampler=lambda w: sampler_name(w.exp),
        cache=lambda w: f"results/{w.exp}/metrics/feature_cache",
    shell:
        "pvdm fvd --real {params.real} --fake {params.fake} --frames {wildcards.frames} "
        "--num-videos {params.num} --selector {params.ev[real_selector]} "
        "--seed {params.ev[seed]} --covariance {params.ev[covariance]} --resize {params.ev[resize]} "
        "--bootstrap {params.ev[bootstrap]} --dataset {params.dataset} "
        "--split {params.ev[real_split]} --sampler {params.sampler} --ema {params.ema} "
        "--cache-dir {params.cache} --out {output} > {log} 2>&1"
