rule eval_recon:
    input:
        autoencoder=lambda w: PIPELINE[w.exp].autoencoder_checkpoint,
        manifest=L.manifest,
    output:
        L.recon,
    log:
        f"{L.logs}/eval_recon.log",
    benchmark:
        f"{L.benchmarks}/eval_recon.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("eval_recon")
    resources:
        **PIPELINE.resources("eval_recon"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("eval_recon"),
        data=lambda w: PIPELINE[w.exp].path(L.data),
        options=lambda w: PIPELINE[w.exp].recon_options(),
    shell:
        "pvdm --threads {resources.cpu_threads} recon-metrics --autoencoder {input.autoencoder} "
        "--data {params.data} {params.options} --out {output} > {log} 2>&1"


rule eval_fvd:
    input:
        samples=L.sample_card,
        manifest=L.manifest,
    output:
        L.fvd,
    log:
        f"{L.logs}/eval_fvd{{frames}}_{{kind}}.log",
    benchmark:
        f"{L.benchmarks}/eval_fvd{{frames}}_{{kind}}.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("eval_fvd")
    resources:
        **PIPELINE.resources("eval_fvd"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("eval_fvd"),
        options=lambda w: PIPELINE[w.exp].fvd_options(w.kind, int(w.frames)),
    shell:
        "pvdm --threads {resources.cpu_threads} fvd {params.options} --out {output} > {log} 2>&1"


rule eval_is:
    input:
        samples=fill(L.sample_card, kind="model"),
        c3d=lambda w: PIPELINE[w.exp].c3d_archives(),
    output:
        L.inception,
    log:
        f"{L.logs}/eval_is{{frames}}.log",
    benchmark:
        f"{L.benchmarks}/eval_is{{frames}}.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("eval_is")
    resources:
        **PIPELINE.resources("eval_is"),
    params:
        numerics=lambda w: PIPELINE[w.exp].numerics("eval_is"),
        options=lambda w: PIPELINE[w.exp].inception_options(int(w.frames)),
    shell:
        "pvdm --threads {resources.cpu_threads} is {params.options} --out {output} > {log} 2>&1"
