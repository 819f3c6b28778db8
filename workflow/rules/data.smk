rule download_dataset:
    output:
        L.download,
    log:
        L.download_log,
    conda:
        "../envs/pvdm.yaml"
    params:
        settings=lambda w: PIPELINE.download_settings(w.dataset),
        out=lambda w: L.raw.format(dataset=w.dataset),
    shell:
        "pvdm download --settings {params.settings:q} --out {params.out} > {log} 2>&1"


rule prepare_data:
    input:
        raw=lambda w: PIPELINE[w.exp].raw_inputs(),
    output:
        manifest=L.manifest,
    log:
        f"{L.logs}/prepare_data.log",
    conda:
        "../envs/pvdm.yaml"
    threads: PIPELINE.threads("prepare_data")
    resources:
        **PIPELINE.resources("prepare_data"),
    params:
        settings=lambda w: PIPELINE[w.exp].settings("data"),
        out=lambda w: PIPELINE[w.exp].path(L.data),
    shell:
        "pvdm prepare --exp {wildcards.exp} --settings {params.settings:q} --workers {threads} "
        "--out {params.out} > {log} 2>&1"
