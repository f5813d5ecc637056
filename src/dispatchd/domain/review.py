"""The review gate (docs/review.md): the review of a task's work is a task of its own.

When a task with a `reviewer` is completed it goes to `review`, and a review task is born
in the same commit: `kind` review, `review_of` the task, routed to the reviewer (the agent
named, or the agents with the capability named) and never to the agent that did the work.
It carries the work (prompt, result, summary) in its context and a prompt that asks for
the Aegis convention's answer (`VERDICT: APPROVED` / `VERDICT: REJECTED`, `NOTES:`).
Completing it with `{"verdict", "feedback"}` applies the verdict to the task.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dispatchd.domain import lifecycle
from dispatchd.domain.lifecycle import Change
from dispatchd.domain.models import ReviewerKind, Task, TaskKind, TaskStatus, Verdict
from dispatchd.errors import ValidationFailed

# Characters of the result quoted in a review task's prompt; the whole result is in its
# context. (A prompt is often passed as one command-line argument, which Linux caps at
# 128 KiB.)
PROMPT_RESULT_LIMIT = 32_000


def routed(task: Task) -> bool:
    """Whether completing `task` opens a review task (a reviewer is named); a task sent to
    review without a reviewer waits for a verdict posted on it."""
    return task.review and task.reviewer is not None


def open_review(task: Task, review_id: str, now: datetime) -> Change:
    """The birth of the review task for `task`, just moved to `review`."""
    assert task.status is TaskStatus.REVIEW and task.reviewer is not None
    cycle = task.review_cycles + 1
    by_agent = task.reviewer_kind is not ReviewerKind.CAPABILITY
    worker = task.assignee
    review = Task(
        id=review_id,
        title=f"Review: {task.title}"[:200],
        prompt=review_prompt(task, cycle),
        status=TaskStatus.PENDING,
        priority=task.priority,
        capabilities=() if by_agent else (task.reviewer,),
        requester=task.requester,
        created_at=now,
        updated_at=now,
        assigned_to=task.reviewer if by_agent else None,
        # The reviewer may belong to the same owner; the room is the worker's, not its.
        owner=task.owner,
        max_attempts=task.max_attempts,
        timeout_s=task.timeout_s,
        context={
            "review": {
                "task_id": task.id,
                "cycle": cycle,
                "title": task.title,
                "prompt": task.prompt,
                "result": task.result,
                "summary": task.summary,
                "worker": worker,
                "previous_feedback": task.context.get("feedback"),
            }
        },
        labels=("review",),
        kind=TaskKind.REVIEW,
        review_of=task.id,
        excluded_agent=worker,
    )
    born = lifecycle.create(review, now, blocked=False)
    data = {**born.event.data, "kind": TaskKind.REVIEW.value, "review_of": task.id, "cycle": cycle}
    return Change(born.task, dataclasses.replace(born.event, data=data))


def review_prompt(task: Task, cycle: int) -> str:
    result = task.result if isinstance(task.result, str) else _json(task.result)
    if len(result) > PROMPT_RESULT_LIMIT:
        result = result[:PROMPT_RESULT_LIMIT] + "\n[… the full result is in the context]"
    parts = [
        f"Review the work done for task {task.id} (review {cycle}).",
        "",
        f"Task: {task.title}",
    ]
    if task.prompt:
        parts += ["", "What was asked:", task.prompt]
    parts += ["", "Result:", result or "(none)"]
    if task.summary:
        parts += ["", "Summary:", task.summary]
    previous = task.context.get("feedback")
    if isinstance(previous, str) and previous:
        parts += ["", "Feedback of the previous review:", previous]
    parts += [
        "",
        "Answer with a line `VERDICT: APPROVED` or `VERDICT: REJECTED`, then a line",
        "`NOTES: ` with what must change (for a rejection) or any remarks.",
    ]
    return "\n".join(parts)


def _json(value: Any) -> str:
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        return str(value)


def verdict_of(result: Any) -> tuple[Verdict, str | None]:
    """The verdict a review task's completion carries: `{"verdict": "approved" |
    "rejected", "feedback": str}`. Anything else is a 422 naming the field."""
    if not isinstance(result, Mapping):
        raise ValidationFailed(
            'a review task is completed with {"result": {"verdict": "approved" | "rejected", '
            '"feedback": "…"}}',
            code="invalid_verdict",
            field="result",
        )
    raw = result.get("verdict")
    try:
        verdict = Verdict(raw.lower() if isinstance(raw, str) else "")
    except ValueError:
        raise ValidationFailed(
            f"verdict must be approved or rejected, not {str(raw)[:50]!r}",
            code="invalid_verdict",
            field="result.verdict",
        ) from None
    feedback = result.get("feedback")
    if feedback is not None and not isinstance(feedback, str):
        raise ValidationFailed(
            "feedback must be a string", code="invalid_verdict", field="result.feedback"
        )
    return verdict, feedback[:20_000] if feedback else feedback
