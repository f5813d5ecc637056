"""One agent subprocess: spawn it, stream and cap its output, time it out or stop it.

The command runs from an argument list (never through a shell) in its own process group, so
that stopping it reaches everything it started. Stopping, for any reason (timeout, `stop()`,
cancellation of the task awaiting `run()`), is the same sequence: TERM to the group, a grace
period, then KILL to whatever is left. When the agent exits on its own, anything it left
running in its group is stopped the same way, so no stray process outlives its task.

Standard output and standard error are read concurrently and only their last `output_cap`
bytes are kept, so a process that prints without end neither blocks on a full pipe nor grows
memory. New standard-output text goes to `on_output`, at most once per `progress_interval_s`.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AgentProcess", "OutputCallback", "ProcessResult", "ProcessSpec"]

log = logging.getLogger(__name__)

OutputCallback = Callable[[str], Awaitable[None]]

_CHUNK = 65536
_POLL_S = 0.05
# After the process group is gone, its pipes close at once; a pipe still open after this long
# is held by a process that left the group (e.g. through setsid), and is abandoned.
_DRAIN_S = 2.0
# The last output is handed to `on_output` when the process ends; a callback slower than this
# does not hold the result back.
_FINAL_FLUSH_S = 5.0
# While the timeout's clock is held, the supervisor looks again this often.
_HELD_RECHECK_S = 0.5


class Stopwatch:
    """The time that counts against a process's timeout. It stops while the agent waits for
    a person (its question through the local API), as the broker's run timeout does."""

    def __init__(self) -> None:
        self._holds = 0
        self._since = 0.0
        self._stopped_s = 0.0

    @property
    def held(self) -> bool:
        return self._holds > 0

    def hold(self) -> None:
        if self._holds == 0:
            self._since = time.monotonic()
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._stopped_s += time.monotonic() - self._since

    def stopped_s(self, now: float) -> float:
        """How long it has been held, up to `now` (`time.monotonic()`)."""
        return self._stopped_s + (now - self._since if self.held else 0.0)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. `env` is added to this process's environment. `clock`, when given,
    stops the timeout while it is held."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    timeout_s: float | None = None
    grace_s: float = 5.0
    output_cap: int = 65536
    clock: Stopwatch | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ProcessResult:
    """How the process ended.

    `exit_code` is negative when a signal ended the process (-15 for TERM, -9 for KILL) and
    None when it never ran: `spawn_error` then says why (e.g. the executable is missing).
    `killed` means TERM was not enough and the group was sent KILL. `stop_reason` is the
    reason given to `stop()`, or "timeout".
    """

    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    timed_out: bool
    stopped: bool
    killed: bool
    duration_s: float
    stop_reason: str | None = None
    spawn_error: str | None = None
    timeout_s: float | None = None


class _Tail:
    """The last `cap` bytes written to a stream."""

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self.data = bytearray()
        self.dropped = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.cap
        if excess > 0:
            del self.data[:excess]
            self.dropped = True

    def text(self) -> str:
        data = bytes(self.data)
        if self.dropped:
            # The cut may fall inside a UTF-8 sequence: skip its continuation bytes.
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


class _Pending:
    """Standard-output text not yet handed to `on_output`, at most `cap` characters."""

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self.text = ""

    def add(self, text: str) -> None:
        self.text = (self.text + text)[-self.cap :] if self.cap else ""

    def take(self) -> str:
        text, self.text = self.text, ""
        return text


