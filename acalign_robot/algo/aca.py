"""Actor-Critic Alignment (ACA) for offline-to-online RL.

Paper: Zishun Yu and Xinhua Zhang, "Actor-Critic Alignment for Offline-to-Online Reinforcement Learning",
ICML 2023. This module follows ../shared/ALGORITHM.md (the project's statement of the method, checked against the
authors' reference implementation):
- phase 1 `OfflineACA.update`: SAC + maximum likelihood, with Z functions fitted so that log pi(a|s) + Z(s) is a
  soft evaluation of pi (order: temperature, critics, Z, actor, Polyak);
- phase 2 `align`: a one-off transformation: alpha := 1, pi_0 := frozen offline actor, residual critics R_i from
  Z_i with zeroed action columns (R(s,a) = Z(s) at the switch), Q = R + w L with L the soft-clipped prior;
- phase 3: plain SAC on that critic (sac.py with an `AlignmentPrior`), actor gradient-norm clip 0.25, w decaying
  linearly per update.

Deliberate deviations and switches (all in `ACAConfig`):
- `reset_residual_optimizer` (default true): R starts with a fresh Adam. The reference restores the whole offline
  checkpoint, so R inherits the offline critic's Adam moments; set false to reproduce that.
- `w_decay_k`: the w schedule is stated per gradient step: w <- max(w - w0 / (K * 1000), w_min).
- `z_target_alpha`: `learned` (reference) uses the learned alpha inside the Z target; `one` uses alpha = 1.
- `z_bootstrap` (default `polyak`): Z's target bootstraps from a Polyak-averaged copy of Z (the critics' tau), as
  every other TD target here does. The reference bootstraps from the current Z; on the Panda reach medium data (no
  terminal states, rewards 0.25-0.96) that diverged from the first updates (mean Z 4e4 at 1k updates, 2e8 at 30k,
  while the critic's Q stayed at 21-64), and the aligned critic's first online update had a loss of 1e14; with the
  copy Z followed Q (19 at 1k). `current` reproduces the reference (`fidelity: reference` sets it).
- `online_temperature` (default `auto`, ALGORITHM.md: auto-tuned from alpha = 1): `w` is a diagnostic that is not
  in ALGORITHM.md: alpha is not tuned but follows w, so that inside the clip the actor's objective stays
  E[R] - w KL(pi || pi_0) (with auto-tuning it also carries (alpha - w) H(pi)). Added to test why ACA dips on
  HalfCheetah (docs/results.md).
- Phase-3 temperature (ALGORITHM.md: alpha := 1 with a fresh optimiser, target -c|A|; docs/results.md measures
  each): `online_target_entropy: prior` sets the target to pi_0's own mean entropy on the dataset's states,
  measured at alignment, so that auto-tuning starts at its equilibrium instead of raising alpha when pi_0 is
  narrower than -c|A| (HalfCheetah); `online_initial_alpha: offline` starts from phase 1's alpha instead of 1;
  `carry_temperature_optimizer` keeps phase 1's Adam moments for log_alpha (the reference does).
- `actor_warmup_updates: N` (not in ALGORITHM.md; default 0): the first N phase-3 updates fit R alone while the
  actor stays pi_0 and alpha and w are held, so that R has learned some action dependence from online data before
  the actor follows it (the HalfCheetah runs fall when R's action gradient takes over from the prior's).
- `measure_action_gradients` (diagnostic): each update also reports the mean norms of the actor objective's two
  action gradients at the actor's mean action, |d min_i R_i / du| and |d (w L) / du| (u pre-tanh), and the actor
  mean's distance from pi_0's in pi_0's standard deviations: which term moves the actor, and how far.
- `sac.reward_scale` (default 1, as ALGORITHM.md): rewards multiplied in every phase. At the switch alpha = w = 1,
  so the actor trades one nat of entropy for one unit of (scaled) reward; the aligned critic learns soft values in
  which both count alike. On HalfCheetah pi_0's log-likelihood is ~9 nats per step against ~4 of reward, so the
  entropy term dominates and the actor widens away from pi_0 (docs/results.md). A reward scale is how SAC with a
  fixed temperature sets that balance; it is the same as aligning at temperature 1 / reward_scale.
- `reward_scale_from_data` (not in ALGORITHM.md; default false): phase 1 chooses `sac.reward_scale` itself, as the
  scale at which the dataset's mean |reward| per step is `reward_balance` (default 2) times pi_0's nats per step on
  the dataset's states (`balanced_reward_scale`). pi_0's entropy is only known once phase 1 has shaped it, so a probe
  pre-training of half the updates at the configured scale measures it, then phase 1 runs from the start at the
  chosen scale (1.5x the updates; the checkpoint records the choice). Restating a finished phase 1 at another scale
  instead (values and alpha multiplied) was tried and is wrong for Z: Z's target counts the dataset actions' nats,
  which a reward scale does not touch, so multiplying Z multiplies them too (docs/results.md).
  Aligning at a `sac.reward_scale` other than the checkpoint's is refused: the scale must be the same in every phase.
- `fidelity: reference` reproduces the authors' code where this project deviates by default (ALGORITHM.md,
  "Deviations"), in one switch: raw observations into every network (no normaliser from dataset statistics), R
  starts with the offline critic's Adam moments, log_alpha keeps phase 1's Adam moments, Z bootstraps from itself.
  It overrides `normalize_observations`, `reset_residual_optimizer`, `carry_temperature_optimizer` and
  `z_bootstrap` (`ACAConfig.resolved`).
- `finetune: naive` selects the baseline: the offline actor, Q_i, Qbar_i, log_alpha and optimiser states carried
  into plain SAC (no likelihood term, no kappa normalisation, no gradient clip).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import numpy as np
import torch

from acalign_robot import config as config_io
from acalign_robot.algo import losses
from acalign_robot.algo.networks import EnsembleMLP, TanhGaussianActor, residual_critic_from_z
from acalign_robot.algo.sac import SAC, AlignmentPrior, SACConfig, adam, frozen, polyak_update, to_tensors
from acalign_robot.config import FieldError
from acalign_robot.data.replay_buffer import Batch

__all__ = [
    "PRESETS",
    "ACAConfig",
    "OfflineACA",
    "RewardScaleChoice",
    "align",
    "balanced_reward_scale",
    "load_preset",
    "naive_finetuning",
    "policy_entropy",
]

PRESETS = ("random", "medium", "medium-replay", "medium-expert", "expert")


@dataclass(frozen=True)
class ACAConfig:
    sac: SACConfig = field(default_factory=SACConfig)
    kappa: float = 30.0  # phase 1: lambda = kappa / mean|Q|
    beta: float = 7.0  # phase 2: width of the prior's clip, in standard deviations
    w0: float = 1.0
    w_decay_k: float = 40.0  # K: w falls by w0 / (K * 1000) per gradient step
    w_min: float = 0.5
    top_trajectories: int = 0  # N highest-return dataset trajectories copied into the online buffer
    online_actor_grad_clip: float = 0.25
    z_target_alpha: Literal["learned", "one"] = "learned"
    z_bootstrap: Literal["current", "polyak"] = "polyak"  # Z's target from the current Z (reference) or a Polyak copy
    reset_residual_optimizer: bool = True
    online_temperature: Literal["auto", "w"] = "auto"  # phase 3: ALGORITHM.md's auto-tuning, or alpha = w (diagnostic)
    online_target_entropy: Literal["fixed", "prior"] = "fixed"  # phase 3: -c|A|, or pi_0's entropy on the data
    online_initial_alpha: Literal["one", "offline"] = "one"  # phase 3 starts at alpha = 1, or at phase 1's alpha
    carry_temperature_optimizer: bool = False  # phase 3's log_alpha keeps phase 1's Adam state (the reference)
    actor_warmup_updates: int = 0  # phase 3: the first N updates train R only (actor = pi_0, alpha and w held)
    measure_action_gradients: bool = False  # phase 3 diagnostic: log |dR/du| and |d(wL)/du| at the actor's samples
    normalize_observations: bool = True  # phase 1: a normaliser from the dataset's statistics in every network
    fidelity: Literal["project", "reference"] = "project"  # "reference": the authors' choices for the three above
    reward_scale_from_data: bool = False  # phase 1 chooses sac.reward_scale (balanced_reward_scale) after a probe
    reward_balance: float = 2.0  # the chosen scale's reward per step: this many times pi_0's nats per step
    finetune: Literal["aca", "naive"] = "aca"

    def validate(self) -> None:
        if self.kappa <= 0:
            raise FieldError("kappa", f"must be positive, got {self.kappa}")
        if self.beta <= 0:
            raise FieldError("beta", f"must be positive, got {self.beta}")
        if self.w_decay_k <= 0:
            raise FieldError("w_decay_k", f"must be positive, got {self.w_decay_k}")
        if not 0.0 <= self.w_min <= self.w0:
            raise FieldError("w_min", f"must be in [0, w0 = {self.w0}], got {self.w_min}")
        if self.top_trajectories < 0:
            raise FieldError("top_trajectories", f"must be >= 0, got {self.top_trajectories}")
        if self.actor_warmup_updates < 0:
            raise FieldError("actor_warmup_updates", f"must be >= 0, got {self.actor_warmup_updates}")
        if self.online_actor_grad_clip <= 0:
            raise FieldError("online_actor_grad_clip", f"must be positive, got {self.online_actor_grad_clip}")
        if not (self.reward_balance > 0 and np.isfinite(self.reward_balance)):
            raise FieldError("reward_balance", f"must be positive, got {self.reward_balance}")

    def resolved(self) -> ACAConfig:
        """The settings in force: with `fidelity: reference`, the reference implementation's choices."""
        if self.fidelity == "project":
            return self
        return dataclasses.replace(
            self,
            normalize_observations=False,
            reset_residual_optimizer=False,
            carry_temperature_optimizer=True,
            z_bootstrap="current",
        )

    @property
    def w_step(self) -> float:
        return self.w0 / (self.w_decay_k * 1000.0)


