"""One `leti evaluate` (SoC, runtime) evaluation in a process of its own:
`python -m leti.evaluate.eval_worker TASK_JSON OUT_DIR` (started by
`leti.evaluate.accuracy.evaluate_many`). It writes the evaluation as JSON to OUT_DIR (or the
leti error it met), each file through a temporary name and a rename, so the parent never reads
half a file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from leti.core.errors import LetiError, error_state
from leti.core.store import atomic_write_text
from leti.evaluate.accuracy import (
    ERROR_FILE,
    RESULT_FILE,
    EvalTask,
    evaluation_doc,
    json_value,
)


def main(argv: list[str]) -> int:
    task = EvalTask.from_doc(json.loads(argv[0]))
    out = Path(argv[1])
    try:
        result = task.run()
    except LetiError as exc:
        doc = {"error": type(exc).__name__, "message": str(exc), "state": error_state(exc)}
        atomic_write_text(out / ERROR_FILE, json.dumps(doc))
        return 1
    atomic_write_text(out / RESULT_FILE, json.dumps(evaluation_doc(result), default=json_value))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
