rule train_diffusion:
    input:
        autoencoder=f"{L.gan}/model.pt",
        manifest=L.manifest,
    output:
        model=f"{L.diffusion}/model.pt",
        ema=f"{L.diffusion}/ema.pt",
        untrained=f"{L.diffusion}/untrained.pt",
        metrics=f"{L.diffusion}/metrics.json",
    log:
        f"{L.logs}/train_diffusion.log",
    benchmark:
        f"{L.benchmarks}/train_diffusion.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("train_diffusion")
    resources:
        **PIPELINE.resources("train_diffusion"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("train_diffusion"),
        settings=lambda w: PIPELINE[w.exp].settings("diffusion"),
        data=lambda w: PIPELINE[w.exp].path(L.data),
        out=lambda w: PIPELINE[w.exp].path(L.diffusion),
    shell:
        "{resources.launch} train-diffusion --settings {params.settings:q} --data {params.data} "
        "--autoencoder {input.autoencoder} --out {params.out} > {log} 2>&1"


rule sample:
    input:
        autoencoder=lambda w: PIPELINE[w.exp].autoencoder_checkpoint,
        diffusion=lambda w: PIPELINE[w.exp].diffusion_checkpoint(w.kind),
    output:
        temp(L.sample_shard),
    log:
        f"{L.logs}/sample_{{kind}}{{frames}}_{{shard}}.log",
    benchmark:
        f"{L.benchmarks}/sample_{{kind}}{{frames}}_{{shard}}.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("sample")
    resources:
        **PIPELINE.resources("sample"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("sample"),
        settings=lambda w: PIPELINE[w.exp].settings("sampling"),
        num=lambda w: PIPELINE[w.exp].sample_count(int(w.frames)),
        weights=lambda w: PIPELINE[w.exp].weights_label(w.kind),
        out=lambda w: PIPELINE[w.exp].path(L.samples, kind=w.kind, frames=w.frames),
    shell:
        "pvdm --threads {resources.cpu_threads} sample --settings {params.settings:q} --autoencoder {input.autoencoder} "
        "--diffusion {input.diffusion} --weights {params.weights} --frames {wildcards.frames} "
        "--num-videos {params.num} --shard {wildcards.shard} --out {params.out} > {log} 2>&1"


rule gather_samples:
    input:
        shards=lambda w: [
            PIPELINE[w.exp].path(L.sample_shard, kind=w.kind, frames=w.frames, shard=s)
            for s in PIPELINE[w.exp].shards(int(w.frames))
        ],
        # The shards are temporary: without the checkpoints declared here, a checkpoint lost after
        # the samples were made (a killed retraining) would leave this set looking up to date.
        autoencoder=lambda w: PIPELINE[w.exp].autoencoder_checkpoint,
        diffusion=lambda w: PIPELINE[w.exp].diffusion_checkpoint(w.kind),
    output:
        card=L.sample_card,
        preview=f"{L.samples}/preview.mp4",
    log:
        f"{L.logs}/gather_samples_{{kind}}{{frames}}.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        out=lambda w: PIPELINE[w.exp].path(L.samples, kind=w.kind, frames=w.frames),
        shards=lambda w: len(PIPELINE[w.exp].shards(int(w.frames))),
    shell:
        "pvdm gather-samples --shards {params.shards} --out {params.out} > {log} 2>&1"


rule import_released:
    input:
        unpack(lambda w: PIPELINE[w.exp].released_files()),
    output:
        autoencoder=f"{L.released}/autoencoder.pt",
        diffusion=f"{L.released}/diffusion.pt",
    log:
        f"{L.logs}/import_released.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        out=lambda w: PIPELINE[w.exp].path(L.released),
        configs=lambda w: PIPELINE[w.exp].released_config_args(),
    shell:
        "pvdm import-pvdm --autoencoder {input.autoencoder} --diffusion {input.diffusion} "
        "{params.configs} --out {params.out} > {log} 2>&1"
