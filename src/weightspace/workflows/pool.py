"""One pool of CPU slots for a whole suite: training runs and analyses, as soon as they may start.

A ``Job`` is a child process (``cli``: ``python -m weightspace run ...``, forked from a server
that imported weightspace once, entering an existing MLflow run through MLFLOW_RUN_ID exactly as
``mlflow run --run-id`` would; ``argv``: any Python command line) or work done in this process on
a thread (``call``). Jobs wait for the jobs named in ``after``; among the jobs that may
start, the first in the list starts first. Each job gets one slot (a core), or more when fewer
jobs are ready than slots are free. A core that frees while nothing waits is lent to a running
child marked ``elastic`` (its share is a number in a file it reads at each batch of
evaluations, see ``weightspace.threads``) and taken back as soon as a job is ready to start,
so no core idles while anything is left to do. Training runs are neither elastic nor shares:
they get ``fixed`` threads, because their numbers must not depend on when a core happened to
free. A job run in this process keeps its threads.

The pool closes the runs its child processes entered: FINISHED on exit 0, FAILED otherwise. A
failed job does not stop the others; the jobs that wait for it never start, and their runs, if
already created, are marked FAILED with the reason. The error names every failed job.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T
from ..threads import ENV as THREADS_ENV
from ..threads import lend_threads


@dataclass
class Job:
    name: str
    run_id: str | None = None                   # the run a child process enters; the pool closes it
    cli: list[str] | None = None                # a child: python -m weightspace <cli>, forked (see forked)
    argv: list[str] | None = None               # a child: python <argv>, a new interpreter
    call: Callable[[], None] | None = None      # or work done here, on a thread
    after: tuple[str, ...] = ()
    before_start: Callable[[Job], None] | None = None   # e.g. create the run, once its inputs exist
    elastic: bool = False                       # a child that adopts lent cores while it runs
    fixed: int = 0                              # threads it always gets (0: a share at its start)
    threads: int = 0                            # slots it holds now
    base: int = 0                               # slots it started with (what lending returns to)
    threads_file: str = ""
    started: float = 0.0
    _proc: subprocess.Popen | multiprocessing.process.BaseProcess | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    def __post_init__(self):
        if sum(x is not None for x in (self.cli, self.argv, self.call)) != 1:
            raise ValueError(f"job {self.name}: give exactly one of cli, argv and call")

    @property
    def child(self) -> bool:
        return self.call is None

    def exit_code(self) -> int | None:
        """The child's exit code, None while it runs."""
        if isinstance(self._proc, subprocess.Popen):
            return self._proc.poll()
        return self._proc.exitcode


