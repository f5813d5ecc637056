"""Agent adapters: how a task becomes a command line, and how the run becomes a task outcome.

`PassThrough` suits any command: the prompt is its last argument, and the result is what it
wrote to `DISPATCH_RESULT_FILE`, else the tail of its standard output. `ClaudeCode` drives
Claude Code style CLIs in print mode with JSON output: it records the session id on the
task's context and resumes that session on a retry or after a rejected review, with the
reviewer's feedback in the prompt.

Route arguments and prompt templates take the placeholders `{id}`, `{title}`, `{prompt}`,
`{model}` and `{feedback}` (see `fill`); other braces are left as they are.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

# The broker accepts errors up to 20 000 characters and summaries up to 2 000.
ERROR_LIMIT = 16_000
SUMMARY_LIMIT = 200
RESULT_FILE_LIMIT = 1_048_576

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
    """The agent's result file, parsed as JSON when it is JSON; None when missing or empty."""
    try:
        with path.open("rb") as f:
            data = f.read(RESULT_FILE_LIMIT + 1)
    except OSError:
        return None
    text = data[:RESULT_FILE_LIMIT].decode("utf-8", errors="replace")
    if not text.strip():
        return None
    if len(data) <= RESULT_FILE_LIMIT:
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


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
        return Outcome(ok=False, error=result.spawn_error, retryable=False)
    if result.stopped:
        return Outcome(ok=False, error=f"stopped: {result.stop_reason or 'on request'}")
    if result.timed_out:
        how = "KILL" if result.killed else "TERM"
        limit = result.timeout_s if result.timeout_s is not None else result.duration_s
        error = f"timed out after {limit:g} s (stopped with {how})"
        tail = result.stderr_tail.strip()
        return Outcome(
            ok=False, error=_clip_tail(f"{error}\n{tail}" if tail else error, ERROR_LIMIT)
        )
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
            return Outcome(ok=False, error=failure_message(result))
        value = read_result_file(inv.result_file)
        if value is None:
            value = result.stdout_tail.strip() or None
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
    `session_id`, plus cost and turns under `claude`). A task that holds a session id and is
    on a retry (attempt > 1) or carries review feedback resumes that session.
    """

    fallback: PassThrough = PassThrough()

    def resume_id(self, task: Task) -> str | None:
        session = task.context.get("session_id")
        if not isinstance(session, str) or not session:
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
        context = _session_context(message)
        text = message.get("result")
        subtype = message.get("subtype")
        if result.exit_code == 0 and not message.get("is_error") and subtype == "success":
            value = read_result_file(inv.result_file)
            if value is None:
                value = text.strip() if isinstance(text, str) and text.strip() else None
            return Outcome(ok=True, result=value, summary=first_line(value), context=context)
        if not message.get("is_error") and subtype == "success":
            return Outcome(ok=False, error=failure_message(result), context=context)
        detail = text if isinstance(text, str) and text.strip() else None
        errors = message.get("errors")
        if detail is None and isinstance(errors, list) and errors:
            detail = "; ".join(str(e) for e in errors)
        if detail is None:
            detail = result.stderr_tail.strip() or None
        error = f"claude reported {subtype or 'an error'} ({_exit_description(result.exit_code)})"
        if detail:
            error = f"{error}: {detail.strip()}"
        return Outcome(ok=False, error=_clip_tail(error, ERROR_LIMIT), context=context)


def _session_context(message: Mapping[str, Any]) -> dict[str, Any] | None:
    context: dict[str, Any] = {}
    session = message.get("session_id")
    if isinstance(session, str) and session:
        context["session_id"] = session
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