def load_preset(name: str, overrides: tuple[str, ...] = ()) -> ACAConfig:
    """One of PRESETS (the per-dataset settings of ALGORITHM.md), or a path to a YAML file."""
    from pathlib import Path

    if name in PRESETS:
        text = resources.files("acalign_robot.algo").joinpath(f"presets/{name}.yaml").read_text()
        return config_io.load_text(ACAConfig, text, f"preset {name}", overrides)
    if Path(name).is_file():
        return config_io.load(ACAConfig, name, overrides)
    raise config_io.ConfigError(f"--preset {name!r}: not a preset ({', '.join(PRESETS)}) nor a YAML file")


class OfflineACA:
    """Phase 1: SAC critics + Z functions + a behaviour-regularised actor, trained on a fixed dataset."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: ACAConfig,
        observations: np.ndarray,
        device: str | torch.device = "cpu",
    ):
        config = config.resolved()
        self.config = config
        normalizer_data = observations if config.normalize_observations else None  # None: identity (raw obs)
        self.sac = SAC(obs_dim, action_dim, config.sac, device, observations_for_normalizer=normalizer_data)
        sac_cfg = config.sac
        self.z = EnsembleMLP(sac_cfg.num_critics, obs_dim, 0, sac_cfg.hidden_sizes).to(self.sac.device)
        self.z.normalizer.load_state_dict(self.sac.actor.normalizer.state_dict())
        self.z_optimizer = adam(self.z.parameters(), sac_cfg.lr)
        self.z_target = None if config.z_bootstrap == "current" else copy.deepcopy(self.z).requires_grad_(False)

    @property
    def updates(self) -> int:
        return self.sac.updates

    def update(self, batch: Batch) -> dict[str, float]:
        sac, cfg = self.sac, self.config
        obs, action, reward, next_obs, terminated = to_tensors(batch, sac.device, cfg.sac.reward_scale)
        draw = losses.Draw(sac.actor, obs, dataset_action=action)  # a~ and log pi(a|s) from one actor pass
        dataset_log_prob = draw.dataset_log_prob
        with torch.no_grad():
            next_draw = losses.Draw(sac.actor, next_obs)

        loss, info = losses.temperature_loss(sac.log_alpha, draw.log_prob, sac.target_entropy)
        sac._step(sac.alpha_optimizer, loss)
        alpha = sac.log_alpha.detach().exp()

        loss, critic_info = losses.sac_critic_loss(
            sac.critic, sac.target_critic, obs, action, reward, next_obs, terminated, next_draw, alpha, cfg.sac.gamma
        )
        sac._step(sac.critic_optimizer, loss)

        z_alpha = alpha if cfg.z_target_alpha == "learned" else torch.ones_like(alpha)
        loss, z_info = losses.z_loss(
            self.z,
            self.z if self.z_target is None else self.z_target,
            obs,
            dataset_log_prob,
            reward,
            next_obs,
            terminated,
            next_draw,
            z_alpha,
            cfg.sac.gamma,
        )
        self._step_z(loss)

        with frozen(sac.critic):
            loss, actor_info = losses.offline_actor_loss(sac.critic, obs, draw, dataset_log_prob, alpha, cfg.kappa)
        sac._step(sac.actor_optimizer, loss)

        polyak_update(sac.target_critic, sac.critic, cfg.sac.tau)
        if self.z_target is not None:
            polyak_update(self.z_target, self.z, cfg.sac.tau)
        sac.updates += 1
        return info | critic_info | z_info | actor_info

    def _step_z(self, loss: torch.Tensor) -> None:
        self.z_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.z_optimizer.step()

    def state_dict(self) -> dict:
        state = {"sac": self.sac.state_dict(), "z": self.z.state_dict(), "z_optimizer": self.z_optimizer.state_dict()}
        if self.z_target is not None:
            state["z_target"] = self.z_target.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sac.load_state_dict(state["sac"])
        self.z.load_state_dict(state["z"])
        self.z_optimizer.load_state_dict(state["z_optimizer"])
        if self.z_target is not None:  # a checkpoint from before z_bootstrap holds none: start the copy from Z
            self.z_target.load_state_dict(state.get("z_target", state["z"]))


@dataclass(frozen=True)
class RewardScaleChoice:
    """`reward_scale_from_data`: the reward scale at which a step's scaled reward outweighs pi_0's nats."""

    prior_entropy: float  # pi_0's mean entropy on the dataset's states
    reward_abs_mean: float  # the dataset's mean |reward| (unscaled)
    nats_per_step: float  # |prior_entropy|, floored at NATS_FLOOR_PER_ACTION_DIM per action dimension
    balance: float
    reward_scale: float
    probe_updates: int = 0  # the phase-1 updates that made the pi_0 measured (pipeline.probe_reward_scale)
    probe_reward_scale: float = 1.0  # the reward scale they ran at


# A mean log-likelihood near zero is a sum of per-dimension terms of either sign, not an absence of entropy in the
# critic's targets; the floor keeps the scale from vanishing with it.
NATS_FLOOR_PER_ACTION_DIM = 0.1


def balanced_reward_scale(
    actor: TanhGaussianActor, observations: np.ndarray, rewards: np.ndarray, balance: float
) -> RewardScaleChoice:
    """The reward scale that makes the dataset's reward per step `balance` times pi_0's log-likelihood per step.

    Why: at the switch alpha = w = 1, and the aligned critic learns R(s, a) = c r - L(s, a) + gamma R' (L: pi_0's
    log-likelihood), so its values count reward and pi_0's nats alike. Where nats dominate (HalfCheetah: ~6 nats
    against ~2 of reward per step), the values the actor climbs rank how wide pi_0 is, and the actor leaves pi_0
    (docs/results.md); where scaled rewards dominate by far (Hopper at scale 5: 10x), fine-tuning broke as well.
    The rows that held had scaled reward / nats of 1.6-2.1 (halfcheetah-medium-replay also at 6.1), the ones that
    collapsed 0.3-0.4 and 10.4: hence the default balance of 2, the middle of that window, not a tuned optimum.
    """
    entropy = policy_entropy(actor, observations)
    nats = max(abs(entropy), NATS_FLOOR_PER_ACTION_DIM * actor.action_dim)
    reward_abs_mean = float(np.mean(np.abs(rewards)))
    if not reward_abs_mean > 0:
        raise ValueError("reward_scale_from_data needs a dataset with some non-zero reward")
    return RewardScaleChoice(entropy, reward_abs_mean, nats, balance, balance * nats / reward_abs_mean)


def policy_entropy(actor: torch.nn.Module, observations: np.ndarray, samples: int = 10_000, seed: int = 0) -> float:
    """-E[log pi(a|s)], a ~ pi(s), over (at most `samples` of) `observations`: the policy's mean entropy there.

    Deterministic for a given `seed`, and it leaves torch's global generator as it found it (a measurement must not
    shift a training run's random stream).
    """
    rng = np.random.default_rng(seed)
    picked = observations[rng.choice(len(observations), size=min(samples, len(observations)), replace=False)]
    parameter = next(actor.parameters())
    devices = [parameter.device] if parameter.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        obs = torch.as_tensor(picked, dtype=torch.float32, device=parameter.device)
        return -float(losses.Draw(actor, obs).log_prob.mean())


def align(offline: OfflineACA, prior_entropy: float | None = None) -> SAC:
    """Phase 2: the one-off alignment. Returns the phase-3 agent; `offline` is left untouched.

    `prior_entropy`: pi_0's mean entropy on the dataset's states (`policy_entropy`), needed only for
    `online_target_entropy: prior`.
    """
    cfg = offline.config.resolved()
    source = offline.sac
    obs_dim, action_dim = source.actor.obs_dim, source.actor.action_dim
    online = SAC(obs_dim, action_dim, cfg.sac, source.device)
    # pi_theta starts as the offline actor, keeping its optimiser state; pi_0 is a frozen copy.
    online.actor.load_state_dict(source.actor.state_dict())
    online.actor_optimizer.load_state_dict(source.actor_optimizer.state_dict())
    prior_actor = copy.deepcopy(online.actor).requires_grad_(False)
    # alpha := 1 (or phase 1's alpha) with a fresh optimiser (or phase 1's moments, as the reference keeps them).
    with torch.no_grad():
        online.log_alpha.copy_(source.log_alpha if cfg.online_initial_alpha == "offline" else torch.zeros(()))
    online.alpha_optimizer = adam([online.log_alpha], cfg.sac.lr)
    if cfg.carry_temperature_optimizer:
        online.alpha_optimizer.load_state_dict(source.alpha_optimizer.state_dict())
    if cfg.online_target_entropy == "prior":
        if prior_entropy is None:
            raise ValueError("online_target_entropy: prior needs pi_0's entropy on the dataset (policy_entropy)")
        online.target_entropy = prior_entropy
    # Q_i are discarded; R_i := Z_i with zeroed action columns; Rbar := R.
    online.critic = residual_critic_from_z(offline.z, action_dim).to(source.device)
    online.target_critic = copy.deepcopy(online.critic).requires_grad_(False)
    online.critic_optimizer = adam(online.critic.parameters(), cfg.sac.lr)
    if not cfg.reset_residual_optimizer:
        online.critic_optimizer.load_state_dict(source.critic_optimizer.state_dict())
    online.prior = AlignmentPrior(
        prior_actor,
        cfg.beta,
        cfg.w0,
        cfg.w_step,
        cfg.w_min,
        temperature_follows_w=cfg.online_temperature == "w",
        actor_warmup_updates=cfg.actor_warmup_updates,
        measure_action_gradients=cfg.measure_action_gradients,
    )
    online.actor_grad_clip = cfg.online_actor_grad_clip
    return online


def naive_finetuning(offline: OfflineACA) -> SAC:
    """The baseline: the offline actor, critics, targets, temperature and optimiser states in plain SAC."""
    source = offline.sac
    online = SAC(source.actor.obs_dim, source.actor.action_dim, offline.config.sac, source.device)
    state = copy.deepcopy(source.state_dict())
    state["actor_grad_clip"] = None
    state["updates"] = 0
    online.load_state_dict(state)
    return online
