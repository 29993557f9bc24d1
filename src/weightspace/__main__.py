"""``python -m weightspace COMMAND``: the library's command line, beside the MLflow entry points.

    run ENTRY --name value ...      run an entry point in this process (as MLproject does)
    init-store                      create the tracking store's schema (before parallel use)
    launch ENTRY NAME=v1,v2 [--project DIR] [--executor ray [--ray_resources CPUS:GPU]] [-- mlflow run args]
                                    start one `mlflow run` per value, all at once (ray: one Ray task each)
    flags TUNE_RUN_ID               a tune run's best parameters as -P flags
    export RUN_ID DIR [--analysis-run-id ID]
                                    a run's metrics.json, report.md and figures/ as files
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    # Imported per command: init-store and export need neither torch's trainers nor Optuna.
    def run(a):
        if not a or a[0] not in ENTRY_POINTS:
            return _usage()
        from .cli import run_main
        return run_main(entry_main(a[0]), a[1:])

    def store(*head):
        from .tracking import store
        return lambda a: store.main([*head, *a])

    def launch(a):
        from .workflows.ray_executor import launch_main
        return launch_main(a)

    def flags(a):
        from .workflows.tuning import flags_main
        return flags_main(["flags", *a])

    def export(a):
        from .tracking import export
        return export.main(a)

    commands = {"run": run, "init-store": store("init"), "launch": launch, "flags": flags,
                "export": export}
    if not argv or argv[0] not in commands:
        return _usage()
    return commands[argv[0]](argv[1:]) or 0


ENTRY_POINTS = ("single", "different_init", "same_init", "clone", "paper", "analysis", "tune")


def entry_main(entry: str):
    """``main(argv)`` of an entry point, as ``entrypoints/<entry>.py`` calls it; only tune imports Optuna."""
    if entry == "tune":
        from .workflows import tuning
        return tuning.main
    from .workflows import analysis_runs, paper_suite, training
    mains = {"paper": paper_suite.main, "analysis": analysis_runs.main}
    return mains.get(entry) or (lambda argv: training.main(entry, argv))


def _usage() -> int:
    lines = __doc__.strip().splitlines()
    print(lines[0] + "\n\n" + "\n".join(lines[2:]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
