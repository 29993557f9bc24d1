"""Export a FINISHED training run and its analysis: metrics.json, report.md, figures/*.png.

    python -m weightspace export RUN_ID docs/paper-scale/single [--analysis-run-id ID]

Every value in metrics.json is read from the tracking store (MLFLOW_TRACKING_URI); the
snapshots are never copied. Same as `python -m weightspace export`.
"""

import sys

from weightspace.tracking.export import main

if __name__ == "__main__":
    sys.exit(main())
