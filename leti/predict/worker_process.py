"""A worker process of `leti.predict.workers` (`python -m leti.predict.worker_process`): it
loads the estimator the parent names from the saved models and prices the batches it is sent.
The frames and the codec are `leti.predict.workers`'."""

from __future__ import annotations

import gc
import os
import sys

from leti.core.errors import LetiError
from leti.frontend.graph import GraphBytes
from leti.predict.estimator import Estimator
from leti.predict.workers import encode_answers, receive, receive_json, send, send_json


def _serve() -> None:
    """A worker's loop: the recipe (answered with the model version it loaded), then batches of
    (a JSON head, one frame of bytes per graph), each answered with one frame of MessagePack
    (`encode_answers`)."""
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not reach the pipe
    recipe = receive_json(inp)
    try:
        estimator = Estimator.load(recipe["soc"], recipe["runtime"], recipe["models_dir"])
    except LetiError as exc:
        send_json(out, {"error": str(exc)})
        out.flush()
        return
    estimator.answers.max_bytes = 0  # the parent keeps the answers
    # The loaded models live as long as the process: keep them out of every collection, so the
    # collector only walks what a batch makes (the pre-fork server does the same, server.py).
    gc.collect()
    gc.freeze()
    send_json(out, {"model_version": estimator.model_version})
    out.flush()
    while True:
        try:
            head = receive_json(inp)
            sources = [GraphBytes(receive(inp), stem, where) for stem, where in head["graphs"]]
        except EOFError:
            return
        answers = estimator.predict_many(
            sources, head["input_shapes"], max_layers=head["max_layers"]
        )
        send(out, encode_answers(answers))
        out.flush()


if __name__ == "__main__":
    _serve()
