"""Stage 8: attention caching over the ODE (seed 004, layer-selective attention caching).

Above evaluation (it scores cached runs with the evaluation metrics), below reports. The step
cache itself lives in the model (:mod:`agrepa.model.cache`); here: the cache plans
(:mod:`.plan`), their analytic FLOPs (:mod:`.flops`), the convergence / causal-freezing probe
(:mod:`.probe`), plan selection (:mod:`.selection`: LSAC, causal LSAC, controls), the quality
of a cached run (:mod:`.quality`) and the Table L1 runs (:mod:`.experiment`). The ``agrepa
lsac-*`` subcommands live in :mod:`agrepa.caching.cli`.
"""
