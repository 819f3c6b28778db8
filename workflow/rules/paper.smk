rule paper_table:
    input:
        metrics=lambda w: table_inputs(),
        reported=REPORTED_NUMBERS,
    output:
        md=report(
            "results/paper/table1.md",
            caption="../report/table1.rst",
            category="Table 1",
        ),
        csv="results/paper/table1.csv",
        tex="results/paper/table1.tex",
        json="results/paper/table1.json",
    log:
        "results/paper/logs/paper_table.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        rows=lambda w: table_rows_json(),
    shell:
        "pvdm table --rows-json {params.rows:q} --reported {input.reported} --out results/paper "
        "> {log} 2>&1"


rule paper_figures:
    input:
        ae="results/{exp}/autoencoder/gan/history.json",
        diffusion="results/{exp}/diffusion/metrics.json",
        samples="results/{exp}/samples/model{frames}/samples.json",
    output:
        ae=report(
            "results/paper/figures/{exp}_autoencoder_{frames}.png",
            caption="../report/figures.rst",
            category="Figures",
        ),
        diffusion=report(
            "results/paper/figures/{exp}_diffusion_{frames}.png",
            caption="../report/figures.rst",
            category="Figures",
        ),
        strip=report(
            "results/paper/figures/{exp}_samples_{frames}.png",
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "results/paper/logs/paper_figures_{exp}_{frames}.log",
    conda:
        "../envs/pvdm.yaml"
    params:
        root=lambda w: f"results/{w.exp}",
    shell:
        "(pvdm figures curves stage1={params.root}/autoencoder/stage1/log.jsonl "
        "gan={params.root}/autoencoder/gan/log.jsonl --logy --title 'autoencoder ({wildcards.exp})' "
        "--out {output.ae} && "
        "pvdm figures curves diffusion={params.root}/diffusion/log.jsonl --keys loss --logy "
        "--title 'latent diffusion ({wildcards.exp})' --out {output.diffusion} && "
        "pvdm figures strip --videos {params.root}/samples/model{wildcards.frames}/clips --num-videos 6 "
        "--every 2 --title 'samples ({wildcards.exp})' --out {output.strip}) > {log} 2>&1"
