rule train_autoencoder:
    input:
        manifest=L.manifest,
    output:
        model=f"{L.stage1}/model.pt",
        metrics=f"{L.stage1}/metrics.json",
        grid=f"{L.stage1}/recon_grid.mp4",
    log:
        f"{L.logs}/train_autoencoder.log",
    benchmark:
        f"{L.benchmarks}/train_autoencoder.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("train_autoencoder")
    resources:
        **PIPELINE.resources("train_autoencoder"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("train_autoencoder"),
        settings=lambda w: PIPELINE[w.exp].settings(
            "autoencoder.model", "autoencoder.stage1"
        ),
        data=lambda w: PIPELINE[w.exp].path(L.data),
        out=lambda w: PIPELINE[w.exp].path(L.stage1),
    shell:
        "{resources.launch} train-autoencoder --settings {params.settings:q} --data {params.data} "
        "--out {params.out} > {log} 2>&1"


rule finetune_gan:
    input:
        init=f"{L.stage1}/model.pt",
        manifest=L.manifest,
    output:
        model=f"{L.gan}/model.pt",
        history=f"{L.gan}/history.json",
        metrics=f"{L.gan}/metrics.json",
        grid=f"{L.gan}/recon_grid.mp4",
    log:
        f"{L.logs}/finetune_gan.log",
    benchmark:
        f"{L.benchmarks}/finetune_gan.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("finetune_gan")
    resources:
        **PIPELINE.resources("finetune_gan"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("finetune_gan"),
        settings=lambda w: PIPELINE[w.exp].settings(
            "autoencoder.model", "autoencoder.gan"
        ),
        data=lambda w: PIPELINE[w.exp].path(L.data),
        out=lambda w: PIPELINE[w.exp].path(L.gan),
    shell:
        "{resources.launch} finetune-gan --settings {params.settings:q} --data {params.data} --init {input.init} "
        "--out {params.out} > {log} 2>&1"
