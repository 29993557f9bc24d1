"""The uploader's bounded queue: when the store is slower than training, training waits (back-pressure),
says so once, and loses or reorders nothing. Against a real sqlite store; a job is held back by an
event to play a slow store, nothing of MLflow is replaced."""

import logging
import threading
import time

import pytest

from conftest import make_store
from weightspace.tracking.uploader import Uploader


@pytest.fixture
def run(tmp_path):
    store = make_store("sqlite", tmp_path)
    client = store.client()
    return client, client.create_run(store.experiment_id()).info.run_id


def test_a_full_queue_makes_the_submitter_wait_warns_once_and_keeps_order(run, caplog):
    client, run_id = run
    up = Uploader(client, run_id, max_pending=2)
    gate, done = threading.Event(), []
    try:
        up.call(lambda: (gate.wait(30), done.append("slow")), "slow upload")  # taken by the worker, held
        deadline = time.monotonic() + 10
        while up._q.qsize() and time.monotonic() < deadline:  # wait until the worker holds it
            time.sleep(0.01)
        up.call(lambda: done.append(1), "one")
        up.call(lambda: done.append(2), "two")           # the queue (2) is full now, without waiting
        assert up.waits == 0 and up.pending == 3
        with caplog.at_level(logging.WARNING, logger="weightspace"):
            blocked = threading.Thread(target=lambda: up.call(lambda: done.append(3), "three"))
            blocked.start()
            blocked.join(0.5)
            assert blocked.is_alive() and done == []    # training would wait here
            gate.set()
            blocked.join(10)
            assert not blocked.is_alive()
            up.metrics({"train_loss": 0.5}, step=7)      # may wait again: no second warning
        up.flush()
        assert done == ["slow", 1, 2, 3] and up.waits >= 1
        warnings = [r.getMessage() for r in caplog.records if "slower than training" in r.getMessage()]
        assert len(warnings) == 1 and "WEIGHTSPACE_MAX_PENDING_UPLOADS=2" in warnings[0]
        assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [0.5]
    finally:
        gate.set()
        up.close()


def test_a_queue_of_one_still_stores_every_epoch_in_order(run):
    client, run_id = run
    up = Uploader(client, run_id, max_pending=1)
    try:
        for step in range(12):
            up.metrics({"train_loss": 1.0 / (step + 1)}, step=step)
        up.flush()
    finally:
        up.close()
    hist = sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(s, 1.0 / (s + 1)) for s in range(12)]


def test_the_default_bound_comes_from_the_environment(run, monkeypatch):
    client, run_id = run
    monkeypatch.setenv("WEIGHTSPACE_MAX_PENDING_UPLOADS", "5")
    up = Uploader(client, run_id)
    try:
        assert up.max_pending == 5 and up._q.maxsize == 5
    finally:
        up.close()
    monkeypatch.delenv("WEIGHTSPACE_MAX_PENDING_UPLOADS")
    up = Uploader(client, run_id)
    try:
        assert up.max_pending == 32
    finally:
        up.close()


def test_a_failed_upload_is_raised_at_flush_and_stops_later_submissions(run, monkeypatch):
    client, run_id = run
    monkeypatch.setenv("WEIGHTSPACE_UPLOAD_TIMEOUT", "0")
    up = Uploader(client, run_id, max_pending=2)

    def broken():
        raise OSError("disk full")
    try:
        up.call(broken, "checkpoint")
        with pytest.raises(RuntimeError, match="disk full"):
            up.flush()
        with pytest.raises(RuntimeError, match="an earlier upload failed"):
            up.call(lambda: None, "next")
    finally:
        up.error = None
        up.close()
