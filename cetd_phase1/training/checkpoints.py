"""Checkpoints that survive a crash, and a guard that stops training before a non-finite loss
corrupts the model.

A Trainer checkpoint is written file by file: model weights, optimizer, scheduler, RNG states
and, last of all, ``trainer_state.json``. A process killed mid-save (``kill -9``, OOM killer,
lost node) leaves a folder that looks like a checkpoint but lacks ``trainer_state.json``, holds
a truncated one, or holds a truncated weights file. ``transformers.trainer_utils
.get_last_checkpoint`` takes the newest ``checkpoint-*`` folder regardless; here a folder only
counts when its ``trainer_state.json`` parses and names its own step and every weights file's
safetensors header reads (see :func:`checkpoint_problem`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from cetd_phase1.errors import CETDError

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "head.safetensors")


class NonFiniteLossError(CETDError):
    """Training diverged: the loss became NaN or infinite."""

    exit_code = 3


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, else ``None``."""
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the Trainer checkpoint at ``path`` cannot be resumed from, or ``None`` if complete."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        return f"no {TRAINER_STATE} (interrupted while saving)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{TRAINER_STATE} is unreadable or truncated ({err})"
    step = checkpoint_step(path)
    if step is not None and state.get("global_step") != step:
        return f"{TRAINER_STATE} is for step {state.get('global_step')}, not {step}"
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        return f"no weights file ({' or '.join(WEIGHT_FILES[:2])})"
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (OSError, SafetensorError) as err:
            return f"{file.name} is corrupt ({err})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete ``checkpoint-*`` folder of ``output_dir`` (``None`` when there is
    none) and the newer, incomplete ones skipped on the way, each with its reason."""
    root = Path(output_dir)
    if not root.is_dir():
        return None, []
    folders = sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
                     key=checkpoint_step, reverse=True)
    skipped = []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first NaN/inf loss, before the optimizer applies it.

    The loss of every micro-batch is read from the model's output through a forward hook and
    checked once per optimizer step (one device sync), in every process together so that all
    stop at the same step. Before each evaluation or save the trainable weights are checked as
    well, so a non-finite model is never written as a checkpoint (nor picked as the best).
    Gradient overflow under fp16 is not checked: the library's loss scaler skips those steps.
    Raises :class:`NonFiniteLossError` naming the step and the last complete checkpoint.
    """

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._losses.clear()
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        loss = getattr(output, "loss", None)
        if module.training and loss is not None:
            self._losses.append(loss.detach().float().reshape(-1))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        losses, self._losses = self._losses, []
        if not losses:
            return
        values = torch.cat(losses)
        bad = values[~torch.isfinite(values)]
        if _any_process(bad.numel() > 0, values.device):
            value = bad[0].item() if bad.numel() else "non-finite on another process"
            self._stop(args, f"non-finite loss ({value}) at step {state.global_step + 1}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or not (control.should_save or control.should_evaluate):
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        if _any_process(not bool(finite), finite.device):
            self._stop(args, f"non-finite weights after step {state.global_step}, not saved")

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @staticmethod
    def _stop(args, what: str) -> None:
        last, _ = last_complete_checkpoint(args.output_dir)
        where = f"last good checkpoint: {last}" if last else "no complete checkpoint yet"
        raise NonFiniteLossError(f"training stopped: {what}; {where} (lower "
                                 f"training.learning_rate or check the data, then resume with "
                                 f"--resume-from-checkpoint last)")


def _any_process(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-ed over all processes of a distributed run (itself otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
