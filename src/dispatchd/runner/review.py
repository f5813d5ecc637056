"""Reviewers as agents (docs/review.md): what a review handler sees and returns, and the
Aegis convention that turns any command's output into a verdict.

A review task (`kind` review) carries the work under review in its context (`review`:
the task's id, title, prompt, result, summary, the agent that did it and the cycle). A
review handler gets it as `UnderReview` and returns a verdict: a `ReviewVerdict`, a
`(verdict, feedback)` pair, a bool (approved or not), a mapping with `verdict` and
`feedback`, or text in the Aegis convention. The worker completes the review task with
`{"verdict": "approved" | "rejected", "feedback": ...}`, which the broker applies to the
task under review.

The Aegis convention (seed 003, pattern 4): a line `VERDICT: APPROVED` or
`VERDICT: REJECTED` and the feedback after `NOTES:`. An output with no verdict line fails
the review attempt (the review goes back to its queue; the work stays in review).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatchd.client.models import Task
from dispatchd.runner.adapters import AgentAdapter, Invocation, Outcome, failed
from dispatchd.runner.process import ProcessResult

__all__ = [
    "NO_VERDICT",
    "ReviewAdapter",
    "ReviewVerdict",
    "UnderReview",
    "as_verdict",
    "parse_aegis",
]

FEEDBACK_LIMIT = 20_000
NO_VERDICT = (
    "the reviewer gave no verdict: its output has no `VERDICT: APPROVED` or "
    "`VERDICT: REJECTED` line"
)

# The verdict line, possibly dressed in markdown (`**VERDICT: APPROVED**`, `# Verdict:`).
_VERDICT = re.compile(r"^[\s>*#_`-]*VERDICT\s*:\s*[*_`]*\s*(APPROVED|REJECTED)\b", re.I | re.M)
_NOTES = re.compile(r"^[\s>*#_`-]*NOTES\s*:[*_`]*[ \t]*", re.I | re.M)


@dataclass(frozen=True)
class ReviewVerdict:
    """A reviewer's answer: approved or not, and the feedback for the agent that did it."""

    approved: bool
    feedback: str | None = None

    @classmethod
    def approve(cls, feedback: str | None = None) -> ReviewVerdict:
        return cls(True, feedback)

    @classmethod
    def reject(cls, feedback: str | None = None) -> ReviewVerdict:
        return cls(False, feedback)

    @property
    def verdict(self) -> str:
        return "approved" if self.approved else "rejected"

    def as_result(self) -> dict[str, Any]:
        """The review task's result, as the broker takes it."""
        feedback = self.feedback[:FEEDBACK_LIMIT] if self.feedback else self.feedback
        return {"verdict": self.verdict, "feedback": feedback}


@dataclass(frozen=True)
class UnderReview:
    """The work a review task is about, as its context carries it."""

    task_id: str
    title: str
    prompt: str
    result: Any
    summary: str | None
    worker: str | None
    cycle: int
    previous_feedback: str | None
    # The review task itself (its own prompt asks for the Aegis convention's answer).
    review_task: Task = field(repr=False)

    @classmethod
    def of(cls, task: Task) -> UnderReview:
        raw = task.context.get("review")
        work: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        cycle = work.get("cycle")
        previous = work.get("previous_feedback")
        return cls(
            task_id=str(work.get("task_id") or task.review_of or ""),
            title=str(work.get("title") or task.title),
            prompt=str(work.get("prompt") or ""),
            result=work.get("result"),
            summary=work.get("summary") if isinstance(work.get("summary"), str) else None,
            worker=work.get("worker") if isinstance(work.get("worker"), str) else None,
            cycle=cycle if isinstance(cycle, int) else 1,
            previous_feedback=previous if isinstance(previous, str) else None,
            review_task=task,
        )


def parse_aegis(text: str) -> ReviewVerdict | None:
    """The verdict in an output that follows the Aegis convention (its last verdict line
    counts), with the text after `NOTES:` as feedback; None when it has no verdict line."""
    verdicts = list(_VERDICT.finditer(text))
    if not verdicts:
        return None
    approved = verdicts[-1].group(1).upper() == "APPROVED"
    notes = _NOTES.search(text)
    feedback: str | None = None
    if notes is not None:
        after = text[notes.end() :]
        # The notes run to the end, less a verdict line that follows them.
        kept = [line for line in after.splitlines() if not _VERDICT.match(line)]
        feedback = "\n".join(kept).strip().strip("*_`").strip() or None
    return ReviewVerdict(approved, feedback)


def as_verdict(value: Any) -> ReviewVerdict | None:
    """A review handler's return value as a verdict; None when it is not one."""
    match value:
        case ReviewVerdict():
            return value
        case bool():
            return ReviewVerdict(value)
        case str():
            return parse_aegis(value) or _named(value, None)
        case (verdict, feedback) if feedback is None or isinstance(feedback, str):
            if isinstance(verdict, bool):
                return ReviewVerdict(verdict, feedback)
            return _named(verdict, feedback) if isinstance(verdict, str) else None
        case Mapping():
            feedback = value.get("feedback")
            verdict = value.get("verdict")
            if feedback is not None and not isinstance(feedback, str):
                return None
            return _named(verdict, feedback) if isinstance(verdict, str) else None
    return None


def _from_mapping(value: Any) -> ReviewVerdict | None:
    return as_verdict(value) if isinstance(value, Mapping) else None


def _named(verdict: str, feedback: str | None) -> ReviewVerdict | None:
    match verdict.strip().lower():
        case "approved" | "approve":
            return ReviewVerdict(True, feedback)
        case "rejected" | "reject":
            return ReviewVerdict(False, feedback)
    return None


@dataclass(frozen=True)
class ReviewAdapter:
    """Runs a reviewer command with another adapter (`base`) and reads its answer in the
    Aegis convention: the run's result (its result file, or its output) must hold a
    verdict line; a result file may also hold `{"verdict", "feedback"}` as JSON."""

    base: AgentAdapter

    def argv(self, inv: Invocation) -> list[str]:
        return self.base.argv(inv)

    def prompt(self, task: Task, prompt: str) -> str:
        return self.base.prompt(task, prompt)

    def outcome(self, inv: Invocation, result: ProcessResult) -> Outcome:
        outcome = self.base.outcome(inv, result)
        if not outcome.ok:
            return outcome
        value = outcome.result
        verdict = parse_aegis(value) if isinstance(value, str) else _from_mapping(value)
        if verdict is None and result.stdout_tail:
            verdict = parse_aegis(result.stdout_tail)
        if verdict is None:
            return failed(NO_VERDICT, context=outcome.context)
        summary = f"{verdict.verdict}: {verdict.feedback}" if verdict.feedback else verdict.verdict
        return Outcome(
            ok=True, result=verdict.as_result(), summary=summary[:200], context=outcome.context
        )
