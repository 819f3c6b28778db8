rule train_diffusion:
    input:
        autoencoder="results/{exp}/autoencoder/gan/model.pt",
        manifest="results/{exp}/data/manifest.json",
    output:
        model="results/{exp}/diffusion/model.pt",
        ema="results/{exp}/diffusion/ema.pt",
        untrained="results/{exp}/diffusion/untrained.pt",
        metrics="results/{exp}/diffusion/metrics.json",
    log:
        "results/{exp}/logs/train_diffusion.log",
    benchmark:
        "benchmarks/{exp}/train_diffusion.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        settings=lambda w: settings(w.exp, "diffusion"),
        data=lambda w: f"results/{w.exp}/data",
        out=lambda w: f"results/{w.exp}/diffusion",
    shell:
        "pvdm train-diffusion --settings {params.settings:q} --data {params.data} "
        "--autoencoder {input.autoencoder} --out {params.out} > {log} 2>&1"


rule sample:
    input:
        autoencoder=lambda w: autoencoder_checkpoint(w.exp),
        diffusion=lambda w: diffusion_checkpoint(w.exp, w.kind),
    output:
        card="results/{exp}/samples/{kind}{frames}/samples.json",
        preview="results/{exp}/samples/{kind}{frames}/preview.mp4",
    log:
        "results/{exp}/logs/sample_{kind}{frames}.log",
    benchmark:
        "benchmarks/{exp}/sample_{kind}{frames}.tsv"
    wildcard_constraints:
        kind="model|untrained",
        frames="[0-9]+",
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        settings=lambda w: settings(w.exp, "sampling"),
        num=lambda w: sample_count(w.exp, int(w.frames)),
        out=lambda w: f"results/{w.exp}/samples/{w.kind}{w.frames}",
    shell:
        "pvdm sample --settings {params.settings:q} --autoencoder {input.autoencoder} "
        "--diffusion {input.diffusion} --frames {wildcards.frames} --num-videos {params.num} "
        "--out {params.out} > {log} 2>&1"


rule import_released:
    input:
        autoencoder=lambda w: exp_cfg(w.exp)["released"]["autoencoder"],
        diffusion=lambda w: exp_cfg(w.exp)["released"]["diffusion"],
    output:
        autoencoder="results/{exp}/released/autoencoder.pt",
        diffusion="results/{exp}/released/diffusion.pt",
    log:
        "results/{exp}/logs/import_released.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        out=lambda w: f"results/{w.exp}/released",
        configs=lambda w: released_config_args(w.exp),
    shell:
        "pvdm import-pvdm --autoencoder {input.autoencoder} --diffusion {input.diffusion} "
        "{params.configs} --out {params.out} > {log} 2>&1"
