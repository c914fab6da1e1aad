"""Phase 2 from a checkpoint file (`acalign align`): the reward scale carried from phase 1 or chosen here."""

import pytest

from acalign_robot.algo.aca import load_preset
from acalign_robot.algo.checkpoint import load_checkpoint, load_online_agent
from acalign_robot.algo.pipeline import EvalSchedule, align_checkpoint, pretrain
from acalign_robot.errors import InputError

SMALL = ("sac.hidden_sizes=[16, 16]", "sac.batch_size=32")


@pytest.fixture
def offline_checkpoint(tiny_hopper_dataset, tmp_path):
    config = load_preset("medium", (*SMALL, "sac.reward_scale=3"))
    out = tmp_path / "run" / "offline.pt"
    return pretrain([tiny_hopper_dataset], config, 40, out, seed=0, schedule=EvalSchedule(40, 1))


def test_aligning_at_another_reward_scale_than_phase_1s_is_refused(offline_checkpoint, tmp_path):
    refusal = r"sac.reward_scale is 1.0 but .* pre-trained at 3.0.*--set sac.reward_scale=3"
    with pytest.raises(InputError, match=refusal):
        align_checkpoint(offline_checkpoint, tmp_path / "aligned.pt", load_preset("medium", SMALL))
    assert not (tmp_path / "aligned.pt").exists()


@pytest.mark.parametrize("finetune", ["aca", "naive"])
def test_a_balanced_reward_scale_is_chosen_at_alignment_and_carried_online(offline_checkpoint, tmp_path, finetune):
    overrides = (*SMALL, "sac.reward_scale=3", "online_reward_scale=balanced", "reward_balance=1.5")
    aligned = align_checkpoint(
        offline_checkpoint, tmp_path / "aligned.pt", load_preset("medium", (*overrides, f"finetune={finetune}"))
    )
    choice = load_checkpoint(aligned, "online")["meta"]["reward_scale_choice"]
    assert choice["reward_scale"] * choice["reward_abs_mean"] == pytest.approx(1.5 * choice["nats_per_step"])
    assert choice["reward_scale"] != pytest.approx(3.0)
    agent, _, config = load_online_agent(load_checkpoint(aligned, "online"))
    assert config.sac.reward_scale == agent.config.reward_scale == pytest.approx(choice["reward_scale"])
