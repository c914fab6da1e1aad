"""Soft Actor-Critic (Haarnoja et al. 2018, auto-tuned temperature), and ACA's phase 3 as a small delta to it.

One class serves three uses:
- behaviour agents for `acalign collect` (fresh networks);
- the naive fine-tuning baseline (offline actor, critics, targets, temperature and optimiser states carried over);
- ACA phase 3 (ALGORITHM.md): the critic is Q_i = R_i + w L with L the soft-clipped prior of the frozen offline
  actor pi_0, the actor's gradient norm is clipped (0.25), and w decays linearly per update. That delta is the
  `prior` argument; without it the update is plain SAC.

Update order (ALGORITHM.md phase 3): temperature, critics, actor, Polyak + w. One draw a~ ~ pi(s) and one draw
a' ~ pi(s') per update serve every term.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch

from acalign_robot.algo import losses
from acalign_robot.algo.networks import EnsembleMLP, TanhGaussianActor
from acalign_robot.config import FieldError
from acalign_robot.data.replay_buffer import Batch

__all__ = ["AlignmentPrior", "SAC", "SACConfig", "adam", "frozen", "polyak_update", "to_tensors"]


@dataclass(frozen=True)
class SACConfig:
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    batch_size: int = 256
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    target_entropy_scale: float = 1.0  # c in H = -c|A|
    initial_alpha: float = 1.0
    # Rewards are multiplied by this in every update (SAC's original reward scale, Haarnoja et al. 2018). It sets how
    # much a unit of reward weighs against a nat of entropy wherever the temperature is fixed, as at ACA's switch
    # (alpha = 1): see aca.py.
    reward_scale: float = 1.0

    def validate(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise FieldError("gamma", f"must be in (0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise FieldError("tau", f"must be in (0, 1], got {self.tau}")
        if self.lr <= 0:
            raise FieldError("lr", f"must be positive, got {self.lr}")
        if self.batch_size <= 0:
            raise FieldError("batch_size", f"must be positive, got {self.batch_size}")
        if self.num_critics < 1:
            raise FieldError("num_critics", f"must be >= 1, got {self.num_critics}")
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0:
            raise FieldError(
                "hidden_sizes", f"must be a non-empty list of positive sizes, got {list(self.hidden_sizes)}"
            )
        if not (self.reward_scale > 0 and np.isfinite(self.reward_scale)):
            raise FieldError("reward_scale", f"must be positive, got {self.reward_scale}")
        if self.initial_alpha <= 0:
            raise FieldError("initial_alpha", f"must be positive, got {self.initial_alpha}")


@dataclass
class AlignmentPrior:
    """ACA's phase-3 state: the frozen offline actor pi_0, beta, and the linearly decaying weight w."""

    actor: TanhGaussianActor
    beta: float
    w: float
    w_step: float  # w0 / (K * 1000): the decay per gradient step
    w_min: float
    temperature_follows_w: bool = False  # ACAConfig.online_temperature "w": alpha = w instead of auto-tuning
    actor_warmup_updates: int = 0  # ACAConfig.actor_warmup_updates: updates that train R alone
    measure_action_gradients: bool = False  # ACAConfig.measure_action_gradients

    def decay(self) -> None:
        self.w = max(self.w - self.w_step, self.w_min)

    def settings(self) -> dict:
        """Everything but the actor, as a checkpoint stores it (`SAC.state_dict()["prior"]` beside the actor's)."""
        return {
            "beta": self.beta,
            "w": self.w,
            "w_step": self.w_step,
            "w_min": self.w_min,
            "temperature_follows_w": self.temperature_follows_w,
            "actor_warmup_updates": self.actor_warmup_updates,
            "measure_action_gradients": self.measure_action_gradients,
        }


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all parameters: ~10% faster updates on CPU for these small nets).

    torch < 2.4 has no fused Adam on CPU; it gets the default implementation.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Evaluate `module` without computing gradients for its parameters (inputs still get gradients)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def to_tensors(batch: Batch, device: torch.device, reward_scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    """(obs, action, reward * reward_scale, next_obs, terminated) as tensors; the numpy batch is never modified."""
    obs, action, reward, next_obs, terminated = (
        torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
        for x in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated)
    )
    return obs, action, reward * reward_scale, next_obs, terminated


