rule eval_recon:
    input:
        autoencoder=lambda w: PLAN[w.exp].autoencoder_checkpoint,
        manifest=L.manifest,
    output:
        L.recon,
    log:
        f"{L.logs}/eval_recon.log",
    benchmark:
        f"{L.benchmarks}/eval_recon.tsv"
    conda:
        "../envs/pvdm.yaml"
    threads: PLAN.threads("eval_recon")
    resources:
        **PLAN.resources("eval_recon"),
    params:
        numerics=lambda w: PLAN[w.exp].numerics("eval_recon"),
        data=lambda w: PLAN[w.exp].path(L.data),
        ev=lambda w: PLAN[w.exp].cfg["eval"],
        rfvd=lambda w: "" if PLAN[w.exp].cfg["eval"]["rfvd"] else "--no-rfvd",
    shell:
        "pvdm --threads {resources.cpu_threads} recon-metrics --autoencoder {input.autoencoder} --data {params.data} --split test "
        "--num-videos {params.ev[recon_videos]} --bootstrap {params.ev[bootstrap]} "
        "{params.rfvd} --out {output} "
        "> {log} 2>&1"


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
    wildcard_constraints:
        kind="model|untrained",
        frames="[0-9]+",
    conda:
        "../envs/pvdm.yaml"
    threads: PLAN.threads("eval_fvd")
    resources:
        **PLAN.resources("eval_fvd"),
    params:
        numerics=lambda w: PLAN[w.exp].numerics("eval_fvd"),
        real=lambda w: PLAN[w.exp].real_store(int(w.frames)),
        fake=lambda w: PLAN[w.exp].path(L.sample_clips, kind=w.kind, frames=w.frames),
        num=lambda w: PLAN[w.exp].fvd_count(int(w.frames)),
        ev=lambda w: PLAN[w.exp].cfg["eval"],
        dataset=lambda w: PLAN[w.exp].cfg["data"]["dataset"],
        cache=lambda w: PLAN[w.exp].path(L.feature_cache),
        floor=lambda w: PLAN[w.exp].floor_option(int(w.frames)),
    shell:
        "pvdm --threads {resources.cpu_threads} fvd --real {params.real} --fake {params.fake} --frames {wildcards.frames} "
        "--num-videos {params.num} --selector {params.ev[real_selector]} "
        "--seed {params.ev[seed]} --covariance {params.ev[covariance]} --resize {params.ev[resize]} "
        "--bootstrap {params.ev[bootstrap]} {params.floor} --dataset {params.dataset} "
        "--split {params.ev[real_split]} --cache-dir {params.cache} --out {output} > {log} 2>&1"


rule eval_is:
    input:
        samples=L.sample_card.replace("{kind}", "model"),
        c3d=lambda w: PLAN[w.exp].c3d_archives(),
    output:
        L.inception,
    log:
        f"{L.logs}/eval_is{{frames}}.log",
    benchmark:
        f"{L.benchmarks}/eval_is{{frames}}.tsv"
    wildcard_constraints:
        frames="[0-9]+",
    conda:
        "../envs/pvdm.yaml"
    threads: PLAN.threads("eval_fvd")
    resources:
        **PLAN.resources("eval_fvd"),
    params:
        numerics=lambda w: PLAN[w.exp].numerics("eval_fvd"),
        fake=lambda w: PLAN[w.exp].path(L.sample_clips, kind="model", frames=w.frames),
        num=lambda w: PLAN[w.exp].fvd_count(int(w.frames)),
        ev=lambda w: PLAN[w.exp].cfg["eval"],
        dataset=lambda w: PLAN[w.exp].cfg["data"]["dataset"],
    shell:
        "pvdm --threads {resources.cpu_threads} is --fake {params.fake} --num-videos {params.num} --frames {wildcards.frames} "
        "--splits {params.ev[is_splits]} --c3d-dir {params.ev[c3d_dir]} --dataset {params.dataset} "
        "--out {output} > {log} 2>&1"
