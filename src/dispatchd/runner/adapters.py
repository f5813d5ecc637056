"""Agent adapters: how a task becomes a command line, and how the run becomes a task outcome.

`PassThrough` suits any command: the prompt is its last argument, and the result is what it
wrote to `DISPATCH_RESULT_FILE`, else the tail of its standard output. `ClaudeCode` drives
Claude Code style CLIs in print mode with JSON output: it records the session id on the
task's context, with the host it ran on, and resumes that session on a retry or after a
rejected review when the task runs on that host again, with the reviewer's feedback in the
prompt.

A result is kept well under the broker's 1 MiB body limit: a result file beyond
`RESULT_FILE_LIMIT` is reported as its head plus a note saying so. Error texts are at most
`ERROR_LIMIT` characters and never empty.

Route arguments and prompt templates take the placeholders `{id}`, `{title}`, `{prompt}`,
`{model}` and `{feedback}` (see `fill`); other braces are left as they are.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dispatchd.client.models import Task
from dispatchd.runner.process import ProcessResult

__all__ = [
    "AgentAdapter",
    "ClaudeCode",
    "Invocation",
    "Outcome",
    "PassThrough",
    "adapter_for",
    "fill",
]

# The broker accepts errors up to 20 000 characters and summaries up to 2 000, and request
# bodies up to 1 MiB by default.
ERROR_LIMIT = 16_000
SUMMARY_LIMIT = 200
# Bytes of a result file reported; beyond it, its head and a note.
RESULT_FILE_LIMIT = 512 * 1024
# Bytes of a result once encoded in the report's JSON body (escapes can make text grow).
RESULT_JSON_LIMIT = 640 * 1024

_PLACEHOLDER = re.compile(r"\{(id|title|prompt|model|feedback)\}")


@dataclass(frozen=True)
class Invocation:
    """One run of a route's command for a task. `prompt` is the final prompt text."""

    task: Task
    command: Sequence[str]
    args: Sequence[str]
    prompt: str
    result_file: Path


@dataclass(frozen=True)
class Outcome:
    """What to report for the task. `context` is merged into the task's context."""

    ok: bool
    result: Any = None
    summary: str | None = None
    error: str | None = None
    retryable: bool = True
    context: Mapping[str, Any] | None = None
    # What the run cost, when the agent says: {"usd", "input_tokens", "output_tokens"}.
    cost: Mapping[str, float | int] | None = None


class AgentAdapter(Protocol):
    def argv(self, inv: Invocation) -> list[str]:
        """The full argument list: the command, its arguments and the prompt."""
        ...

    def prompt(self, task: Task, prompt: str) -> str:
        """The prompt to send, built from the route's prompt (may add review feedback)."""
        ...

    def outcome(self, inv: Invocation, result: ProcessResult) -> Outcome:
        """The task's outcome from how the process ended."""
        ...


def feedback_of(task: Task) -> str:
    """The reviewer's feedback from the last rejection, or ""."""
    value = task.context.get("feedback")
    return value if isinstance(value, str) else ""


