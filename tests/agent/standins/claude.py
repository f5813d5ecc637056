"""A stand-in for the Claude Code CLI in print mode (`claude -p ... --output-format json`).

It prints the CLI's documented result object: `type`, `subtype`, `is_error`, `duration_ms`,
`duration_api_ms`, `num_turns`, `result`, `stop_reason`, `session_id`, `total_cost_usd`,
`usage`, `permission_denials`, `uuid`. A new session gets a new id; `--resume <id>` keeps it.
The reply echoes what it received: `stand-in reply to: <prompt>`, plus ` (resumed <id>)`.

Environment:
- STANDIN_CLAUDE_RECORD: a file to append one JSON line per call with the argument list,
  the prompt, the resumed session and the environment variables DISPATCH_*.
- STANDIN_CLAUDE_MODE: `success` (default); `error_max_turns` / `error_during_execution`
  (an error result, exit 1); `garbage` (plain text, exit 0); `noise` (log lines before the
  JSON, as a CLI with warnings on standard output prints).
"""

from __future__ import annotations

import json
import os
import sys
import uuid


def parse(argv: list[str]) -> dict[str, object]:
    parsed: dict[str, object] = {"print": False, "format": "text", "resume": None, "rest": []}
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("-p", "--print"):
            parsed["print"] = True
        elif arg == "--output-format":
            parsed["format"] = next(it, "text")
        elif arg in ("-r", "--resume"):
            parsed["resume"] = next(it, None)
        elif arg in ("--model", "--agent", "--max-turns", "--permission-mode"):
            next(it, None)
        elif arg.startswith("-"):
            continue
        else:
            rest.append(arg)
    parsed["rest"] = rest
    return parsed


def main() -> int:
    args = parse(sys.argv[1:])
    rest = args["rest"]
    assert isinstance(rest, list)
    prompt = rest[-1] if rest else ""
    resume = args["resume"]
    mode = os.environ.get("STANDIN_CLAUDE_MODE", "success")
    record = os.environ.get("STANDIN_CLAUDE_RECORD")
    if record:
        env = {k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")}
        entry = {"argv": sys.argv[1:], "prompt": prompt, "resume": resume, "env": env}
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    if not args["print"]:
        print("Error: this stand-in only supports print mode (-p)", file=sys.stderr)
        return 1
    if not prompt:
        print("Error: Input must be provided either through stdin or as a prompt", file=sys.stderr)
        return 1
    if mode == "garbage":
        print("Something went sideways; here is plain text instead of JSON.")
        return 0

    session = resume if isinstance(resume, str) else str(uuid.uuid4())
    reply = f"stand-in reply to: {prompt}" + (f" (resumed {resume})" if resume else "")
    is_error = mode.startswith("error")
    message: dict[str, object] = {
        "type": "result",
        "subtype": mode if is_error else "success",
        "is_error": is_error,
        "duration_ms": 1532,
        "duration_api_ms": 1498,
        "num_turns": 7 if is_error else 1,
        "stop_reason": None if is_error else "end_turn",
        "session_id": session,
        "total_cost_usd": 0.0123,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 15635,
            "output_tokens": 48,
            "service_tier": "standard",
        },
        "permission_denials": [],
        "uuid": str(uuid.uuid4()),
    }
    if not is_error:
        message["result"] = reply
    if args["format"] != "json":
        print(reply)
        return 1 if is_error else 0
    if mode == "noise":
        print("[warn] settings file not found, using defaults")
        print("{not json either")
    print(json.dumps(message))
    return 1 if is_error else 0


if __name__ == "__main__":
    sys.exit(main())
