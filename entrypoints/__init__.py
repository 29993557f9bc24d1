"""Thin MLflow entry points: each one hands its argv to ``weightspace.cli.run_entry``.

The package itself is installed (``pip install -e .``: scripts/setup_env.sh, or conda.yaml).
"""
