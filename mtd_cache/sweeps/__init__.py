"""The sweep stage: the paper's plan (``plan``), its execution on one machine, Ray or Slurm (``execute``),
and the report over the run records (``report``, ``figures``)."""
