"""Networks: observation normaliser, tanh-squashed Gaussian actor, batched critic and Z ensembles.

The deployable part is `TanhGaussianActor` (it owns its `ObservationNormalizer`, so the export carries the
normalisation). Critics, Z functions, targets and the temperature are learner-only.

Ensembles are one module with stacked weights `(ensemble, in, out)` evaluated with a batched matmul, not a Python
loop over critics: every critic of an ensemble costs one kernel per layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "EnsembleMLP",
    "ObservationNormalizer",
    "TanhGaussianActor",
    "atanh_clipped",
    "residual_critic_from_z",
    "tanh_gaussian_log_prob",
    "tanh_gaussian_sample",
]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
ACTION_CLIP = 1.0 - 1e-6  # datasets hold actions exactly at +-1; atanh(1) is inf
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def atanh_clipped(action: torch.Tensor) -> torch.Tensor:
    """Pre-tanh value of a stored action in [-1, 1] (clipped so that +-1 stays finite)."""
    return torch.atanh(action.clamp(-ACTION_CLIP, ACTION_CLIP))


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log density of a = tanh(u), u ~ N(mean, exp(log_std)), tanh Jacobian included. Shapes (..., A) -> (...).

    log(1 - tanh(u)^2) is written as 2 * (log 2 - u - softplus(-2u)), exact and finite for any u.
    """
    z = (u - mean) * torch.exp(-log_std)
    gaussian = -0.5 * z.pow(2) - log_std - _HALF_LOG_2PI
    log_jacobian = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gaussian - log_jacobian).sum(-1)


def tanh_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reparameterised draw a = tanh(u), u = mean + exp(log_std) * eps: (action, log_prob, u), all from u directly.

    eps is `noise` if given (standard normal, mean's shape), else drawn from torch's global generator.
    """
    eps = torch.randn_like(mean) if noise is None else noise
    u = mean + torch.exp(log_std) * eps
    return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std), u


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))  # no state: checkpoints and exports are unchanged
    return nn.Sequential(*layers)


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std with constants from dataset statistics (buffers: saved, exported, never trained)."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    @classmethod
    def from_data(cls, observations: np.ndarray, eps: float = 1e-3) -> ObservationNormalizer:
        normalizer = cls(observations.shape[1])
        normalizer.mean.copy_(torch.as_tensor(observations.mean(0), dtype=torch.float32))
        normalizer.std.copy_(torch.as_tensor(observations.std(0) + eps, dtype=torch.float32))
        return normalizer

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class TanhGaussianActor(nn.Module):
    """pi(a|s): one MLP trunk with 2|A| outputs (mean, log-std clamped to [-20, 2]), squashed by tanh.

    Actions are in [-1, 1]^|A|; scaling to the env's bounds happens outside (export, env wrapper).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.normalizer = ObservationNormalizer(obs_dim)
        self.trunk = _mlp([obs_dim, *hidden_sizes, 2 * action_dim])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh mean and log-std, each (B, A)."""
        mean, log_std = self.trunk(self.normalizer(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised draw: (action (B, A), log_prob (B,), pre-tanh u (B, A)), all from u directly."""
        return tanh_gaussian_sample(*self(obs))

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of stored actions (dataset or buffer), via a clipped atanh. (B,)"""
        mean, log_std = self(obs)
        return tanh_gaussian_log_prob(atanh_clipped(action), mean, log_std)

    def log_prob_of_u(self, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log pi(tanh(u)|s) for a pre-tanh u (e.g. another actor's sample), without an atanh round trip."""
        mean, log_std = self(obs)
        return tanh_gaussian_log_prob(u, mean, log_std)

    @torch.no_grad()
    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self(obs)
        return torch.tanh(mean)


class EnsembleLinear(nn.Module):
    """`ensemble` independent linear layers applied as one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, ensemble: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[2] == 1:
            return _ScalarHead.apply(x, self.weight, self.bias)
        return torch.baddbmm(self.bias, x, self.weight)


class _ScalarHead(torch.autograd.Function):
    """An ensemble's scalar output layer, (E, B, in) x (E, in, 1) + (E, 1, 1) -> (E, B, 1): the same maths as
    `baddbmm`, with kernels that avoid CPU BLAS's batched-gemv path (a contiguous (E, in, 1) right operand is ~7x
    slower than the same data viewed as a transposed row; the weight gradient as x^T g likewise).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ensemble, inputs = weight.shape[0], weight.shape[1]
        return torch.baddbmm(bias, x, weight.view(ensemble, 1, inputs).transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad (E, B, 1)
        x, weight = ctx.saved_tensors
        ensemble, inputs = weight.shape[0], weight.shape[1]
        grad_x = grad * weight.view(ensemble, 1, inputs) if ctx.needs_input_grad[0] else None  # (E, B, in)
        grad_weight = torch.bmm(grad.transpose(1, 2), x).view_as(weight) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class EnsembleMLP(nn.Module):
    """An ensemble of scalar MLPs on [obs, action] (critics Q_i, residuals R_i) or on obs alone (Z_i).

    forward(obs (B, O), action (B, A) or None) -> (E, B). Observations are normalised with the same constants as
    the actor.
    """

    def __init__(self, ensemble: int, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.ensemble, self.obs_dim, self.action_dim = ensemble, obs_dim, action_dim
        self.normalizer = ObservationNormalizer(obs_dim)
        sizes = [obs_dim + action_dim, *hidden_sizes, 1]
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalizer(obs)
        if action is not None:
            x = torch.cat([x, action], dim=-1)
        x = x.unsqueeze(0).expand(self.ensemble, *x.shape)  # (E, B, in)
        *hidden, last = self.layers  # unpacking, not slicing: a slice builds a new ModuleList on every call
        for layer in hidden:
            x = layer(x).relu_()  # in place: the matmul's backward needs its inputs, not its output
        return last(x).squeeze(-1)  # (E, B)


def residual_critic_from_z(z: EnsembleMLP, action_dim: int) -> EnsembleMLP:
    """ALGORITHM.md phase 2 step 3: R_i gets Z_i's weights, its first layer's action columns set to zero.

    So R_i(s, a) = Z_i(s) for every a at the switch.
    """
    if z.action_dim != 0:
        raise ValueError("residual_critic_from_z expects a state-only Z ensemble")
    hidden = tuple(layer.weight.shape[2] for layer in z.layers[:-1])
    residual = EnsembleMLP(z.ensemble, z.obs_dim, action_dim, hidden)
    residual.normalizer.load_state_dict(z.normalizer.state_dict())
    with torch.no_grad():
        first, z_first = residual.layers[0], z.layers[0]
        first.weight.zero_()
        first.weight[:, : z.obs_dim, :].copy_(z_first.weight)  # state rows of the (in, out) weight
        first.bias.copy_(z_first.bias)
        for layer, z_layer in zip(residual.layers[1:], z.layers[1:]):
            layer.load_state_dict(z_layer.state_dict())
    return residual
