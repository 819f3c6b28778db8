# pvdm pipeline: one PIPELINE from raw data to the paper table. Logic lives in the `pvdm` package;
# every rule calls the `pvdm` command line. See README.md for the picture of the PIPELINE.
from snakemake.utils import min_version

min_version("9.0")


envvars:
    "PATH",


report: "workflow/report/workflow.rst"


# `--configfile F` replaces the embedded default instead of merging into it, so a paper config
# never inherits the Moving-MNIST experiment. `--config key=value` alone edits the default.
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/autoencoder.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/paper.smk"


# On a cluster these run on the submit host, not as jobs: the table and figures take seconds, and
# compute nodes often cannot reach the internet for the download.
localrules:
    paper_table,
    paper_figures,
    download_dataset,


wildcard_constraints:
    **WILDCARDS,
    exp="|".join(PIPELINE.experiments),


rule all:
    default_target: True
    input:
        PIPELINE.final_targets(),
