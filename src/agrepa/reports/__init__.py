"""Tables and figures, made only from the tidy CSVs the workflow writes (never from a model).

``agrepa.reports.probes``: Table 1 and Figure 1 (LASP vs FoG-A). The ``agrepa report``
subcommands live in ``agrepa.reports.cli``.
"""