class AgentProcess:
    """One run of an agent command. `run()` may be called once."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        on_output: OutputCallback | None = None,
        progress_interval_s: float = 2.0,
    ) -> None:
        if not spec.argv:
            raise ValueError("the command is empty")
        self.spec = spec
        self.on_output = on_output
        self.progress_interval_s = progress_interval_s
        self.pid: int | None = None
        self._started = False
        self._finished = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stop_reason: str | None = None
        self._killed = False
        self._stdout = _Tail(spec.output_cap)
        self._stderr = _Tail(spec.output_cap)
        self._pending = _Pending(spec.output_cap)
        self._output_ready = asyncio.Event()
        self._closing = asyncio.Event()

    async def stop(self, reason: str = "stopped") -> None:
        """Stop the process (TERM, grace, KILL) and wait until `run()` has finished."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_requested.set()
        if self._started:
            await self._finished.wait()

    async def run(self) -> ProcessResult:
        """Start the process and wait for it to end, time out or be stopped."""
        if self._started:
            raise RuntimeError("an AgentProcess runs only once")
        self._started = True
        started = time.monotonic()
        try:
            if self._stop_requested.is_set():
                return self._result(None, started, stopped=True)
            spawning = asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    *self.spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, **self.spec.env},
                    cwd=self.spec.cwd,
                    start_new_session=True,
                )
            )
            try:
                proc = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                await self._abandon(spawning)
                raise
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.filename is not None and str(exc.filename) != self.spec.argv[0]:
                    reason = f"{reason}: {exc.filename}"  # e.g. the working directory
                error = f"cannot start {self.spec.argv[0]!r}: {reason}"
                return self._result(None, started, spawn_error=error)
            self.pid = proc.pid
            return await self._supervise(proc, started)
        finally:
            self._finished.set()

    async def _abandon(self, spawning: asyncio.Future[asyncio.subprocess.Process]) -> None:
        """Cancelled while the process was being started: it may be running already, with
        children of its own. Let the start finish, then stop the whole group as a cancelled
        run does, instead of leaving it behind (asyncio would kill the leader alone)."""
        try:
            proc = await spawning
        except OSError:
            return  # nothing started
        self.pid = proc.pid
        self._stop_reason = self._stop_reason or "cancelled"
        try:
            await self._terminate(proc)
        finally:
            if proc.returncode is None or self._group_alive(proc.pid):
                self._signal(proc.pid, signal.SIGKILL)

    def _left(self, started: float) -> float | None:
        """Seconds until the timeout (None: none; while the clock is held, when to look
        again)."""
        timeout, clock = self.spec.timeout_s, self.spec.clock
        if timeout is None:
            return None
        now = time.monotonic()
        if clock is None:
            return max(0.0, timeout - (now - started))
        if clock.held:
            return _HELD_RECHECK_S
        return max(0.0, timeout - (now - started - clock.stopped_s(now)))

    async def _supervise(self, proc: asyncio.subprocess.Process, started: float) -> ProcessResult:
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(self._read(proc.stdout, self._stdout, forward=True)),
            asyncio.create_task(self._read(proc.stderr, self._stderr, forward=False)),
        ]
        emitter = asyncio.create_task(self._emit()) if self.on_output is not None else None
        timed_out = stopped = False
        try:
            exited = asyncio.create_task(self._leader_exit(proc))
            stop = asyncio.create_task(self._stop_requested.wait())
            try:
                while True:
                    left = self._left(started)
                    done, _ = await asyncio.wait(
                        {exited, stop}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                    if done or left is None or self._left(started) == 0:
                        break
            finally:
                exited.cancel()
                stop.cancel()
            if exited not in done:
                stopped = stop in done
                timed_out = not stopped
                if timed_out:
                    self._stop_reason = "timeout"
                await self._terminate(proc)
            elif self._group_alive(proc.pid):
                # The agent is gone but left something running in its group.
                await self._terminate(proc, leader_done=True)
            await self._drain(proc, readers)
            await self._flush(emitter)
        except asyncio.CancelledError:
            self._stop_reason = self._stop_reason or "cancelled"
            await self._terminate(proc)
            await self._drain(proc, readers)
            raise
        finally:
            # Reached early when cancelled again while stopping: nothing of the group may
            # outlive the run, even once its leader has exited.
            if proc.returncode is None or self._group_alive(proc.pid):
                self._signal(proc.pid, signal.SIGKILL)
            for task in [*readers, *([emitter] if emitter else [])]:
                task.cancel()
        return self._result(
            proc.returncode, started, timed_out=timed_out, stopped=stopped, killed=self._killed
        )

    def _result(
        self,
        exit_code: int | None,
        started: float,
        *,
        timed_out: bool = False,
        stopped: bool = False,
        killed: bool = False,
        spawn_error: str | None = None,
    ) -> ProcessResult:
        return ProcessResult(
            exit_code=exit_code,
            stdout_tail=self._stdout.text(),
            stderr_tail=self._stderr.text(),
            timed_out=timed_out,
            stopped=stopped,
            killed=killed,
            duration_s=time.monotonic() - started,
            stop_reason=self._stop_reason if (timed_out or stopped) else None,
            spawn_error=spawn_error,
            timeout_s=self.spec.timeout_s,
        )

    # -- stopping ---------------------------------------------------------------------------

    async def _terminate(
        self, proc: asyncio.subprocess.Process, *, leader_done: bool = False
    ) -> None:
        """TERM the group, wait up to the grace period for all of it to end, then KILL."""
        pgid = proc.pid
        if not self._signal(pgid, signal.SIGTERM):
            return
        deadline = time.monotonic() + self.spec.grace_s
        while time.monotonic() < deadline:
            if (leader_done or proc.returncode is not None) and not self._group_alive(pgid):
                return
            await asyncio.sleep(_POLL_S)
        if self._group_alive(pgid) or proc.returncode is None:
            self._killed = True
            log.info("process group %s ignored TERM; sending KILL", pgid, extra={"pid": pgid})
            self._signal(pgid, signal.SIGKILL)
        await self._leader_exit(proc)

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> bool:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether any process of the group still runs (zombies do not count)."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _linux_group_running(pgid)

    @staticmethod
    async def _leader_exit(proc: asyncio.subprocess.Process) -> None:
        # `proc.wait()` also waits for the pipes to close, which a child of the agent can keep
        # open after the agent itself has exited. The return code is set as soon as the agent
        # is reaped, with no event to wait on, so it is polled.
        while proc.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)

    # -- output -----------------------------------------------------------------------------

    async def _read(self, stream: asyncio.StreamReader, tail: _Tail, *, forward: bool) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await stream.read(_CHUNK):
            tail.add(chunk)
            if forward and self.on_output is not None:
                self._pending.add(decoder.decode(chunk))
                self._output_ready.set()
        if forward and self.on_output is not None:
            self._pending.add(decoder.decode(b"", final=True))
            self._output_ready.set()

    async def _drain(
        self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]
    ) -> None:
        _, pending = await asyncio.wait(readers, timeout=_DRAIN_S)
        if pending:
            log.warning("output pipes of process %s stay open; not reading further", proc.pid)
            # Process offers no public way to close its pipes; its transport does.
            transport = getattr(proc, "_transport", None)
            if isinstance(transport, asyncio.SubprocessTransport):
                transport.close()
            return
        await proc.wait()

    async def _emit(self) -> None:
        assert self.on_output is not None
        loop = asyncio.get_running_loop()
        last_call: float | None = None
        while True:
            await self._output_ready.wait()
            self._output_ready.clear()
            if last_call is not None and not self._closing.is_set():
                delay = last_call + self.progress_interval_s - loop.time()
                if delay > 0:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), delay)
            text = self._pending.take()
            if text:
                last_call = loop.time()
                try:
                    await self.on_output(text)
                except Exception:
                    log.exception("the output callback failed")
            if self._closing.is_set() and not self._pending.text:
                return

    async def _flush(self, emitter: asyncio.Task[None] | None) -> None:
        self._closing.set()
        self._output_ready.set()
        if emitter is not None:
            await asyncio.wait([emitter], timeout=_FINAL_FLUSH_S)


def _linux_group_running(pgid: int) -> bool:
    """Scan /proc for a live member of the group; where there is no /proc, assume one."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold anything, so split after its ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
