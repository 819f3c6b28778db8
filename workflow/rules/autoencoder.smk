rule train_autoencoder:
    input:
        manifest="results/{exp}/data/manifest.json",
    output:
        model="results/{exp}/autoencoder/stage1/model.pt",
        metrics="results/{exp}/autoencoder/stage1/metrics.json",
        grid="results/{exp}/autoencoder/stage1/recon_grid.mp4",
    log:
        "results/{exp}/logs/train_autoencoder.log",
    benchmark:
        "benchmarks/{exp}/train_autoencoder.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        settings=lambda w: settings(w.exp, "autoencoder.model", "autoencoder.stage1"),
        data=lambda w: f"results/{w.exp}/data",
        out=lambda w: f"results/{w.exp}/autoencoder/stage1",
    shell:
        "pvdm train-autoencoder --settings {params.settings:q} --data {params.data} "
        "--out {params.out} > {log} 2>&1"


rule finetune_gan:
    input:
        init="results/{exp}/autoencoder/stage1/model.pt",
        manifest="results/{exp}/data/manifest.json",
    output:
        model="results/{exp}/autoencoder/gan/model.pt",
        history="results/{exp}/autoencoder/gan/history.json",
        metrics="results/{exp}/autoencoder/gan/metrics.json",
        grid="results/{exp}/autoencoder/gan/recon_grid.mp4",
    log:
        "results/{exp}/logs/finetune_gan.log",
    benchmark:
        "benchmarks/{exp}/finetune_gan.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        settings=lambda w: settings(w.exp, "autoencoder.model", "autoencoder.gan"),
        data=lambda w: f"results/{w.exp}/data",
        out=lambda w: f"results/{w.exp}/autoencoder/gan",
    shell:
        "pvdm finetune-gan --settings {params.settings:q} --data {params.data} --init {input.init} "
        "--out {params.out} > {log} 2>&1"
