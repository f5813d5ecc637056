"""A runner around the small agent: every task needing `words` runs `agent.py`.

python examples/quickstart/runner.py [broker URL]
"""

import logging
import sys
from pathlib import Path

from dispatchd import Runner, Task

AGENT = Path(__file__).with_name("agent.py")

runner = Runner(
    command=[sys.executable, str(AGENT)],
    url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8600",
    agent_id="quickstart-runner",
    max_concurrent_agents=3,
    agent_timeout=60,
)


@runner.route(capabilities=["words"], timeout=30)
def count_words(task: Task) -> str:
    return task.prompt


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="runner: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every request
    runner.run()
