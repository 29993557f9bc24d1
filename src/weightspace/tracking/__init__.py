"""Everything that talks to the MLflow tracking store.

* ``tags``: the tag names weightspace writes on its runs;
* ``uploader``: the ordered background uploader (retries, never loses a job);
* ``trajectory_artifact``: a run's ``trajectory/`` files, the manifest schema, writer and reader;
* ``recorder``: one run's trajectory and weight statistics as it trains, for both of:
* ``record``: ``weightspace.record`` for any training loop;
* ``session``: the entry points' runs (params, the recorder, checkpoint and resume, final model);
* ``runs``: the query API (find sibling runs, load their trajectories);
* ``progress``: whether to draw progress bars;
* ``store``: creating a store's schema; ``export``: a run's results as plain files.
"""

from .tags import (
    TAG_ERROR,
    TAG_ERROR_HISTORY,
    TAG_EXPERIMENT,
    TAG_GROUP,
    TAG_MACHINE,
    TAG_PARENT,
    TAG_PRETRAIN,
    TAG_RUN_KEY,
    TAG_SOURCES,
    machine,
)
from .uploader import Uploader, retry, sha256_file, upload_timeout

__all__ = ["TAG_ERROR", "TAG_ERROR_HISTORY", "TAG_EXPERIMENT", "TAG_GROUP", "TAG_MACHINE", "TAG_PARENT",
           "TAG_PRETRAIN", "TAG_RUN_KEY", "TAG_SOURCES", "Uploader", "machine", "retry", "sha256_file",
           "upload_timeout"]
