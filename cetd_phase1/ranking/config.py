"""How a trained encoder's scores become a ranking of an app's sections: the settings chosen on
validation data with the checkpoint, saved beside it as ``ranking_config.json``.

They are not part of the model (``CETDConfig``): the same weights rank with other settings, and
the served ranking, ``evaluate`` and the Trainer's validation all read them from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from cetd_phase1.errors import CETDError

#: The file a checkpoint folder keeps its ranking settings in.
RANKING_CONFIG = "ranking_config.json"


@dataclass(frozen=True)
class RankingConfig:
    """Ranking settings; every range check of them is here.

    Args:
        section_chunks: how many texts a long function or method is read as
            (:func:`~cetd_phase1.ranking.chunks.section_texts`; it scores as its best one);
            1 = its first ``max_code_length`` tokens only. Training reads the first text.
        late_interaction: share ``a`` of token-level MaxSim in the model's score,
            ``(1 - a) * cos(pooled) + a * maxsim(token vectors)``; 0 = the pooled cosine alone.
        hybrid_weight: the share of the model's z-scored scores beside BM25's in the served
            (hybrid) ranking, chosen on validation data together with ``late_interaction``.
        class_penalty: subtracted from a class's hybrid score (z-units): a class's text is its
            methods' code, so it matches what they match, while a feature-level requirement
            names the function that changed; 0 = none.
        shortlist: with late interaction, MaxSim reads only this many sections per
            requirement, the best by the first stage (the served score of the pooled cosines;
            the pooled cosine for the model alone) within a budget of token vectors, and a
            sample of the others, from which the rest's MaxSim is estimated, so a query's cost
            stops growing with the app (:meth:`~cetd_phase1.ranking.encode.Encoded.scores`);
            0 = every section.
    """

    section_chunks: int = 1
    late_interaction: float = 0.0
    hybrid_weight: float = 0.7
    class_penalty: float = 0.0
    shortlist: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.section_chunks, bool) or not isinstance(self.section_chunks, int) \
                or self.section_chunks < 1:
            raise CETDError(f"section_chunks must be an integer >= 1 (1 = the first "
                            f"max_code_length tokens only), got {self.section_chunks!r}")
        for name in ("late_interaction", "hybrid_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise CETDError(f"{name} must be in [0, 1], got {value!r}")
        if isinstance(self.shortlist, bool) or not isinstance(self.shortlist, int) \
                or self.shortlist < 0:
            raise CETDError(f"shortlist must be an integer >= 0 (0 = every section), got "
                            f"{self.shortlist!r}")
        if not isinstance(self.class_penalty, (int, float)) or \
                not 0.0 <= self.class_penalty < float("inf"):
            raise CETDError(f"class_penalty must be a number >= 0, got {self.class_penalty!r}")

    def override(self, **values: Any) -> "RankingConfig":
        """A copy with the values that are not ``None`` replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def save(self, folder: str | Path) -> Path:
        """Write ``ranking_config.json`` into ``folder`` (atomically)."""
        from cetd_phase1.atomic import atomic_write_text

        path = Path(folder) / RANKING_CONFIG
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "RankingConfig":
        """The settings saved in ``folder``; the defaults for a folder without them (a plain
        backbone, the untrained baseline)."""
        path = Path(folder) / RANKING_CONFIG
        known = {f.name for f in fields(cls)}
        if not path.is_file():
            return cls(**_older_checkpoint_settings(Path(folder), known))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CETDError(f"{path}: unreadable ranking settings ({err})") from None
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else data
            raise CETDError(f"{path}: unknown ranking settings {extra}; known: "
                            f"{', '.join(sorted(known))}")
        try:
            return cls(**data)
        except CETDError as err:
            raise CETDError(f"{path}: {err}") from None


def _older_checkpoint_settings(folder: Path, known: set[str]) -> dict[str, Any]:
    """The ranking settings a checkpoint saved before they had a file of their own kept in its
    ``config.json``, so such a checkpoint still ranks as it was chosen to."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(config, dict) or config.get("model_type") != "cetd_retriever":
        return {}
    return {k: v for k, v in config.items() if k in known}
