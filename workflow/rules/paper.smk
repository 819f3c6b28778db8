rule paper_table:
    input:
        metrics=lambda w: PLAN.table_inputs(),
        reported=REPORTED_NUMBERS,
    output:
        md=report(
            f"{L.table}.md",
            caption="../report/table1.rst",
            category="Table 1",
        ),
        csv=f"{L.table}.csv",
        tex=f"{L.table}.tex",
        json=f"{L.table}.json",
    log:
        f"{L.paper}/logs/paper_table.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        rows=lambda w: json.dumps(PLAN.table_rows()),
        out=subpath(output.md, parent=True),
    shell:
        "pvdm table --rows-json {params.rows:q} --reported {input.reported} --out {params.out} "
        "> {log} 2>&1"


rule paper_figures:
    input:
        ae=f"{L.gan}/history.json",
        diffusion=f"{L.diffusion}/metrics.json",
        samples=L.sample_card.replace("{kind}", "model"),
        autoencoder=lambda w: PLAN[w.exp].autoencoder_checkpoint,
        manifest=L.manifest,
    output:
        ae=report(
            L.figure.replace("{figure}", "autoencoder"),
            caption="../report/figures.rst",
            category="Figures",
        ),
        diffusion=report(
            L.figure.replace("{figure}", "diffusion"),
            caption="../report/figures.rst",
            category="Figures",
        ),
        strip=report(
            L.figure.replace("{figure}", "samples"),
            caption="../report/figures.rst",
            category="Figures",
        ),
        compare=report(
            L.figure.replace("{figure}", "compare"),
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{L.paper}/logs/paper_figures_{{exp}}_{{frames}}.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        root=lambda w: PLAN[w.exp].path("results/{exp}"),
        data=lambda w: PLAN[w.exp].path(L.data),
    shell:
        "(pvdm figures curves stage1={params.root}/autoencoder/stage1/log.jsonl "
        "gan={params.root}/autoencoder/gan/log.jsonl --logy --consecutive --title 'autoencoder ({wildcards.exp})' "
        "--out {output.ae} && "
        "pvdm figures curves diffusion={params.root}/diffusion/log.jsonl --keys loss --logy "
        "--title 'latent diffusion ({wildcards.exp})' --out {output.diffusion} && "
        "pvdm figures strip --videos {params.root}/samples/model{wildcards.frames}/clips --num-videos 6 "
        "--every 2 --title 'samples ({wildcards.exp})' --out {output.strip} && "
        "pvdm figures compare --real {params.data}/test --autoencoder {input.autoencoder} "
        "--generated {params.root}/samples/model{wildcards.frames}/clips --num-videos 3 --every 2 "
        "--title 'held-out, reconstructed, generated ({wildcards.exp})' --out {output.compare}) > {log} 2>&1"
