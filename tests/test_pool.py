"""The suite's pool of CPU slots: order, threads, failures and the runs it closes, with real processes."""

from __future__ import annotations

import json
import sys

import pytest

from weightspace.workflows.pool import Job, Pool, threads_for


def _child(tmp_path, name: str, seconds: float = 0.3, code: int = 0) -> list[str]:
    """A child that records its thread budget and its start and end times, then exits ``code``."""
    out = tmp_path / f"{name}.json"
    src = ("import json, os, sys, time; t0 = time.time(); time.sleep(%r); "
           "json.dump({'omp': os.environ['OMP_NUM_THREADS'], 'run': os.environ.get('MLFLOW_RUN_ID'), "
           "'t0': t0, 't1': time.time()}, open(%r, 'w')); sys.exit(%d)") % (seconds, str(out), code)
    return ["-c", src]


def _record(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.parametrize(("free", "ready", "want"), [(2, 1, 2), (2, 2, 1), (2, 5, 1), (4, 2, 2), (3, 2, 1),
                                                     (1, 1, 1), (0, 3, 1), (8, 3, 2)])
def test_threads_are_the_free_slots_shared_among_the_ready_jobs(free, ready, want):
    assert threads_for(free, ready) == want


def test_dependencies_are_respected_and_no_more_slots_than_cores_are_used(tmp_path):
    jobs = [Job("a", argv=_child(tmp_path, "a")), Job("b", argv=_child(tmp_path, "b")),
            Job("c", argv=_child(tmp_path, "c")), Job("d", argv=_child(tmp_path, "d"), after=("a", "b")),
            Job("e", argv=_child(tmp_path, "e", 0.1), after=("d", "c"))]
    Pool(None, jobs, cores=2, poll=0.02, progress=False).run()
    rec = {j.name: _record(tmp_path, j.name) for j in jobs}
    assert rec["d"]["t0"] >= max(rec["a"]["t1"], rec["b"]["t1"])
    assert rec["e"]["t0"] >= max(rec["c"]["t1"], rec["d"]["t1"])
    # never more threads at once than cores: sweep the start and end events
    starts = [(r["t0"], int(r["omp"])) for r in rec.values()]
    events = sorted(starts + [(r["t1"], -int(r["omp"])) for r in rec.values()], key=lambda ev: (ev[0], ev[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak <= 2
    # three ready at the start on two slots: one thread each; e, last, starts alone on both cores
    assert [rec[n]["omp"] for n in "abc"] == ["1", "1", "1"] and rec["e"]["omp"] == "2"


def test_a_lone_in_process_job_gets_every_core_and_torch_threads_are_restored(tmp_path):
    import torch

    seen = {}
    before = torch.get_num_threads()
    Pool(None, [Job("here", call=lambda: seen.update(n=torch.get_num_threads()))], cores=3, poll=0.01,
         progress=False).run()
    assert seen["n"] == 3 and torch.get_num_threads() == before


def test_a_failed_job_stops_only_what_waits_for_it(tmp_path):
    jobs = [Job("ok", argv=_child(tmp_path, "ok")), Job("bad", argv=_child(tmp_path, "bad", 0.05, code=3)),
            Job("after-bad", argv=_child(tmp_path, "after-bad"), after=("bad",)),
            Job("after-after", argv=_child(tmp_path, "after-after"), after=("after-bad",)),
            Job("after-ok", argv=_child(tmp_path, "after-ok"), after=("ok",)),
            Job("raises", call=lambda: 1 / 0)]
    pool = Pool(None, jobs, cores=2, poll=0.02, progress=False)
    with pytest.raises(RuntimeError) as e:
        pool.run()
    msg = str(e.value)
    assert msg.startswith("4 job(s) of the suite failed") and "bad (exit code 3)" in msg
    assert "raises (ZeroDivisionError: division by zero)" in msg
    assert "after-bad (not started: bad failed)" in msg
    assert "after-after (not started: after-bad failed)" in msg
    assert (tmp_path / "after-ok.json").exists() and not (tmp_path / "after-bad.json").exists()


def test_bad_job_lists_are_refused():
    with pytest.raises(ValueError, match="unknown jobs"):
        Pool(None, [Job("a", argv=["-c", "pass"], after=("nope",))], progress=False)
    with pytest.raises(ValueError, match="unique"):
        Pool(None, [Job("a", argv=["-c", "pass"]), Job("a", argv=["-c", "pass"])], progress=False)
    with pytest.raises(ValueError, match="exactly one of cli, argv and call"):
        Job("a")


def test_a_cycle_never_starts_and_is_reported():
    jobs = [Job("x", argv=["-c", "pass"], after=("y",)), Job("y", argv=["-c", "pass"], after=("x",))]
    with pytest.raises(RuntimeError, match="waits in a cycle"):
        Pool(None, jobs, cores=2, poll=0.01, progress=False).run()


def test_runs_are_closed_by_exit_code_and_blocked_runs_say_why(store, tmp_path):
    c = store.client()
    eid = c.get_experiment_by_name(store.experiment).experiment_id
    ok, bad, blocked = (c.create_run(eid).info.run_id for _ in range(3))
    jobs = [Job("ok", ok, argv=_child(tmp_path, "ok", 0.05)),
            Job("bad", bad, argv=_child(tmp_path, "bad", 0.05, 1)),
            Job("blocked", blocked, argv=_child(tmp_path, "blocked"), after=("bad",))]
    with pytest.raises(RuntimeError):
        Pool(c, jobs, cores=2, poll=0.02, progress=False).run()
    assert _record(tmp_path, "ok")["run"] == ok    # the child entered its run through MLFLOW_RUN_ID
    assert [c.get_run(r).info.status for r in (ok, bad, blocked)] == ["FINISHED", "FAILED", "FAILED"]
    assert c.get_run(blocked).data.tags["weightspace.error"] == "not started: bad failed"


def test_python_is_the_running_interpreter(tmp_path):
    # children run under this interpreter, so they see the same installed weightspace
    which = f"import sys; open({str(tmp_path / 'w')!r}, 'w').write(sys.executable)"
    Pool(None, [Job("which", argv=["-c", which])], cores=1, poll=0.01, progress=False).run()
    assert (tmp_path / "w").read_text() == sys.executable


def _elastic_child(tmp_path, name: str) -> list[str]:
    """A child that watches its thread share (the pool's file) and records each change as it sees it;
    it ends once it has all three cores (or after 120 s, which the test then reports)."""
    out = tmp_path / f"{name}.json"
    src = ("import json, os, time; p = os.environ['WEIGHTSPACE_THREADS_FILE']\n"
           "seen = []; end = time.time() + 120\n"
           "while time.time() < end and seen[-1:] != [3]:\n"
           "    try:\n"
           "        n = int(open(p).read())\n"
           "    except (OSError, ValueError):\n"
           "        n = None\n"
           "    if n is not None and (not seen or seen[-1] != n):\n"
           "        seen.append(n)\n"
           "        json.dump({'seen': seen, 'omp': os.environ['OMP_NUM_THREADS']}, open(%r + '.tmp', 'w'))\n"
           "        os.replace(%r + '.tmp', %r)\n"
           "    time.sleep(0.01)\n") % (str(out), str(out), str(out))
    return ["-c", src]


def _child_after(tmp_path, name: str, watched: str, changes: int) -> list[str]:
    """A child that ends once ``watched`` has recorded ``changes`` thread shares (at most 120 s)."""
    out, seen = tmp_path / f"{name}.json", tmp_path / f"{watched}.json"
    src = ("import json, os, time; end = time.time() + 120\n"
           "def seen():\n"
           "    try:\n"
           "        return len(json.load(open(%r))['seen'])\n"
           "    except (OSError, ValueError):\n"
           "        return 0\n"
           "while time.time() < end and seen() < %d:\n"
           "    time.sleep(0.01)\n"
           "json.dump({'omp': os.environ['OMP_NUM_THREADS']}, open(%r, 'w'))\n"
           ) % (str(seen), changes, str(out))
    return ["-c", src]


def test_free_cores_are_lent_to_an_analysis_and_taken_back_for_a_ready_job(tmp_path):
    # 3 cores. c ends first: nothing waits, so "ana" gets a second core. b's end makes d and e
    # ready: the lent core comes back for them. When they end, "ana" has all three. Each job ends
    # only once "ana" has seen what came before (no timing assumed).
    jobs = [Job("ana", argv=_elastic_child(tmp_path, "ana"), elastic=True),
            Job("b", argv=_child_after(tmp_path, "b", "ana", 2)),
            Job("c", argv=_child_after(tmp_path, "c", "ana", 1)),
            Job("d", argv=_child_after(tmp_path, "d", "ana", 3), after=("b",)),
            Job("e", argv=_child_after(tmp_path, "e", "ana", 3), after=("b",))]
    Pool(None, jobs, cores=3, poll=0.01, progress=False).run()
    ana = _record(tmp_path, "ana")
    seen = ana["seen"]   # d and e may end together (-> 3) or one after the other (-> 2, 3)
    assert ana["omp"] == "1" and seen[:3] == [1, 2, 1] and seen[3:] in ([3], [2, 3]), ana
    assert _record(tmp_path, "d")["omp"] == _record(tmp_path, "e")["omp"] == "1"
    assert "WEIGHTSPACE_THREADS_FILE" not in _child_env(tmp_path, jobs)


def _child_env(tmp_path, jobs) -> str:
    """What a non-elastic child sees: no threads file (it keeps its threads)."""
    probe = tmp_path / "env.txt"
    Pool(None, [Job("env", argv=["-c", f"import os; open({str(probe)!r}, 'w').write(' '.join(os.environ))"])],
         cores=1, poll=0.01, progress=False).run()
    return probe.read_text()


def test_fixed_threads_wait_for_enough_free_cores_and_never_change(tmp_path):
    jobs = [Job("one", argv=_child(tmp_path, "one", 0.3)), Job("two", argv=_child(tmp_path, "two"), fixed=2),
            Job("big", argv=_child(tmp_path, "big", 0.05), fixed=8)]   # more than the machine: capped
    Pool(None, jobs, cores=2, poll=0.01, progress=False).run()
    rec = {j.name: _record(tmp_path, j.name) for j in jobs}
    assert rec["two"]["omp"] == "2" and rec["two"]["t0"] >= rec["one"]["t1"] and rec["big"]["omp"] == "2"


def test_a_process_adopts_the_share_written_for_it(tmp_path, monkeypatch):
    import torch

    from weightspace.threads import ENV, adopt_threads, lend_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(ENV, raising=False)
        assert adopt_threads() == before                        # not in a pool: nothing changes
        f = tmp_path / "share"
        monkeypatch.setenv(ENV, str(f))
        assert adopt_threads() == before                        # no file yet
        lend_threads(str(f), 3)
        assert f.read_text() == "3" and adopt_threads() == 3 == torch.get_num_threads()
        f.write_text("garbage")
        assert adopt_threads() == 3                             # unreadable: keep what we have
        lend_threads(str(f), 1)
        assert adopt_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "new-interpreter"])
def test_weightspace_commands_run_with_their_own_environment(tmp_path, monkeypatch, fork):
    # init-store creates the schema where MLFLOW_TRACKING_URI (set for the child only) says;
    # an unknown command prints the usage and exits 2, and the pool reports that exit code.
    # Forked from the server, or (where there is no forkserver) in a new interpreter.
    from weightspace.workflows import pool as pool_module

    monkeypatch.setattr(pool_module, "CAN_FORK", fork)
    db = tmp_path / "forked.db"
    jobs = [Job("init", cli=["init-store"]), Job("unknown", cli=["no-such-command"])]
    pool = Pool(None, jobs, cores=2, poll=0.02, progress=False,
                child_env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    with pytest.raises(RuntimeError, match=r"1 job\(s\) of the suite failed: unknown \(exit code 2\)"):
        pool.run()
    assert db.stat().st_size > 0


INTERRUPTED = """
import sys, time
from mlflow.tracking import MlflowClient
from weightspace.workflows.pool import Job, Pool
uri, eid, pids = sys.argv[1], sys.argv[2], sys.argv[3]
c = MlflowClient(uri)
ids = [c.create_run(eid).info.run_id for _ in range(3)]
sleeper = ["-c", "import os, time; open(%r + '/' + str(os.getpid()), 'w').close(); time.sleep(60)" % pids]
jobs = [Job("a", ids[0], argv=sleeper), Job("b", ids[1], argv=sleeper),
        Job("c", ids[2], argv=sleeper, after=("a",))]
print(",".join(ids), flush=True)
Pool(c, jobs, cores=2, poll=0.05, progress=False).run()
"""


def test_an_interrupted_pool_ends_its_children_and_closes_every_run_killed(store, tmp_path):
    import os
    import signal
    import subprocess
    import time

    c = store.client()
    eid = c.get_experiment_by_name(store.experiment).experiment_id
    pids = tmp_path / "pids"
    pids.mkdir()
    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED, store.uri, eid, str(pids)], env=store.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ids = p.stdout.readline().strip().split(",")
    deadline = time.time() + 60
    while len(list(pids.iterdir())) < 2 and time.time() < deadline:   # a and b are running
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)                                      # Ctrl-C, to the pool only
    p.wait(timeout=60)
    assert p.returncode != 0
    for pid in (int(f.name) for f in pids.iterdir()):                 # no child left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    runs = [c.get_run(i) for i in ids]
    assert [r.info.status for r in runs] == ["KILLED", "KILLED", "KILLED"]
    assert runs[2].data.tags["weightspace.error"] == "not started: the suite was interrupted"
