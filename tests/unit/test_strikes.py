"""`Strikes`: a record that fails POISON_AFTER times in a row is set aside, reported to the
job that owns it; a success starts its count again; a change releases it."""

from __future__ import annotations

import logging

from dispatchd.jobs import POISON_AFTER, JobStatus, Strikes

log = logging.getLogger("tests.strikes")


def test_a_record_is_set_aside_after_poison_after_failures_in_a_row() -> None:
    job = JobStatus("sweeper")
    strikes = Strikes(lambda: job, "task", "sweep", log)
    boom = RuntimeError("boom")
    for _ in range(POISON_AFTER - 1):
        assert not strikes.strike("t1", boom, "timing out")
    assert strikes.strike("t1", boom, "timing out")
    assert strikes.set_aside == {"t1": "RuntimeError: boom"}
    assert job.set_aside_count == 1


def test_a_success_starts_the_count_again_and_a_release_lets_it_be_tried() -> None:
    job = JobStatus("assigner")
    strikes = Strikes(lambda: job, "agent", "assign", log)
    boom = ValueError("no")
    for _ in range(POISON_AFTER - 1):
        strikes.failed("a1", boom, "reading the queue of")
    strikes.ok("a1")
    strikes.failed("a1", boom, "reading the queue of")
    assert strikes.set_aside == {}
    for _ in range(POISON_AFTER - 1):
        strikes.failed("a1", boom, "reading the queue of")
    assert "a1" in strikes.set_aside
    strikes.release("a1")
    assert strikes.set_aside == {}
    assert not strikes.strike("a1", boom, "reading the queue of")


def test_the_owners_current_job_is_told() -> None:
    # The runtime replaces an engine's job status with the one it supervises.
    owner = {"job": JobStatus("presence")}
    strikes = Strikes(lambda: owner["job"], "agent", "presence", log)
    supervised = owner["job"] = JobStatus("presence")
    for _ in range(POISON_AFTER):
        strikes.failed("a1", RuntimeError("x"), "marking offline")
    assert supervised.set_aside_count == 1
