"""The reward scale across phases: phase 1 chooses it from the data (`reward_scale_from_data`) or takes the one
configured, and alignment refuses any other."""

import dataclasses

import pytest
import torch

from acalign_robot.algo.aca import load_preset
from acalign_robot.algo.checkpoint import load_checkpoint, load_online_agent
from acalign_robot.algo.pipeline import EvalSchedule, align_checkpoint, pretrain, probe_reward_scale
from acalign_robot.data.datasets import load_transitions
from acalign_robot.errors import InputError

SMALL = ("sac.hidden_sizes=[16, 16]", "sac.batch_size=32")


def _pretrain(dataset: str, out, *overrides: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_preset("medium", (*SMALL, *overrides))
        return pretrain([dataset], config, 40, out / "offline.pt", seed=0, schedule=EvalSchedule(40, 1))
    finally:
        torch.set_num_threads(threads)


def test_aligning_at_another_reward_scale_than_phase_1s_is_refused(tiny_hopper_dataset, tmp_path):
    offline = _pretrain(tiny_hopper_dataset, tmp_path / "run", "sac.reward_scale=3")
    refusal = r"sac.reward_scale is 1.0 but .* pre-trained at 3.0.*--set sac.reward_scale=3"
    with pytest.raises(InputError, match=refusal):
        align_checkpoint(offline, tmp_path / "aligned.pt", load_preset("medium", SMALL))
    with pytest.raises(InputError, match="pre-trained at a fixed sac.reward_scale"):
        align_checkpoint(
            offline, tmp_path / "aligned.pt", load_preset("medium", (*SMALL, "reward_scale_from_data=true"))
        )
    assert not (tmp_path / "aligned.pt").exists()


def test_phase_1_chooses_the_reward_scale_after_a_probe_and_every_phase_keeps_it(tiny_hopper_dataset, tmp_path):
    chosen = _pretrain(tiny_hopper_dataset, tmp_path / "chosen", "reward_scale_from_data=true", "reward_balance=1.5")
    payload = load_checkpoint(chosen, "offline")
    choice = payload["meta"]["reward_scale_choice"]
    assert choice["probe_updates"] == 20 and choice["probe_reward_scale"] == 1.0
    assert choice["reward_scale"] * choice["reward_abs_mean"] == pytest.approx(1.5 * choice["nats_per_step"])
    assert payload["config"]["sac"]["reward_scale"] == choice["reward_scale"] != 1.0

    # the probe's measurement, repeated on its own, and the run proper: the run a fixed scale gives, bit for bit
    config = load_preset("medium", (*SMALL, "reward_balance=1.5"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = probe_reward_scale(load_transitions([tiny_hopper_dataset]), config, 20, seed=0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert dataclasses.asdict(probe) == choice
    fixed = _pretrain(tiny_hopper_dataset, tmp_path / "fixed", f"sac.reward_scale={choice['reward_scale']!r}")
    for name, value in load_checkpoint(fixed, "offline")["agent"]["sac"]["actor"].items():
        torch.testing.assert_close(payload["agent"]["sac"]["actor"][name], value, rtol=0, atol=0)

    for finetune in ("aca", "naive"):
        aligned = align_checkpoint(
            chosen,
            tmp_path / f"aligned-{finetune}.pt",
            load_preset("medium", (*SMALL, "reward_scale_from_data=true", f"finetune={finetune}")),
        )
        agent, _, aligned_config = load_online_agent(load_checkpoint(aligned, "online"))
        assert aligned_config.sac.reward_scale == agent.config.reward_scale == choice["reward_scale"]