def fill(template: str, task: Task, prompt: str) -> str:
    """Replace the placeholders `{id}`, `{title}`, `{prompt}`, `{model}`, `{feedback}`."""
    values = {
        "id": task.id,
        "title": task.title,
        "prompt": prompt,
        "model": task.model or "",
        "feedback": feedback_of(task),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _uses_prompt(args: Sequence[str]) -> bool:
    return any("{prompt}" in arg for arg in args)


def _clip_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def error_text(error: str | None) -> str:
    """An error as reported: its last `ERROR_LIMIT` characters, never empty."""
    text = (error or "").strip()
    return _clip_tail(text, ERROR_LIMIT) if text else "the agent failed (no error text)"


def failed(
    error: str | None,
    *,
    retryable: bool = True,
    context: Mapping[str, Any] | None = None,
    cost: Mapping[str, float | int] | None = None,
) -> Outcome:
    """A failed outcome with its error text clipped by `error_text`."""
    return Outcome(
        ok=False, error=error_text(error), retryable=retryable, context=context, cost=cost
    )


def json_size(value: Any) -> int | None:
    """Bytes of `value` in a JSON request body; None when it cannot be sent as JSON."""
    try:
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return len(body.encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        return None


def _longest(fits: Callable[[int], bool], high: int) -> int:
    """The largest n in 0..high for which `fits(n)` holds (it holds for all n below it)."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _file_head(data: bytes, size: int) -> str:
    """The longest head of a result file's bytes that, with a note saying it was cut, stays
    within `RESULT_JSON_LIMIT` once encoded."""

    def text(length: int) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        head = decoder.decode(data[:length])  # an unfinished last character is held back
        kept = length - len(decoder.getstate()[0])
        amount = f"{kept // 1024} KiB" if kept % 1024 == 0 else f"{kept} bytes"
        return f"{head}\n\n[result file truncated: {size} bytes, first {amount} kept]"

    def fits(length: int) -> bool:
        encoded = json_size(text(length))
        return encoded is not None and encoded <= RESULT_JSON_LIMIT

    length = min(len(data), RESULT_FILE_LIMIT)
    return text(length if fits(length) else _longest(fits, length))


def output_result(text: str) -> str:
    """Text taken from the agent's output as a result, cut to its tail when its encoded form
    exceeds `RESULT_JSON_LIMIT`."""
    text = text.encode("utf-8", errors="replace").decode("utf-8")  # no lone surrogates
    if (json_size(text) or 0) <= RESULT_JSON_LIMIT:
        return text

    def tail(length: int) -> str:
        return f"[output truncated: last {length} characters kept]\n\n{text[len(text) - length :]}"

    return tail(_longest(lambda n: (json_size(tail(n)) or 0) <= RESULT_JSON_LIMIT, len(text)))


def first_line(value: Any) -> str | None:
    """A short summary: the first non-empty line of a text result, or a result's "summary"."""
    if isinstance(value, Mapping) and isinstance(value.get("summary"), str):
        value = value["summary"]
    if not isinstance(value, str):
        return None
    for line in value.splitlines():
        if line := line.strip():
            return line if len(line) <= SUMMARY_LIMIT else line[: SUMMARY_LIMIT - 1] + "…"
    return None


def read_result_file(path: Path) -> Any:
    """The agent's result file, parsed as JSON when it is JSON; None when missing or empty.

    A file beyond `RESULT_FILE_LIMIT` bytes (or one whose text grows beyond
    `RESULT_JSON_LIMIT` once encoded) is reported as text: its head, and a note giving the
    file's size and how much of it was kept.
    """
    try:
        with path.open("rb") as f:
            data = f.read(RESULT_FILE_LIMIT + 1)
            size = max(os.fstat(f.fileno()).st_size, len(data))
    except OSError:
        return None
    if len(data) > RESULT_FILE_LIMIT:
        return _file_head(data, size)
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return None
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError):
        value = text
    encoded = json_size(value)
    if encoded is not None and encoded <= RESULT_JSON_LIMIT:
        return value
    if value is not text and (json_size(text) or 0) <= RESULT_JSON_LIMIT:
        return text  # JSON that cannot be sent as it is (e.g. 1e999), as the text it was
    return _file_head(data, size)


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def failure_message(result: ProcessResult) -> str:
    """The error for a process that exited non-zero: its exit code and last error output."""
    tail = result.stderr_tail.strip() or result.stdout_tail.strip()
    head = _exit_description(result.exit_code)
    if not tail:
        return f"{head} (no output)"
    return _clip_tail(f"{head}: {tail}", ERROR_LIMIT)


def abnormal_outcome(result: ProcessResult) -> Outcome | None:
    """The outcome of a run that did not end on its own: never started, stopped, timed out."""
    if result.spawn_error is not None:
        return failed(result.spawn_error, retryable=False)
    if result.stopped:
        return failed(f"stopped: {result.stop_reason or 'on request'}")
    if result.timed_out:
        how = "KILL" if result.killed else "TERM"
        limit = result.timeout_s if result.timeout_s is not None else result.duration_s
        error = f"timed out after {limit:g} s (stopped with {how})"
        tail = result.stderr_tail.strip()
        return failed(f"{error}\n{tail}" if tail else error)
    return None


@dataclass(frozen=True)
class PassThrough:
    """Any command: `command + args`, the prompt appended unless the args place `{prompt}`."""

    def argv(self, inv: Invocation) -> list[str]:
        args = [fill(arg, inv.task, inv.prompt) for arg in inv.args]
        tail = [] if _uses_prompt(inv.args) else [inv.prompt]
        return [*inv.command, *args, *tail]

    def prompt(self, task: Task, prompt: str) -> str:
        return prompt

    def outcome(self, inv: Invocation, result: ProcessResult) -> Outcome:
        abnormal = abnormal_outcome(result)
        if abnormal is not None:
            return abnormal
        if result.exit_code != 0:
            return failed(failure_message(result))
        value = read_result_file(inv.result_file)
        if value is None:
            value = output_result(result.stdout_tail.strip()) or None
        return Outcome(ok=True, result=value, summary=first_line(value))


_PRINT_FLAGS = ("-p", "--print")
_RESUME_FLAGS = ("-r", "--resume", "-c", "--continue")


def _has_option(args: Sequence[str], names: Sequence[str]) -> bool:
    return any(arg in names or arg.startswith(tuple(f"{n}=" for n in names)) for arg in args)


def last_result_message(output: str) -> dict[str, Any] | None:
    """The CLI's final `{"type": "result", ...}` object, tolerating other lines before it."""
    candidates = [output.strip(), *reversed(output.splitlines())]
    for text in candidates:
        text = text.strip()
        if not text.startswith("{"):
            continue
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("type") == "result":
            return value
    return None


@dataclass(frozen=True)
class ClaudeCode:
    """Claude Code style CLIs: `claude --output-format json [--resume <id>] -p <prompt>`.

    The session id from the JSON output is returned in the outcome's context (key
    `session_id`, with `session_host`, the host it ran on, plus cost and turns under
    `claude`). A task that holds a session id and is on a retry (attempt > 1) or carries
    review feedback resumes that session, provided it runs on the session's host (the CLI
    keeps its sessions locally); elsewhere it starts a new one. A session recorded without
    a host is resumed.
    """

    fallback: PassThrough = PassThrough()
    host: str = field(default_factory=socket.gethostname)

    def resume_id(self, task: Task) -> str | None:
        session = task.context.get("session_id")
        if not isinstance(session, str) or not session:
            return None
        host = task.context.get("session_host")
        if host is not None and host != self.host:
            return None
        return session if task.attempt > 1 or feedback_of(task) else None

    def argv(self, inv: Invocation) -> list[str]:
        args = [fill(arg, inv.task, inv.prompt) for arg in inv.args]
        options: list[str] = []
        if not _has_option(inv.args, ("--output-format",)):
            options += ["--output-format", "json"]
        session = self.resume_id(inv.task)
        if session is not None and not _has_option(inv.args, _RESUME_FLAGS):
            options += ["--resume", session]
        tail = [] if _has_option(inv.args, _PRINT_FLAGS) else ["-p"]
        if not _uses_prompt(inv.args):
            tail.append(inv.prompt)
        return [*inv.command, *options, *args, *tail]

    def prompt(self, task: Task, prompt: str) -> str:
        feedback = feedback_of(task)
        if not feedback or feedback in prompt:
            return prompt
        return (
            "Your previous result for this task was rejected in review. Reviewer feedback:\n"
            f"{feedback}\n\nRevise your work to address it. The task:\n{prompt}"
        )

    def outcome(self, inv: Invocation, result: ProcessResult) -> Outcome:
        abnormal = abnormal_outcome(result)
        if abnormal is not None:
            return abnormal
        message = last_result_message(result.stdout_tail)
        if message is None:
            return self.fallback.outcome(inv, result)
        context = _session_context(message, self.host)
        cost = cost_of(message)
        text = message.get("result")
        subtype = message.get("subtype")
        if result.exit_code == 0 and not message.get("is_error") and subtype == "success":
            value = read_result_file(inv.result_file)
            if value is None and isinstance(text, str):
                value = output_result(text.strip()) or None
            return Outcome(
                ok=True, result=value, summary=first_line(value), context=context, cost=cost
            )
        if not message.get("is_error") and subtype == "success":
            return failed(failure_message(result), context=context, cost=cost)
        detail = text if isinstance(text, str) and text.strip() else None
        errors = message.get("errors")
        if detail is None and isinstance(errors, list) and errors:
            detail = "; ".join(str(e) for e in errors)
        if detail is None:
            detail = result.stderr_tail.strip() or None
        error = f"claude reported {subtype or 'an error'} ({_exit_description(result.exit_code)})"
        if detail:
            error = f"{error}: {detail.strip()}"
        return failed(error, context=context, cost=cost)


def cost_of(message: Mapping[str, Any]) -> dict[str, float | int] | None:
    """What the run cost, from the CLI's `total_cost_usd` and `usage` token counts (the
    run's totals: the attempt's cost when the session is new, and at least it on a
    resumed one, since the broker keeps the highest total an attempt reports)."""
    cost: dict[str, float | int] = {}
    usd = message.get("total_cost_usd")
    if isinstance(usd, int | float) and not isinstance(usd, bool) and usd >= 0:
        cost["usd"] = float(usd)
    usage = message.get("usage")
    if isinstance(usage, Mapping):
        for key in ("input_tokens", "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                cost[key] = value
    return cost or None


def _session_context(message: Mapping[str, Any], host: str) -> dict[str, Any] | None:
    context: dict[str, Any] = {}
    session = message.get("session_id")
    if isinstance(session, str) and session:
        context["session_id"] = session
        context["session_host"] = host
    stats = {
        key: message[key]
        for key in ("total_cost_usd", "num_turns", "duration_ms")
        if isinstance(message.get(key), int | float)
    }
    if stats:
        context["claude"] = stats
    return context or None


def adapter_for(command: Sequence[str]) -> AgentAdapter:
    """`ClaudeCode` when the executable is named `claude`, else `PassThrough`."""
    if command and Path(command[0]).name == "claude":
        return ClaudeCode()
    return PassThrough()
