"""The analysis: plain functions over trajectories, never MLflow. By feature:

- ``pipeline.analyse_family``: one family of sibling runs, measured once (``family``), then each claim
  of the paper, one module of ``claims`` each (its metrics, report rows, figures, files);
- ``probes.registry.run_probes``: the probes of the loss landscape, one module of ``probes`` each;
- ``cross_family.analyse_families``: the paper's claim across the experiments.

Shared by the features: the numbers (``pca``, ``distances``, ``nullmodel``, ``increments``,
``walknull``, ``dynamics``, ``alignment``, ``permspec``, ``flatmodel``, ``derivatives``, ``plane``),
the report table (``report``) and the figures' style (``plotting``).
"""
