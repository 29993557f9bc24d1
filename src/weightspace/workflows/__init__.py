"""What each MLflow Project entry point does, once its parameters are parsed.

One module per entry point's work: ``training`` (single, different_init, same_init, clone),
``paper_suite`` (with ``suite_batch`` and ``pool``), ``tuning`` (with ``tune_study`` and
``tune_trial``) and ``analysis_runs`` (with ``probe_hook``); ``entry_run`` is the MLflow run
each one logs into. The entry points themselves are ``entrypoints/<name>.py`` in the project.
"""
