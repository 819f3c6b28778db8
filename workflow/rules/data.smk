rule download_dataset:
    output:
        "results/raw/{dataset}/download.json",
    log:
        "results/logs/download_{dataset}.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        settings=lambda w: download_settings(w.dataset),
        out=lambda w: f"results/raw/{w.dataset}",
    shell:
        "pvdm download --settings {params.settings:q} --out {params.out} > {log} 2>&1"


rule prepare_data:
    input:
        raw=lambda w: raw_data_input(w.exp),
    output:
        manifest="results/{exp}/data/manifest.json",
    log:
        "results/{exp}/logs/prepare_data.log",
    conda:
        "../envs/pvdm.yaml"
    threads: 2
    params:
        settings=lambda w: settings(w.exp, "data"),
        out=lambda w: f"results/{w.exp}/data",
    shell:
        "pvdm prepare --exp {wildcards.exp} --settings {params.settings:q} --workers {threads} "
        "--out {params.out} > {log} 2>&1"
