"""One pool of CPU slots for a whole suite: training runs and analyses, as soon as they may start.

A ``Job`` is a child process (``python -m weightspace run ...`` entering an existing MLflow run
through MLFLOW_RUN_ID, exactly as ``mlflow run --run-id`` would) or work done in this process
on a thread (``call``). Jobs wait for the jobs named in ``after``; among the jobs that may
start, the first in the list starts first. Each job gets one slot (a core), or more when fewer
jobs are ready than slots are free, so no core idles while anything is left to do; a job keeps
its threads until it ends (OMP_NUM_THREADS of a child, torch's threads in this process).

The pool closes the runs its child processes entered: FINISHED on exit 0, FAILED otherwise. A
failed job does not stop the others; the jobs that wait for it never start, and their runs, if
already created, are marked FAILED with the reason. The error names every failed job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T


@dataclass
class Job:
    name: str
    run_id: str | None = None                   # the run a child process enters; the pool closes it
    argv: list[str] | None = None               # a child: python <argv>, e.g. ["-m", "weightspace", "run", ...]
    call: Callable[[], None] | None = None      # or work done here, on a thread
    after: tuple[str, ...] = ()
    before_start: Callable[[Job], None] | None = None   # e.g. create the run, once its inputs exist
    threads: int = 0
    started: float = 0.0
    ended: float = 0.0
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    def __post_init__(self):
        if (self.argv is None) == (self.call is None):
            raise ValueError(f"job {self.name}: give exactly one of argv and call")


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

    def _start_ready(self) -> None:
        while True:
            free = self.cores - self._busy()
            # torch's thread count is per process: one job at a time runs in this process
            ready = [j for j in self._ready() if j.argv is not None or not self._in_process_running()]
            if free <= 0 or not ready:
                return
            self._start(ready[0], threads_for(free, len(ready)))

    def _start(self, job: Job, threads: int) -> None:
        job.threads, job.started = threads, time.monotonic()
        try:
            if job.before_start is not None:
                job.before_start(job)
            if job.argv is not None:
                env = {**os.environ, **self.child_env, "OMP_NUM_THREADS": str(threads),
                       "MKL_NUM_THREADS": str(threads)}
                if job.run_id:
                    env["MLFLOW_RUN_ID"] = job.run_id
                job._proc = subprocess.Popen([sys.executable, *job.argv], env=env)
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
            if job._proc is not None and job._proc.poll() is not None:
                code = job._proc.returncode
                self.running.remove(job)
                self._close_run(job, code == 0)
                self._end(job, None if code == 0 else f"exit code {code}")
            elif job._thread is not None and not job._thread.is_alive():
                self.running.remove(job)
                e = job._error
                self._end(job, None if e is None else f"{type(e).__name__}: {e}")

    def _close_run(self, job: Job, ok: bool) -> None:
        if job.run_id:
            status = "FINISHED" if ok else "FAILED"
            T.retry(lambda: self.client.set_terminated(job.run_id, status), "closing run")

    def _end(self, job: Job, error: str | None) -> None:
        job.ended = time.monotonic()
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
                    if j.run_id:
                        self.client.set_tag(j.run_id, "weightspace.error", self.failed[j.name])
                        self.client.set_terminated(j.run_id, "FAILED")
                    self.bar.update(1)
                    changed = True

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Job]:
        """Run every job; raise RuntimeError naming the failed ones at the end."""
        try:
            while True:
                self._reap()
                self._skip_blocked()
                self._start_ready()
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
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} job(s) of the suite failed: "
                               + "; ".join(f"{k} ({v})" for k, v in self.failed.items()))
        return {j.name: j for j in self.jobs}

    def _stop_children(self) -> None:
        for job in self.running:
            if job._proc is not None and job._proc.poll() is None:
                job._proc.terminate()
        for job in self.running:
            if job._proc is not None:
                try:
                    job._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job._proc.kill()
                self._close_run(job, False)
