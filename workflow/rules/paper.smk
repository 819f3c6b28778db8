rule paper_table:
    input:
        metrics=lambda w: PIPELINE.table_inputs(),
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
        rows=lambda w: json.dumps(PIPELINE.table_rows()),
        out=subpath(output.md, parent=True),
    shell:
        "pvdm table --rows-json {params.rows:q} --reported {input.reported} --out {params.out} "
        "> {log} 2>&1"


rule paper_figures:
    input:
        ae=f"{L.gan}/history.json",
        diffusion=f"{L.diffusion}/metrics.json",
        samples=fill(L.sample_card, kind="model"),
        autoencoder=lambda w: PIPELINE[w.exp].autoencoder_checkpoint,
        manifest=L.manifest,
    output:
        **{
            figure: report(
                fill(L.figure, figure=figure),
                caption="../report/figures.rst",
                category="Figures",
            )
            for figure in FIGURES
        },
    log:
        f"{L.paper}/logs/paper_figures_{{exp}}_{{frames}}.log",
    conda:
        "../envs/pvdm.yaml"
    shell:
        "pvdm figures all --exp {wildcards.exp} --frames {wildcards.frames} "
        "--autoencoder {input.autoencoder} > {log} 2>&1"
