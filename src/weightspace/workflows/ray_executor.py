"""The suite's jobs as Ray tasks: ``siblings=ray`` and ``python -m weightspace launch ... --executor ray``.

Each child job of the pool (a training run, a family's analysis) becomes one Ray task that runs
the command the pool runs, ``python -m weightspace <cli>`` in a new interpreter, with the
environment given explicitly: the tracking URI (the workers need nothing else: the server serves
the artifacts), the run to enter (MLFLOW_RUN_ID) and the thread count. The driver creates and
closes the runs, as the pool does; jobs in this process (the pretraining, the cross-experiment
analysis) run here on a thread. Ray connects to the cluster at RAY_ADDRESS, or starts a local one.

A task's worker that dies is retried by Ray (``max_retries``): the new attempt enters the same
run, which resumes from its last stored checkpoint. A run that fails for its own reasons exits
non-zero: the task returns that code, so it fails once (``retry_exceptions=False``).
"""

from __future__ import annotations

import os
import sys
import time

from .pool import Job, Pool

RESOURCES_HELP = ("the resources of each Ray task: CPU threads, and the fraction of a GPU it takes on a "
                  "cluster with GPUs when the run's device is not cpu")
RESOURCES_ALLOWED = "CPUS or CPUS:GPU_FRACTION, CPUS an integer >= 1 and GPU_FRACTION in (0, 1], e.g. 1:0.25"
RETRIES = 3   # attempts after a worker died; a run's own failure is never retried
# Forwarded to the workers: where to log, what to cache where, and object-store credentials.
FORWARD = ("MLFLOW_", "WEIGHTSPACE_", "AWS_")
LOCAL_OBJECT_STORE = 200 * 1024 * 1024   # a local cluster's object store: tasks pass only exit codes


def parse_resources(text: str) -> tuple[int, float] | None:
    """(cpus, gpu fraction) from ``CPUS[:GPU_FRACTION]``; None when the text is not one."""
    cpus, _, gpu = str(text).strip().partition(":")
    try:
        n, g = int(cpus), float(gpu) if gpu else 0.25
    except ValueError:
        return None
    return (n, g) if n >= 1 and 0 < g <= 1 else None


def require_ray():
    """The ray module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("siblings=ray (and --executor ray) needs Ray: "
                          "pip install 'weightspace[ray]'") from None
    return ray


def connect():
    """Ray, connected: to RAY_ADDRESS, else a new local cluster of this machine's cores."""
    ray = require_ray()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            # "local": a new cluster, never one that another user's `ray start` left on this machine
            ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE)
    return ray