class SAC:
    """SAC with twin (ensemble) critics, Polyak targets and auto-tuned temperature; optionally ACA phase 3."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: SACConfig,
        device: str | torch.device = "cpu",
        observations_for_normalizer: np.ndarray | None = None,
    ):
        self.config = config
        self.device = torch.device(device)
        self.target_entropy = -config.target_entropy_scale * action_dim
        self.actor = TanhGaussianActor(obs_dim, action_dim, config.hidden_sizes).to(self.device)
        self.critic = EnsembleMLP(config.num_critics, obs_dim, action_dim, config.hidden_sizes).to(self.device)
        if observations_for_normalizer is not None:
            for module in (self.actor, self.critic):
                module.normalizer.load_state_dict(
                    type(module.normalizer).from_data(observations_for_normalizer).state_dict()
                )
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(np.log(config.initial_alpha)), device=self.device, requires_grad=True)
        self.actor_optimizer = adam(self.actor.parameters(), config.lr)
        self.critic_optimizer = adam(self.critic.parameters(), config.lr)
        self.alpha_optimizer = adam([self.log_alpha], config.lr)
        self.prior: AlignmentPrior | None = None
        self.actor_grad_clip: float | None = None
        self.updates = 0

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        obs, action, reward, next_obs, terminated = to_tensors(batch, self.device, cfg.reward_scale)
        draw = losses.Draw(self.actor, obs, noise=self.action_noise(obs))
        with torch.no_grad():
            next_draw = losses.Draw(self.actor, next_obs, noise=self.action_noise(next_obs))

        warming_up = self.prior is not None and self.updates < self.prior.actor_warmup_updates
        if warming_up:  # R alone is fitted: the actor, alpha and w wait (aca.py, actor_warmup_updates)
            alpha = self.log_alpha.detach().exp()
            info = {"alpha": alpha.squeeze(-1).tolist(), "entropy": (-draw.log_prob.mean(-1)).tolist()}
        elif self.prior is not None and self.prior.temperature_follows_w:
            alpha = torch.tensor(self.prior.w, device=self.device)  # a diagnostic switch: not tuned, see aca.py
            info = {"alpha": self.prior.w, "entropy": (-draw.log_prob.mean(-1)).tolist()}
        else:
            loss, info = losses.temperature_loss(self.log_alpha, draw.log_prob, self.target_entropy)
            self._step(self.alpha_optimizer, loss)
            alpha = self.log_alpha.detach().exp()

        if self.prior is None:
            loss, critic_info = losses.sac_critic_loss(
                self.critic, self.target_critic, obs, action, reward, next_obs, terminated, next_draw, alpha, cfg.gamma
            )
        else:
            # pi_0 is frozen: its outputs at s and s' are computed once and serve the critic and the actor loss.
            prior_at_obs = losses.PriorAt(self.prior.actor, obs, self.prior.beta)
            prior_at_next_obs = losses.PriorAt(self.prior.actor, next_obs, self.prior.beta)
            terms = losses.aligned_critic_terms(
                self.critic,
                self.target_critic,
                prior_at_obs,
                prior_at_next_obs,
                obs,
                action,
                reward,
                next_obs,
                terminated,
                next_draw,
                alpha,
                self.prior.w,
                cfg.gamma,
            )
            loss, critic_info = losses.aligned_critic_loss(*terms)
        self._step(self.critic_optimizer, loss)

        actor_info: dict[str, float] = {}
        if not warming_up:
            with frozen(self.critic):
                if self.prior is None:
                    loss, actor_info = losses.sac_actor_loss(self.critic, obs, draw, alpha)
                else:
                    loss, actor_info = losses.aligned_actor_loss(
                        self.critic,
                        prior_at_obs,
                        obs,
                        draw,
                        alpha,
                        self.prior.w,
                        measure_action_gradients=self.prior.measure_action_gradients,
                    )
            self._step(self.actor_optimizer, loss, self.actor.parameters() if self.actor_grad_clip else None)

        polyak_update(self.target_critic, self.critic, cfg.tau)
        if self.prior is not None:
            info["w"] = self.prior.w
            if not warming_up:
                self.prior.decay()
        self.updates += 1
        return info | critic_info | actor_info

    def action_noise(self, obs: torch.Tensor) -> torch.Tensor:
        """The standard normal draw behind one sample of the actor at `obs`, from torch's global generator (a seed
        batch draws each seed's from that seed's own generator). (..., A) for obs (..., O)."""
        return torch.randn(*obs.shape[:-1], self.actor.action_dim, device=self.device)

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_params=None) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_params is not None:
            self._clip_grad_norm(list(clip_params))
        optimizer.step()

    def _clip_grad_norm(self, params: list[torch.nn.Parameter]) -> None:
        torch.nn.utils.clip_grad_norm_(params, self.actor_grad_clip)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def state_dict(self) -> dict:
        state = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "updates": self.updates,
            "actor_grad_clip": self.actor_grad_clip,
            "target_entropy": self.target_entropy,
        }
        if self.prior is not None:
            state["prior"] = {"actor": self.prior.actor.state_dict(), **self.prior.settings()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.updates = int(state["updates"])
        self.actor_grad_clip = state["actor_grad_clip"]
        self.target_entropy = float(state.get("target_entropy", self.target_entropy))  # absent: made before it
        self.prior = None
        if "prior" in state:
            prior_state = state["prior"]
            prior_actor = copy.deepcopy(self.actor).requires_grad_(False)
            prior_actor.load_state_dict(prior_state["actor"])
            self.prior = AlignmentPrior(
                prior_actor,
                float(prior_state["beta"]),
                float(prior_state["w"]),
                float(prior_state["w_step"]),
                float(prior_state["w_min"]),
                # Each absent from checkpoints made before it:
                bool(prior_state.get("temperature_follows_w", False)),
                int(prior_state.get("actor_warmup_updates", 0)),
                bool(prior_state.get("measure_action_gradients", False)),
            )
