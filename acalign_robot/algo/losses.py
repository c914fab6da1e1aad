"""Pure loss functions of SAC and ACA (ALGORITHM.md). Each returns `(loss, info)`.

They never step an optimiser, clip a gradient or touch a target network's weights: `update()` methods in sac.py
and aca.py order them. Every target is computed under `torch.no_grad()`. Shapes: ensembles give `(E, B)`, batch
quantities `(B,)`.

Seed batches (seed_batch.py): the temperature, SAC and phase-3 losses also take several seeds' independent learners
at once, with a leading seed dimension S: ensembles `(S, E, B)`, batch quantities `(S, B)`, per-seed scalars (alpha,
target entropy) `(S, 1)`. They reduce over trailing dimensions only and sum the seeds' losses, so that one backward
pass gives each seed's parameters the gradient of that seed's own loss. Their statistics are floats for one learner
and lists of one float per seed for a seed batch (`tolist()` of a per-seed value).

Within one update the caller draws one a~ ~ pi(s) and one a' ~ pi(s') and passes the same draws to every loss.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from acalign_robot.algo.networks import (
    EnsembleMLP,
    TanhGaussianActor,
    atanh_clipped,
    tanh_gaussian_log_prob,
    tanh_gaussian_sample,
)

__all__ = [
    "Draw",
    "PriorAt",
    "aligned_actor_loss",
    "aligned_critic_loss",
    "aligned_critic_terms",
    "offline_actor_loss",
    "prior_clip_level",
    "prior_term",
    "sac_actor_loss",
    "sac_critic_loss",
    "soft_clipped_prior",
    "temperature_loss",
    "z_loss",
]

Info = dict[str, float | list[float]]  # a list: one value per seed of a seed batch


class Draw:
    """One reparameterised sample of the actor at a batch of observations: action, log-prob and pre-tanh u.

    With `dataset_action` (phase 1) the same actor forward pass also scores the stored action:
    `dataset_log_prob` = log pi(a|s), (B,), with gradient. One trunk pass and one backward through it instead of two.
    `noise`: the standard normal draw behind the sample (the action's shape); by default drawn from torch's global
    generator (a seed batch passes each seed's draw from that seed's own generator).
    """

    def __init__(
        self,
        actor: TanhGaussianActor,
        obs: torch.Tensor,
        dataset_action: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ):
        mean, log_std = actor(obs)
        self.mean = mean  # pre-tanh
        self.action, self.log_prob, self.u = tanh_gaussian_sample(mean, log_std, noise)
        self.dataset_log_prob = (
            None if dataset_action is None else tanh_gaussian_log_prob(atanh_clipped(dataset_action), mean, log_std)
        )

    def detached(self) -> Draw:
        copy = object.__new__(Draw)
        copy.action, copy.log_prob, copy.u = self.action.detach(), self.log_prob.detach(), self.u.detach()
        copy.mean = self.mean.detach()
        copy.dataset_log_prob = None if self.dataset_log_prob is None else self.dataset_log_prob.detach()
        return copy


def temperature_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> tuple[torch.Tensor, Info]:
    """SAC auto-tuning: -log_alpha * (log pi(a~|s) + target_entropy), the log-probability detached.

    With target_entropy = -c|A| this is ALGORITHM.md's -log_alpha * (log pi - c|A|). A seed batch passes log_alpha
    and target_entropy as (S, 1).
    """
    per_seed = -(log_alpha * (log_prob.detach() + target_entropy)).mean(-1)
    return per_seed.sum(), {
        "loss/temperature": per_seed.tolist(),
        "alpha": log_alpha.exp().squeeze(-1).tolist(),
        "entropy": (-log_prob.mean(-1)).tolist(),
    }


def sac_critic_loss(
    critic: EnsembleMLP,
    target_critic: EnsembleMLP,
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    next_obs: torch.Tensor,
    terminated: torch.Tensor,
    next_draw: Draw,
    alpha: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, Info]:
    """Standard SAC: y = r + gamma (1-d) [min_j Qbar_j(s',a') - alpha log pi(a'|s')]; loss = sum_i MSE(Q_i, y)."""
    with torch.no_grad():
        next_q = target_critic(next_obs, next_draw.action).min(-2).values
        target = reward + gamma * (1.0 - terminated) * (next_q - alpha * next_draw.log_prob)
    q = critic(obs, action)  # (E, B)
    per_seed = _ensemble_mse(q, target)
    return per_seed.sum(), {"loss/critic": per_seed.tolist(), "q_mean": q.mean((-2, -1)).tolist()}


def _ensemble_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i MSE(q_i, y) for q (E, B) and y (B,) (or per seed: (S, E, B), (S, B) -> (S,))."""
    return F.mse_loss(q, target.unsqueeze(-2).expand_as(q), reduction="none").mean(-1).sum(-1)


def z_loss(
    z: EnsembleMLP,
    bootstrap_z: EnsembleMLP,
    obs: torch.Tensor,
    dataset_log_prob: torch.Tensor,
    reward: torch.Tensor,
    next_obs: torch.Tensor,
    terminated: torch.Tensor,
    next_draw: Draw,
    target_alpha: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, Info]:
    """Phase 1 Z functions: fit log pi(a|s) + Z_i(s) to a soft evaluation of pi.

    y_Z = r + gamma (1-d) [log pi(a'|s') + min_j Z_j(s') - target_alpha log pi(a'|s')], with Z(s') from
    `bootstrap_z`: `z` itself (the reference: no target network) or its Polyak copy (`z_bootstrap: polyak`);
    `target_alpha` is the learned alpha (reference) or 1 (`z_target_alpha: one`).
    `dataset_log_prob` is log pi(a|s) of the dataset action, used detached.
    """
    with torch.no_grad():
        next_z = bootstrap_z(next_obs).min(0).values
        target = reward + gamma * (1.0 - terminated) * (next_draw.log_prob + next_z - target_alpha * next_draw.log_prob)
    prediction = dataset_log_prob.detach() + z(obs)  # (E, B)
    loss = F.mse_loss(prediction, target.expand_as(prediction), reduction="none").mean(1).sum()
    return loss, {"loss/z": loss.item(), "z_mean": (prediction - dataset_log_prob.detach()).mean().item()}


def offline_actor_loss(
    critic: EnsembleMLP,
    obs: torch.Tensor,
    draw: Draw,
    dataset_log_prob: torch.Tensor,
    alpha: torch.Tensor,
    kappa: float,
) -> tuple[torch.Tensor, Info]:
    """Phase 1 actor: lambda * mean[alpha log pi(a~|s) - Qmin(s,a~)] - mean[log pi(a|s)], lambda = kappa / mean|Qmin|.

    Gradient flows through a~ into the critic's input but the caller only steps the actor's optimiser.
    """
    q_min = critic(obs, draw.action).min(0).values
    scale = kappa / q_min.abs().mean().detach().clamp_min(1e-6)
    q_term = (alpha.detach() * draw.log_prob - q_min).mean()
    likelihood = dataset_log_prob.mean()
    loss = scale * q_term - likelihood
    return loss, {"loss/actor": loss.item(), "actor/lambda": scale.item(), "actor/dataset_log_prob": likelihood.item()}


def sac_actor_loss(
    critic: EnsembleMLP, obs: torch.Tensor, draw: Draw, alpha: torch.Tensor
) -> tuple[torch.Tensor, Info]:
    """Plain SAC actor: mean[alpha log pi(a~|s) - min_i Q_i(s,a~)]."""
    q_min = critic(obs, draw.action).min(-2).values
    per_seed = (alpha.detach() * draw.log_prob - q_min).mean(-1)
    return per_seed.sum(), {"loss/actor": per_seed.tolist()}


def prior_clip_level(prior: TanhGaussianActor, obs: torch.Tensor, beta: float) -> torch.Tensor:
    """c_beta(s) = min(log pi_0(u = mu - beta sigma), log pi_0(u = mu + beta sigma)). (B,)

    The two points shift every dimension together (whole vectors), as in the reference.
    """
    return _clip_level(*prior(obs), beta)


def _clip_level(mean: torch.Tensor, log_std: torch.Tensor, beta: float) -> torch.Tensor:
    offset = beta * torch.exp(log_std)
    low = tanh_gaussian_log_prob(mean - offset, mean, log_std)
    high = tanh_gaussian_log_prob(mean + offset, mean, log_std)
    return torch.minimum(low, high)


def soft_clipped_prior(prior_log_prob: torch.Tensor, clip_level: torch.Tensor) -> torch.Tensor:
    """L = softplus(log pi_0 - c_beta) + c_beta: a smooth max(log pi_0, c_beta), the taming of far actions."""
    return F.softplus(prior_log_prob - clip_level) + clip_level


class PriorAt:
    """The frozen prior pi_0 at a batch of observations: its mean, log-std and clip level c_beta(s), computed once
    without gradient. pi_0 never changes within an update, so one `PriorAt(s)` and one `PriorAt(s')` serve the
    critic target, the critic prediction and the actor loss (one pi_0 pass per batch instead of two per term).
    """

    def __init__(self, prior: TanhGaussianActor, obs: torch.Tensor, beta: float):
        with torch.no_grad():
            self.mean, self.log_std = prior(obs)
            self.clip_level = _clip_level(self.mean, self.log_std, beta)

    def soft_clipped(self, u: torch.Tensor) -> torch.Tensor:
        """L(s, tanh(u)) for a pre-tanh u (B, A) -> (B,); gradient flows into u only."""
        return soft_clipped_prior(tanh_gaussian_log_prob(u, self.mean, self.log_std), self.clip_level)


def prior_term(prior: TanhGaussianActor, obs: torch.Tensor, u: torch.Tensor, beta: float) -> torch.Tensor:
    """L(s, tanh(u)) for a pre-tanh u; gradient flows into u (pi_0's own parameters are frozen by the caller)."""
    return PriorAt(prior, obs, beta).soft_clipped(u)


def aligned_critic_terms(
    residual: EnsembleMLP,
    target_residual: EnsembleMLP,
    prior_at_obs: PriorAt,
    prior_at_next_obs: PriorAt,
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    next_obs: torch.Tensor,
    terminated: torch.Tensor,
    next_draw: Draw,
    alpha: torch.Tensor,
    w: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phase 3 critic Q_i = R_i + w L at (s,a) and its target: (q (E, B), y (B,), L(s,a) (B,)), with
    y = r + gamma (1-d) [min_j Rbar_j(s',a') + w L(s',a') - alpha log pi(a'|s')]. L is a constant here: only R
    carries gradient. Also what bench/switch_residual.py evaluates at the switch.
    """
    with torch.no_grad():
        next_q = target_residual(next_obs, next_draw.action).min(-2).values + w * prior_at_next_obs.soft_clipped(
            next_draw.u
        )
        target = reward + gamma * (1.0 - terminated) * (next_q - alpha * next_draw.log_prob)
        prior_now = prior_at_obs.soft_clipped(atanh_clipped(action))
    return residual(obs, action) + (w * prior_now).unsqueeze(-2), target, prior_now


def aligned_critic_loss(q: torch.Tensor, target: torch.Tensor, prior_now: torch.Tensor) -> tuple[torch.Tensor, Info]:
    """Phase 3 critic: sum_i MSE(R_i(s,a) + w L(s,a), y), from `aligned_critic_terms(...)` = (q, y, L(s,a))."""
    per_seed = _ensemble_mse(q, target)
    return per_seed.sum(), {
        "loss/critic": per_seed.tolist(),
        "q_mean": q.mean((-2, -1)).tolist(),
        "prior_mean": prior_now.mean(-1).tolist(),
    }


def aligned_actor_loss(
    residual: EnsembleMLP,
    prior_at_obs: PriorAt,
    obs: torch.Tensor,
    draw: Draw,
    alpha: torch.Tensor,
    w: float,
    *,
    measure_action_gradients: bool = False,
) -> tuple[torch.Tensor, Info]:
    """Phase 3 actor: mean[alpha log pi(a~|s) - (min_i R_i(s,a~) + w L(s,a~))], gradient through a~ into L.

    `measure_action_gradients`: also report, at the actor's mean action u = mu(s) (pre-tanh), the mean norms of
    d min_i R_i / du and d (w L) / du, which of the two pulls the actor's mean, and how far mu(s) is from pi_0's
    mean in pi_0's standard deviations (root mean square over the action's dimensions).
    """
    prior_value = prior_at_obs.soft_clipped(draw.u)
    q = residual(obs, draw.action).min(-2).values + w * prior_value
    per_seed = (alpha.detach() * draw.log_prob - q).mean(-1)
    info = {"loss/actor": per_seed.tolist(), "actor/prior": prior_value.mean(-1).tolist()}
    if measure_action_gradients:
        info |= _action_gradients_at_the_mean(residual, prior_at_obs, obs, draw.mean.detach(), w)
    return per_seed.sum(), info


def _action_gradients_at_the_mean(
    residual: EnsembleMLP, prior_at_obs: PriorAt, obs: torch.Tensor, mean: torch.Tensor, w: float
) -> Info:
    u = mean.clone().requires_grad_(True)
    # Each row's value depends on its own u only, so the gradient of the batch sum holds each row's own gradient.
    (residual_gradient,) = torch.autograd.grad(residual(obs, torch.tanh(u)).min(-2).values.sum(), u)
    (prior_gradient,) = torch.autograd.grad(w * prior_at_obs.soft_clipped(u).sum(), u)
    distance = (mean - prior_at_obs.mean) / prior_at_obs.log_std.exp()
    return {
        "actor/residual_action_gradient": residual_gradient.norm(dim=-1).mean(-1).tolist(),
        "actor/prior_action_gradient": prior_gradient.norm(dim=-1).mean(-1).tolist(),
        "actor/prior_distance_std": distance.pow(2).mean(-1).sqrt().mean(-1).tolist(),
    }
