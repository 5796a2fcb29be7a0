"""The sweep stage: the paper's plan (``plan``), its jobs (``execute``) run on one machine, Ray or Slurm
(``executors``), and the report over the run records (``report``: statistics, tables, figures, costs)."""
