"""``agrepa plan``: what a target costs before anything runs (jobs from Snakemake's DAG, GPU-hours
and wall-clock estimated from the model's analytic FLOPs and the config's ``plan:`` section)."""
