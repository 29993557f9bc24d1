"""The MLflow Project's entry points: ``python -m entrypoints.<name>`` (MLproject) runs ``main(argv)``.

Each ``main`` hands its argv to the function of ``weightspace.workflows`` that parses it and
does the entry point's work; ``weightspace.cli.run_main`` turns any error into one line and an
exit code. The package itself is installed (``pip install -e .``: scripts/setup_env.sh, or conda.yaml).
"""
