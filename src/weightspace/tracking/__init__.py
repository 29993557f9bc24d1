"""Everything that talks to the MLflow tracking store.

* ``tags``: the tag names weightspace writes on its runs;
* ``uploader``: the ordered background uploader (retries, never loses a job);
* ``session``: the logging side of one training run (params, metrics, snapshots, checkpoint);
* ``runs``: the query API (find sibling runs, load their trajectories);
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

__all__ = ["TAG_ERROR", "TAG_ERROR_HISTORY", "TAG_EXPERIMENT", "TAG_GROUP", "TAG_MACHINE", "TAG_PARENT", "TAG_PRETRAIN",
           "TAG_RUN_KEY", "TAG_SOURCES", "Uploader", "machine", "retry", "sha256_file", "upload_timeout"]
