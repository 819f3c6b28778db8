# Everything a rule needs beyond its declaration comes from the experiment plan (pvdm.dag): paths,
# the checkpoints each stage reads, the sampler, sample counts, the table rows.
import json
import os
import sys

from pvdm.config import check_yaml as pvdm_check_yaml
from pvdm.config import config_source
from pvdm.config import resolve as pvdm_resolve
from pvdm.config import type_command_line_values
from pvdm.config import validate as pvdm_validate
from pvdm.dag import FIGURES, WILDCARDS, fill
from pvdm.dag import Layout as L
from pvdm.dag import Dag

# Our validation names the key and the file (and the --config values, when given) and fills in
# the schema's defaults. The files are read again strictly first: YAML that Snakemake accepts
# silently (a duplicated key, whose second value wins) is an error here.
for _f in workflow.configfiles:
    pvdm_check_yaml(_f)
# Nested --config values arrive as text ('20'); they get their YAML types first.
type_command_line_values(config, workflow.config_settings.config)
# `${...}` interpolations are resolved before validation, as `pvdm --config` does.
_resolved = pvdm_resolve(config, config_source(workflow.configfiles))
config.clear()
config.update(_resolved)
pvdm_validate(
    config, config_source(workflow.configfiles, workflow.config_settings.config)
)
PIPELINE = Dag(config)
# The paper's reported numbers ship with the workflow (absolute: works with --directory too).
REPORTED_NUMBERS = f"{workflow.basedir}/config/paper/pvdm_reported.csv"
# Jobs run the pvdm installed beside the Python that runs Snakemake: a venv's snakemake called
# without activating the venv works, and so do Slurm jobs (their Snakemake reads this file too).
os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
)
