"""Runs ``run_phase1.main`` in this process, killing it with SIGKILL at a chosen point.

    python tests/_fault_driver.py KILL -- <run_phase1 arguments>

``KILL`` is ``none``, ``train:<step>`` (in the forward pass of the step after ``<step>``),
``save:<step>`` (while writing the weights of ``checkpoint-<step>``, leaving them truncated) or
``eval:<step>`` (inside the evaluation at ``<step>``). With ``$CETD_BATCH_LOG`` set, every
training step appends ``{"step", "batch"}`` (a hash of the batch tensors) to that file, so a
test can compare the data order of two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill: str) -> None:
    import cetd_phase1.model as model_lib
    from cetd_phase1.trainer import RetrievalTrainer

    where, _, at = kill.partition(":")
    step = int(at) if at else -1
    compute_loss, evaluate, save_model = (RetrievalTrainer.compute_loss,
                                          RetrievalTrainer.evaluate, model_lib.save_model)
    log = os.environ.get("CETD_BATCH_LOG")

    def logged_compute_loss(self, model, inputs, *args, **kwargs):
        if where == "train" and self.state.global_step == step:
            _die()
        if log:
            digest = hashlib.sha1()
            for key in sorted(inputs):
                digest.update(key.encode() + inputs[key].cpu().numpy().tobytes())
            with open(log, "a") as f:
                f.write(json.dumps({"step": self.state.global_step + 1,
                                    "batch": digest.hexdigest()}) + "\n")
        return compute_loss(self, model, inputs, *args, **kwargs)

    def killed_evaluate(self, *args, **kwargs):
        if where == "eval" and self.state.global_step == step:
            _die()
        return evaluate(self, *args, **kwargs)

    def killed_save_model(model, filename, *args, **kwargs):
        save_model(model, filename, *args, **kwargs)
        if where == "save" and f"checkpoint-{step}" in str(filename):
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)
            _die()

    RetrievalTrainer.compute_loss = logged_compute_loss
    RetrievalTrainer.evaluate = killed_evaluate
    model_lib.save_model = killed_save_model


if __name__ == "__main__":
    kill, rest = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    install(kill)
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_phase1", ROOT / "run_phase1.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.exit(script.main(rest))
