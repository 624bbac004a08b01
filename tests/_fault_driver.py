"""Runs ``run_phase1.main`` in child processes, killing them with SIGKILL at chosen points.

    python tests/_fault_driver.py PLAN.json

``PLAN.json`` is a list of runs ``{"kill", "argv", "out", "batch_log"}``, run one after the
other; each run is a forked child of this process (which imports torch and transformers once,
so the runs start in a second) and writes its stdout and stderr to ``out``. ``kill`` is ``none``,
``train:<step>`` (in the forward pass of the step after ``<step>``), ``save:<step>`` (while
writing the weights of ``checkpoint-<step>``, leaving them truncated) or ``eval:<step>``
(inside the evaluation at ``<step>``). Every training step appends ``{"step", "batch"}`` (a hash
of the batch tensors) to ``batch_log``, so a test can compare the data order of two runs. The
return codes (``-9`` for a killed run) are printed as one JSON list.
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
    import cetd_phase1.modeling.model as model_lib
    from cetd_phase1.training.trainer import RetrievalTrainer

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


def _child(run: dict, script) -> int:
    fd = os.open(run["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["CETD_BATCH_LOG"] = run["batch_log"]
    install(run["kill"])
    try:
        return script.main(run["argv"])
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main(plan_file: str) -> None:
    import importlib.util

    import cetd_phase1.training.trainer  # noqa: F401  (the heavy imports, shared by every child)

    spec = importlib.util.spec_from_file_location("run_phase1", ROOT / "run_phase1.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    codes = []
    for run in json.loads(Path(plan_file).read_text()):
        pid = os.fork()
        if pid == 0:
            os._exit(_child(run, script))
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    print(json.dumps(codes))


if __name__ == "__main__":
    main(sys.argv[1])
