"""Opt-in plugin that finds which test leaked a resource: `pytest -p tests.support.leaks`.

A socket or transport left open is only reported when the garbage collector frees it,
which may be several tests later, in a test that has nothing to do with it (under
`filterwarnings = error` that test then fails). With this plugin the collector runs once
each test is over (its fixtures released), under the test's warning filters, and what it
frees is listed in the summary under the test that left it; the run then fails. Run it in
one process (`-n 0`: the list is kept by the process that ran the test), and with
`python -X tracemalloc=20 -m pytest` for where each object was made (PYTHONTRACEMALLOC
would also slow every server the tests start). It costs a full collection per test, so it
is not on by default.
"""

from __future__ import annotations

import gc
from collections.abc import Generator

import pytest

# pytest's own queue of what finalizers raised (it has no public handle for it).
from _pytest.unraisableexception import unraisable_exceptions

_found = pytest.StashKey[list[tuple[str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_found] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    # Inside the warnings plugin's wrapper: the test's filters still apply.
    result = yield
    gc.collect()
    queue = item.config.stash[unraisable_exceptions]
    while queue:
        meta = queue.popleft()
        item.config.stash[_found].append((item.nodeid, getattr(meta, "msg", repr(meta))))
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = terminalreporter.config.stash[_found]
    if not found:
        return
    terminalreporter.section("resources left by tests", red=True)
    for nodeid, message in found:
        terminalreporter.write_line(f"{nodeid}:\n{message}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.stash[_found] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
