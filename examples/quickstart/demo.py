"""The whole loop on one machine: the broker, a runner around a small agent, three tasks.

    make example          (or: .venv/bin/python examples/quickstart/demo.py)

It starts `dispatchd serve` on a fresh SQLite file and free ports, starts the runner of
runner.py, submits three tasks with the SDK, waits for them, prints what each agent did,
and stops everything.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dispatchd import Client

HERE = Path(__file__).parent
PROMPTS = [
    "Summarise the release notes for the ops channel",
    "Rename the staging bucket before Friday",
    "Check which services still log in plain text",
]


def start_broker(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "dispatchd", "serve"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")},
            "DISPATCH_DATA_DIR": data_dir,
            "DISPATCH_PORT": "0",
            "DISPATCH_METRICS_PORT": "0",
            "DISPATCH_LOG_LEVEL": "warning",
        },
        cwd=data_dir,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert broker.stdout is not None
    for line in broker.stdout:
        found = re.match(r"dispatchd listening on (http://\S+) \(API\)", line)
        if found:
            return broker, found.group(1)
    raise SystemExit("the broker did not start")


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        broker, url = start_broker(data_dir)
        runner = subprocess.Popen([sys.executable, str(HERE / "runner.py"), url])
        try:
            print(f"broker on {url}, runner started")
            with Client(url, agent_id="demo") as client:
                tasks = [
                    client.create_task(f"task {n}", prompt=p, capabilities=["words"])
                    for n, p in enumerate(PROMPTS, 1)
                ]
                for task in tasks:
                    done = client.get_task(task.id)
                    while done.status.value not in ("completed", "failed"):
                        time.sleep(0.1)
                        done = client.get_task(task.id)
                    print(f"{done.title}: {done.status.value} by {done.assignee}")
                    print(f"  result:   {done.result}")
                    print(f"  progress: {[p.message for p in done.progress_log]}")
                    print(f"  comments: {[c.body for c in done.comments]}")
        finally:
            runner.terminate()
            runner.wait(30)
            broker.terminate()
            broker.wait(30)
        print("runner and broker stopped")


if __name__ == "__main__":
    main()