def worker_env(threads: int, run_id: str | None) -> dict[str, str]:
    """What a task's process needs from the driver, and nothing of the driver's machine."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD)}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("WEIGHTSPACE_THREADS", None)   # a file of the driver's pool
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WEIGHTSPACE_PROGRESS="0")
    import mlflow

    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    return env


def run_command(cli: list[str], env: dict[str, str]) -> int:
    """In the task: ``python -m weightspace <cli>``; its exit code. The process dies with the worker."""
    import subprocess

    base = {k: v for k, v in os.environ.items() if not k.startswith(FORWARD)}
    return subprocess.run([sys.executable, "-m", "weightspace", *cli], env={**base, **env},
                          preexec_fn=_die_with_parent).returncode


def _die_with_parent() -> None:
    # Ray does not end a crashed worker's children: a retry must not train beside an orphan.
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


class RayPool(Pool):
    """The pool's jobs, ``after`` and run closing, with child jobs as Ray tasks of ``resources``."""

    forks = False

    def __init__(self, client, jobs: list[Job], resources: tuple[int, float] = (1, 0.25), *,
                 gpu: bool = False, child_env: dict[str, str] | None = None, progress: bool = True):
        super().__init__(client, jobs, cores=1 << 20, child_env=child_env, poll=0.5, progress=progress)
        self.ray = connect()
        cpus, fraction = resources
        self.threads = cpus
        has_gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        self.remote = self.ray.remote(run_command).options(
            num_cpus=cpus, num_gpus=fraction if gpu and has_gpus else 0,
            max_retries=RETRIES, retry_exceptions=False)
        self.refs: dict[str, object] = {}

    def _start_ready(self) -> None:
        for job in self._startable():   # Ray queues what does not fit the cluster yet
            self._start(job, self.threads)

    def _lend(self) -> None:
        """Ray tasks keep the resources they declared."""

    def _start(self, job: Job, threads: int) -> None:
        if not job.child:
            return super()._start(job, threads)
        job.threads = job.base = threads
        job.started = time.monotonic()
        try:
            if job.before_start is not None:
                job.before_start(job)
            if job.cli is None:
                raise ValueError("a Ray task runs a weightspace command (cli), not argv")
            env = {**worker_env(threads, job.run_id), **self.child_env}
            self.refs[job.name] = self.remote.remote(list(job.cli), env)
        except Exception as e:  # noqa: BLE001 - the job fails, the suite goes on
            self._end(job, f"{type(e).__name__}: {e}")
            return
        self.running.append(job)

    def _reap(self) -> None:
        refs = [self.refs[j.name] for j in self.running if j.name in self.refs]
        ready = set(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for job in list(self.running):
            ref = self.refs.get(job.name)
            if ref is None:
                if job._thread is not None and not job._thread.is_alive():
                    self.running.remove(job)
                    e = job._error
                    self._end(job, None if e is None else f"{type(e).__name__}: {e}")
                continue
            if ref not in ready:
                continue
            self.running.remove(job)
            try:
                code, why = self.ray.get(ref), None
            except Exception as e:  # noqa: BLE001 - retries spent, or the cluster failed the task
                code, why = -1, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            self._close_run(job, code == 0)
            self._end(job, None if code == 0 else why or f"exit code {code}")

    def _stop_children(self) -> None:
        self._close_waiting_killed()
        for job in self.running:
            if job.name in self.refs:
                self.ray.cancel(self.refs[job.name], force=True)
                self._close_run(job, False, failed="KILLED")


def launch_main(argv: list[str]) -> int:
    """``launch ENTRY NAME=v1,v2 [--executor processes|ray] [--ray_resources CPUS:GPU] [--project DIR]
    [-- args]``: without ``--executor ray``, one ``mlflow run`` process per value, as before."""
    from ..tracking import store

    head, sep, tail = (argv[:argv.index("--")], ["--"], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [], [])
    opts = {"--executor": "processes", "--ray_resources": "1:0.25"}
    rest = []
    it = iter(head)
    for a in it:
        key, eq, value = a.partition("=")
        if key in opts:
            opts[key] = value if eq else next(it, "")
        else:
            rest.append(a)
    resources = parse_resources(opts["--ray_resources"])
    if opts["--executor"] not in ("processes", "ray") or resources is None:
        print("weightspace: error: launch: --executor is processes or ray, and --ray_resources "
              f"{RESOURCES_ALLOWED}", file=sys.stderr)
        return 2
    if opts["--executor"] == "processes":
        return store.main(["launch", *rest, *sep, *tail])
    parsed = store.parse_launch(rest + sep + tail)
    if parsed is None:
        return 2
    entry, name, values, extra, _ = parsed   # the tasks run this installation's entry points
    t0 = time.time()
    failed = launch(entry, name, values, extra, resources)
    print(f"weightspace: {len(values)} runs on Ray, {failed} failed, {time.time() - t0:.0f} s",
          file=sys.stderr)
    return 1 if failed else 0


def launch(entry: str, seed_name: str, seeds: list[str], extra: list[str],
           resources: tuple[int, float]) -> int:
    """One run of ``entry`` per seed, each a Ray task; ``extra``: ``-P k=v`` and the experiment flags
    of ``mlflow run``. Returns the number that failed."""
    from mlflow.tracking import MlflowClient

    from .entry_run import experiment_id

    params, exp = [f"--{seed_name}={{}}"], {}
    it = iter(extra)
    for a in it:
        if a == "-P":
            a = "-P" + next(it, "")
        if a.startswith("-P") and "=" in a:
            params.append("--" + a[2:].strip())
        elif a in ("--experiment-name", "--experiment-id"):
            exp[a] = next(it, "")
        else:
            raise ValueError(f"launch --executor ray: unsupported mlflow run argument {a!r}; "
                             "allowed: -P NAME=VALUE, --experiment-name NAME, --experiment-id ID")
    if "--experiment-name" in exp:
        os.environ["MLFLOW_EXPERIMENT_NAME"] = exp["--experiment-name"]
    if "--experiment-id" in exp:
        os.environ["MLFLOW_EXPERIMENT_ID"] = exp["--experiment-id"]
    client = MlflowClient()
    eid = experiment_id(client)
    jobs = [Job(f"{entry}-{seed_name}={s}", client.create_run(eid).info.run_id,
                cli=["run", entry, *(p.format(s) if i == 0 else p for i, p in enumerate(params))])
            for s in seeds]
    device = next((p.split("=", 1)[1] for p in params[1:] if p.startswith("--device=")), "auto")
    try:
        RayPool(client, jobs, resources, gpu=device != "cpu", progress=False).run()
    except RuntimeError as e:
        print(f"weightspace: {e}", file=sys.stderr)
    return sum(1 for j in jobs if j.run_id and client.get_run(j.run_id).info.status != "FINISHED")
