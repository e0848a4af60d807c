# AG-REPA experiment workflow.
#
#   snakemake --cores 2                                  # embedded default (config/config.yaml)
#   snakemake --cores 2 --configfile config/test.yaml    # seconds-scale overlay (the tests)
#   snakemake --profile slurm results/table2.csv         # the paper's scale on SLURM
#
# Thin by design: the config is validated against workflow/schemas/config.schema.yaml
# (a misspelt key fails here, before any job, naming the key), configured paths on
# disk are checked, and every rule in workflow/rules/*.smk calls one `agrepa`
# subcommand with the same merged config, written once to {results_dir}/config.yaml.
import os
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")

# `agrepa` is the console script of this package; when Snakemake runs from a
# virtualenv that is not activated, put that environment's bin/ on PATH.
if shutil.which("agrepa") is None:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

include: "workflow/rules/common.smk"


check_paths(config)
CFG = write_merged_config(config)


include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules: all


rule all:
    input:
        final_targets(),
    default_target: True