def slots() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(free: int, ready: int) -> int:
    """Threads for the next job: a share of the free slots among the jobs ready to start."""
    return max(1, free // max(1, ready))


class Pool:
    forks = True   # cli jobs are forks of a server that imported weightspace once

    def __init__(self, client: MlflowClient, jobs: list[Job], cores: int | None = None, *,
                 child_env: dict[str, str] | None = None, poll: float = 0.2, progress: bool = True):
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        unknown = {a for j in jobs for a in j.after} - set(names)
        if unknown:
            raise ValueError(f"jobs wait for unknown jobs: {sorted(unknown)}")
        self.client, self.jobs, self.cores = client, jobs, cores or slots()
        self.child_env, self.poll = child_env or {}, poll
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}    # job name -> why
        self.running: list[Job] = []
        self.bar = tqdm(total=len(jobs), desc="suite", unit="job", disable=not progress, file=sys.stderr)
        self._tmp = tempfile.TemporaryDirectory(prefix="weightspace-pool-")
        if self.forks and CAN_FORK and any(j.cli is not None for j in jobs):
            forked()   # the server imports while the first jobs start

    # -- scheduling --------------------------------------------------------------------------------

    def _waiting(self) -> list[Job]:
        ended = self.done | set(self.failed)
        return [j for j in self.jobs if j.name not in ended and j not in self.running]

    def _ready(self) -> list[Job]:
        return [j for j in self._waiting() if all(a in self.done for a in j.after)]

    def _busy(self) -> int:
        return sum(j.threads for j in self.running)

    def _in_process_running(self) -> bool:
        return any(j.call is not None for j in self.running)

    def _startable(self) -> list[Job]:
        # torch's thread count is per process: one job at a time runs in this process
        return [j for j in self._ready() if j.child or not self._in_process_running()]

    def _start_ready(self) -> None:
        while True:
            free = self.cores - self._busy()
            ready = [j for j in self._startable() if min(j.fixed, self.cores) <= free]
            if free <= 0 or not ready:
                return
            job = ready[0]
            self._start(job, min(job.fixed, self.cores) or threads_for(free, len(ready)))

    def _lend(self) -> None:
        """Take lent cores back while a job waits to start; lend free cores when none does."""
        children = [j for j in self.running if j.threads_file]
        if self._startable():
            for j in children:
                if j.threads > j.base:
                    self._set_threads(j, j.base)
            return
        free = self.cores - self._busy()
        children.sort(key=lambda j: (j.threads, -j.started))   # the thinnest, then the newest first
        for k in range(free if children else 0):
            j = children[k % len(children)]
            self._set_threads(j, j.threads + 1)

    def _set_threads(self, job: Job, n: int) -> None:
        job.threads = n
        lend_threads(job.threads_file, n)

    def _start(self, job: Job, threads: int) -> None:
        job.threads = job.base = threads
        job.started = time.monotonic()
        try:
            if job.before_start is not None:
                job.before_start(job)
            if job.child:
                env = {**os.environ, **self.child_env, "OMP_NUM_THREADS": str(threads),
                       "MKL_NUM_THREADS": str(threads)}
                env.pop(THREADS_ENV, None)
                if job.elastic:
                    job.threads_file = os.path.join(self._tmp.name, f"threads-{self.jobs.index(job)}")
                    lend_threads(job.threads_file, threads)
                    env[THREADS_ENV] = job.threads_file
                if job.run_id:
                    env["MLFLOW_RUN_ID"] = job.run_id
                if job.cli is not None and CAN_FORK:
                    job._proc = forked().Process(target=_run_cli, args=(job.cli, env, threads), name=job.name)
                    job._proc.start()
                else:   # a new interpreter (also a weightspace command where there is no forkserver)
                    argv = job.argv if job.cli is None else ["-m", "weightspace", *job.cli]
                    job._proc = subprocess.Popen([sys.executable, *argv], env=env)
            else:
                job._thread = threading.Thread(target=self._call, args=(job,), name=job.name, daemon=True)
                job._thread.start()
        except Exception as e:  # noqa: BLE001 - the job fails, the pool goes on
            self._end(job, f"{type(e).__name__}: {e}")
            return
        self.running.append(job)

    def _call(self, job: Job) -> None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(job.threads)
        try:
            job.call()
        except BaseException as e:  # noqa: BLE001 - reported by the pool
            job._error = e
        finally:
            torch.set_num_threads(before)

    def _reap(self) -> None:
        for job in list(self.running):
            if job._proc is not None and job.exit_code() is not None:
                code = job.exit_code()
                self.running.remove(job)
                self._close_run(job, code == 0)
                self._end(job, None if code == 0 else f"exit code {code}")
            elif job._thread is not None and not job._thread.is_alive():
                self.running.remove(job)
                e = job._error
                self._end(job, None if e is None else f"{type(e).__name__}: {e}")

    def _close_run(self, job: Job, ok: bool, failed: str = "FAILED") -> None:
        if job.run_id:
            status = "FINISHED" if ok else failed
            T.retry(lambda: self.client.set_terminated(job.run_id, status), "closing run")

    def _end(self, job: Job, error: str | None) -> None:
        if error is None:
            self.done.add(job.name)
        else:
            self.failed[job.name] = error
            tqdm.write(f"[suite] {job.name} failed: {error}", file=sys.stderr)
        self.bar.update(1)

    def _skip_blocked(self) -> None:
        """Jobs that wait for a failed job never start; their runs, if created, say why."""
        changed = True
        while changed:
            changed = False
            for j in self._waiting():
                bad = [a for a in j.after if a in self.failed]
                if bad:
                    self.failed[j.name] = f"not started: {', '.join(bad)} failed"
                    self._close_unstarted(j, self.failed[j.name], "FAILED")
                    self.bar.update(1)
                    changed = True

    def _close_waiting_killed(self) -> None:
        for job in self._waiting():
            try:
                self._close_unstarted(job, "not started: the suite was interrupted", "KILLED")
            except Exception:  # noqa: BLE001 - the store may be what failed; the interrupt goes on
                pass

    def _close_unstarted(self, job: Job, why: str, status: str) -> None:
        """A job's run that never ran: ended ``status``, with the reason as its error tag."""
        if job.run_id:
            self.client.set_tag(job.run_id, T.TAG_ERROR, why)
            self.client.set_terminated(job.run_id, status)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every job; raise RuntimeError naming the failed ones at the end."""
        try:
            while True:
                self._reap()
                self._skip_blocked()
                self._lend()          # first take lent cores back for jobs that may start
                self._start_ready()
                self._lend()          # then lend what is still free
                if not self.running:
                    break
                time.sleep(self.poll)
            for j in self._waiting():  # only a cycle in ``after`` leaves jobs that can never start
                self._end(j, f"never started: waits in a cycle ({', '.join(j.after)})")
        except BaseException:
            self._stop_children()
            raise
        finally:
            self.bar.close()
            self._tmp.cleanup()
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} job(s) of the suite failed: "
                               + "; ".join(f"{k} ({v})" for k, v in self.failed.items()))

    def _stop_children(self) -> None:
        """Interrupted: end the running children and close every run KILLED, the never-started ones too."""
        self._close_waiting_killed()
        for job in self.running:
            if job._proc is not None and job.exit_code() is None:
                job._proc.terminate()
        for job in self.running:
            if job._proc is not None:
                _wait_or_kill(job._proc, 30)
                self._close_run(job, False, failed="KILLED")


def _wait_or_kill(proc, timeout: float) -> None:
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    else:
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()


# -- forked children --------------------------------------------------------------------------------
# A new interpreter imports torch, MLflow and weightspace before a job starts, a large share of a
# short suite's work when every job pays it. A forkserver imports them once;
# each job is then a fork of it: a fresh process with nothing run in it yet (no OpenMP team, no
# database connection), its environment and threads set before the command starts.

PRELOAD = ["weightspace.cli", "weightspace.workflows.training", "weightspace.workflows.analysis_runs",
           "weightspace.analysis.pipeline", "weightspace.analysis.probes.registry",
           "mlflow.store.tracking.sqlalchemy_store"]
_CTX = None
CAN_FORK = "forkserver" in multiprocessing.get_all_start_methods()   # not on Windows


def forked():
    """The forkserver context, its server started (once per process) with one thread per library."""
    global _CTX
    if _CTX is None:
        from multiprocessing import forkserver

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        # BLAS libraries size their pools when they load, in the server: one thread each there,
        # so a job's numpy never takes more than its share; torch's threads are set per job.
        keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        saved = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: "1" for k in keys})
        try:
            forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _CTX = ctx
    return _CTX


def _run_cli(args: list[str], env: dict[str, str], threads: int) -> None:
    """In the forked child: the environment a new process would have had, then the command."""
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    import runpy

    # Exactly what a new interpreter's `python -m weightspace <args>` runs; executed, not imported,
    # as the command line itself depends on the workflows that use this pool.
    sys.argv = ["weightspace", *args]
    runpy.run_module("weightspace", run_name="__main__", alter_sys=True)
