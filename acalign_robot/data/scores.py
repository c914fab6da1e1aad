"""D4RL-style normalised scores: 100 * (R - R_random) / (R_expert - R_random).

The reference returns come from the dataset itself (Minari's ref_min_score / ref_max_score, recorded by
`acalign collect`: the uniform-random policy's and the expert behaviour policy's mean returns). D4RL's v2 constants
are kept as data (reference_scores.yaml, with their source) and shown beside ours for context only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["ReferenceScores", "d4rl_reference", "dataset_reference", "normalized_score"]


@dataclass(frozen=True)
class ReferenceScores:
    random: float
    expert: float
    source: str

    def normalize(self, episode_return: float) -> float:
        return normalized_score(episode_return, self)


def normalized_score(episode_return: float, reference: ReferenceScores) -> float:
    span = reference.expert - reference.random
    if span <= 0:
        raise ValueError(f"reference scores from {reference.source} have expert <= random ({reference})")
    return 100.0 * (episode_return - reference.random) / span


def dataset_reference(metadata: dict[str, Any]) -> ReferenceScores | None:
    """The reference scores a dataset carries, or None when it lacks an expert return."""
    low = metadata.get("ref_min_score", metadata.get("acalign_random_return"))
    high = metadata.get("ref_max_score", metadata.get("acalign_expert_return"))
    if low is None or high is None:
        return None
    return ReferenceScores(float(low), float(high), f"dataset {metadata.get('dataset_id', '?')}")


@cache
def _d4rl_table() -> dict[str, Any]:
    return yaml.safe_load(resources.files("acalign_robot.data").joinpath("reference_scores.yaml").read_text())


def d4rl_reference(env_id: str) -> ReferenceScores | None:
    """D4RL v2's constants for the env family of `env_id` (e.g. Hopper-v5 -> Hopper), for context only."""
    table = _d4rl_table()
    family = env_id.split("-")[0]
    entry = table["envs"].get(family)
    if entry is None:
        return None
    return ReferenceScores(float(entry["random"]), float(entry["expert"]), table["source"])
