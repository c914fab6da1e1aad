"""Several seeds of one configuration in one process: S independent SAC learners (plain SAC or ACA phase 3) whose
parameters are stacked on a leading seed dimension, so that one update runs every seed's networks as batched
matmuls (one kernel per layer for all seeds) instead of S processes each running small matmuls.

`SeedBatchSAC.update` is `SAC.update`, unchanged: losses.py's SAC and phase-3 losses reduce over trailing dimensions
and sum the seeds' losses, so one backward pass gives each seed's parameters the gradient of that seed's own loss.
What differs, and why each seed still follows its single-seed run (tests/unit/test_seed_batch.py checks it):
- networks: `SeedBatchActor` and `SeedBatchCritic` hold the seeds' `TanhGaussianActor` / `EnsembleMLP` tensors
  stacked seed-major under the single networks' state-dict names and parameter order, so a seed's state is a slice;
- optimisers: Adam is elementwise, so one Adam over stacked tensors is S independent Adams (the seeds update in
  lockstep, so they share the step count; seeds whose optimisers are at different steps cannot be batched);
- the actor's gradient-norm clip (ACA) is per seed: the norm over each seed's slice of the gradients;
- noise: each seed draws from its own `torch.Generator`, in the order its single-seed run draws from the global one;
- per-seed scalars: log_alpha and the target entropy are (S, 1); the prior's w is one float, the same for every
  seed, as it depends only on the configuration and the update count.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from acalign_robot.algo.networks import EnsembleLinear, TanhGaussianActor
from acalign_robot.algo.sac import SAC, adam
from acalign_robot.data.replay_buffer import Batch

__all__ = ["SeedBatchActor", "SeedBatchCritic", "SeedBatchSAC", "stack_batches"]


def _stacked(per_seed: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The seeds' tensors as a seed batch holds them: seed-major, in the shape of the batch's tensor `like`."""
    return torch.stack(list(per_seed)).reshape(like.shape)


def _seed_slice(stacked: torch.Tensor, seeds: int, seed: int, shape: torch.Size) -> torch.Tensor:
    """One seed's tensor (a copy, so that a saved slice does not carry the whole stack) in its single shape."""
    return stacked.detach().reshape(seeds, *shape)[seed].clone()


class _SeedNormalizer(nn.Module):
    """S ObservationNormalizers: buffers mean and std (S, O); (S, B, O) -> (S, B, O)."""

    def __init__(self, seeds: int, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(seeds, obs_dim))
        self.register_buffer("std", torch.ones(seeds, obs_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean.unsqueeze(1)) / self.std.unsqueeze(1)


class _SeedLinear(nn.Module):
    """S nn.Linear layers as one baddbmm, (S, B, in) -> (S, B, out); weight (S, out, in) and bias (S, out) are
    nn.Linear's tensors stacked (the transposed weight costs the same as a contiguous one, measured)."""

    def __init__(self, seeds: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(seeds, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(seeds, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class SeedBatchActor(TanhGaussianActor):
    """S TanhGaussianActors: forward(obs (S, B, O)) -> pre-tanh mean and log-std, each (S, B, A).

    The forward pass, sampling and log-probabilities are TanhGaussianActor's; only the trunk and the normaliser
    carry a seed dimension (same module names, so `trunk.0.weight` is every seed's `trunk.0.weight`).
    """

    def __init__(self, seeds: int, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__(obs_dim, action_dim, hidden_sizes)
        self.seeds = seeds
        self.normalizer = _SeedNormalizer(seeds, obs_dim)
        sizes = [obs_dim, *hidden_sizes, 2 * action_dim]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):  # networks._mlp's layout: ReLU modules at the same indices
            layers.append(_SeedLinear(seeds, sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.trunk = nn.Sequential(*layers)


class SeedBatchCritic(nn.Module):
    """S EnsembleMLPs of E members each, as one ensemble of S * E members (seed-major): forward(obs (S, B, O),
    action (S, B, A)) -> (S, E, B). Each member sees its own seed's batch."""

    def __init__(self, seeds: int, ensemble: int, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.seeds, self.ensemble = seeds, ensemble
        self.normalizer = _SeedNormalizer(seeds, obs_dim)
        sizes = [obs_dim + action_dim, *hidden_sizes, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(seeds * ensemble, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)
        )

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.normalizer(obs), action], dim=-1)  # (S, B, in)
        seeds, batch, inputs = x.shape
        x = x.unsqueeze(1).expand(seeds, self.ensemble, batch, inputs).reshape(seeds * self.ensemble, batch, inputs)
        *hidden, last = self.layers  # as EnsembleMLP.forward
        for layer in hidden:
            x = layer(x).relu_()
        return last(x).view(seeds, self.ensemble, batch)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """The seeds' batches (one per seed, each (B, ...)) as one batch with a leading seed dimension (S, B, ...)."""
    return Batch(*(np.stack([getattr(b, field.name) for b in batches]) for field in dataclasses.fields(Batch)))


class SeedBatchSAC(SAC):
    """S SAC learners of one configuration (each plain SAC, or each ACA phase 3) updated as one.

    Built from S agents, not from sizes (SAC.__init__ is not run: every field comes from the agents); `seed_state_dict`
    gives a seed's state back in `SAC.state_dict`'s format. `generators`: one per seed, for that seed's noise.
    """

    def __init__(self, agents: Sequence[SAC], generators: Sequence[torch.Generator]):
        if len(agents) != len(generators) or not agents:
            raise ValueError(f"one generator per agent: {len(agents)} agents, {len(generators)} generators")
        _check_batchable(agents)
        first = agents[0]
        self.config, self.device, self.seeds = first.config, first.device, len(agents)
        self.generators = list(generators)
        self.updates, self.actor_grad_clip = first.updates, first.actor_grad_clip
        obs_dim, action_dim = first.actor.obs_dim, first.actor.action_dim
        hidden = first.config.hidden_sizes
        self._actor_shapes, self._critic_shapes = _shapes(first.actor), _shapes(first.critic)
        self._actor_parameters = _parameter_shapes(first.actor)
        self._critic_parameters = _parameter_shapes(first.critic)
        self.actor = self._stack_module(SeedBatchActor(self.seeds, obs_dim, action_dim, hidden), agents, "actor")
        critic = SeedBatchCritic(self.seeds, first.critic.ensemble, obs_dim, action_dim, hidden)
        self.critic = self._stack_module(critic, agents, "critic")
        self.target_critic = self._stack_module(copy.deepcopy(critic), agents, "target_critic").requires_grad_(False)
        self.log_alpha = torch.stack([a.log_alpha.detach() for a in agents]).unsqueeze(1).requires_grad_(True)
        self.target_entropy = torch.tensor([[a.target_entropy] for a in agents], device=self.device)  # (S, 1)
        self.actor_optimizer = _stacked_adam(self.actor, [a.actor_optimizer for a in agents], self.config.lr)
        self.critic_optimizer = _stacked_adam(self.critic, [a.critic_optimizer for a in agents], self.config.lr)
        self.alpha_optimizer = _stacked_adam(self.log_alpha, [a.alpha_optimizer for a in agents], self.config.lr)
        self.prior = None
        if first.prior is not None:
            prior_actor = SeedBatchActor(self.seeds, obs_dim, action_dim, hidden).to(self.device)
            prior_actor.load_state_dict(_stacked_state([a.prior.actor for a in agents], prior_actor))
            # beta, w and the schedule are the same for every seed (checked)
            self.prior = dataclasses.replace(first.prior, actor=prior_actor.requires_grad_(False))

    def _stack_module(self, batch_module: nn.Module, agents: Sequence[SAC], name: str) -> nn.Module:
        batch_module.to(self.device)
        batch_module.load_state_dict(_stacked_state([getattr(a, name) for a in agents], batch_module))
        return batch_module

    def update_seeds(self, batches: Sequence[Batch]) -> list[dict[str, float]]:
        """One update of every seed, each on its own batch; returns each seed's statistics."""
        info = self.update(stack_batches(batches))
        return [
            {key: value[seed] if isinstance(value, list) else value for key, value in info.items()}
            for seed in range(self.seeds)
        ]

    def action_noise(self, obs: torch.Tensor) -> torch.Tensor:
        """Each seed's standard normal draw from its own generator: (S, ..., A) for obs (S, ..., O)."""
        shape = (*obs.shape[1:-1], self.actor.action_dim)
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def _clip_grad_norm(self, params: list[nn.Parameter]) -> None:
        """clip_grad_norm_ per seed: each seed's gradients scaled by min(1, clip / (their norm + 1e-6))."""
        grads = [p.grad.view(self.seeds, -1) for p in params if p.grad is not None]
        norm = torch.stack([g.pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (S,)
        scale = (self.actor_grad_clip / (norm + 1e-6)).clamp(max=1.0).unsqueeze(1)
        for grad in grads:
            grad.mul_(scale)

    @property
    def alpha(self) -> list[float]:  # type: ignore[override]  # one temperature per seed
        return self.log_alpha.detach().exp().squeeze(1).tolist()

    def seed_actor(self, seed: int) -> TanhGaussianActor:
        """A copy of one seed's actor (for evaluation)."""
        actor = TanhGaussianActor(self.actor.obs_dim, self.actor.action_dim, self.config.hidden_sizes)
        actor.load_state_dict(self._seed_module_state(self.actor, seed, self._actor_shapes))
        return actor.to(self.device)

    def seed_agent(self, seed: int) -> SAC:
        """A copy of one seed's learner as the SAC its single-seed run would hold."""
        agent = SAC(self.actor.obs_dim, self.actor.action_dim, self.config, self.device)
        agent.load_state_dict(self.seed_state_dict(seed))
        return agent

    def seed_state_dict(self, seed: int) -> dict:
        """One seed's state in `SAC.state_dict`'s format (what its single-seed run would hold)."""
        state = {
            "actor": self._seed_module_state(self.actor, seed, self._actor_shapes),
            "critic": self._seed_module_state(self.critic, seed, self._critic_shapes),
            "target_critic": self._seed_module_state(self.target_critic, seed, self._critic_shapes),
            "log_alpha": self.log_alpha.detach()[seed, 0].clone(),
            "actor_optimizer": self._seed_optimizer_state(self.actor_optimizer, seed, self._actor_parameters),
            "critic_optimizer": self._seed_optimizer_state(self.critic_optimizer, seed, self._critic_parameters),
            "alpha_optimizer": self._seed_optimizer_state(self.alpha_optimizer, seed, {"log_alpha": torch.Size()}),
            "updates": self.updates,
            "actor_grad_clip": self.actor_grad_clip,
            "target_entropy": float(self.target_entropy[seed, 0]),
        }
        if self.prior is not None:
            state["prior"] = {
                "actor": self._seed_module_state(self.prior.actor, seed, self._actor_shapes),
                **self.prior.settings(),
            }
        return state

    def _seed_module_state(self, module: nn.Module, seed: int, shapes: dict[str, torch.Size]) -> dict:
        return {
            name: _seed_slice(tensor, self.seeds, seed, shapes[name]) for name, tensor in module.state_dict().items()
        }

    def _seed_optimizer_state(
        self, optimizer: torch.optim.Optimizer, seed: int, parameter_shapes: dict[str, torch.Size]
    ) -> dict:
        """The Adam state of one seed's slice: the stacked moments sliced, the shared step count copied.
        `parameter_shapes`: a single network's parameter shapes, in the optimiser's order."""
        shapes = list(parameter_shapes.values())
        state = optimizer.state_dict()
        return {
            "state": {
                index: {
                    key: value.clone() if key == "step" else _seed_slice(value, self.seeds, seed, shapes[index])
                    for key, value in entry.items()
                }
                for index, entry in state["state"].items()
            },
            "param_groups": copy.deepcopy(state["param_groups"]),
        }


def _shapes(module: nn.Module) -> dict[str, torch.Size]:
    """A single network's state-dict shapes (buffers included), by name."""
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def _parameter_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """A single network's parameter shapes, in `parameters()` order (an optimiser's indices)."""
    return {name: param.shape for name, param in module.named_parameters()}


def _stacked_state(modules: Sequence[nn.Module], batch_module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `batch_module` holding each of `modules` (same names) as its seed's slice."""
    states = [module.state_dict() for module in modules]
    return {name: _stacked([state[name] for state in states], like) for name, like in batch_module.state_dict().items()}


def _stacked_adam(target: nn.Module | torch.Tensor, optimizers: Sequence[torch.optim.Optimizer], lr: float):
    """One Adam over the batch's tensors (`target`: a module, or log_alpha) that continues each seed's Adam."""
    params = list(target.parameters()) if isinstance(target, nn.Module) else [target]
    optimizer = adam(params, lr)
    states = [opt.state_dict() for opt in optimizers]
    stacked = {}
    for index, param in enumerate(params):
        entries = [state["state"].get(index) for state in states]
        if all(entry is None for entry in entries):
            continue  # a fresh optimiser (ACA's residual critics and temperature after the alignment)
        steps = {None if entry is None else float(entry["step"]) for entry in entries}
        if len(steps) != 1:
            raise ValueError(f"the seeds' optimisers are at different steps ({sorted(steps, key=str)}): not batchable")
        stacked[index] = {
            key: value.clone() if key == "step" else _stacked([entry[key] for entry in entries], param)
            for key, value in entries[0].items()
        }
    optimizer.load_state_dict({"state": stacked, "param_groups": states[0]["param_groups"]})
    return optimizer


def _check_batchable(agents: Sequence[SAC]) -> None:
    """Seeds of one configuration at the same point: same config, update count, clip and phase-3 schedule."""

    for name, of in (
        ("config", lambda a: a.config),
        ("update count", lambda a: a.updates),
        ("actor gradient clip", lambda a: a.actor_grad_clip),
        ("alignment prior (beta, w, schedule)", lambda a: None if a.prior is None else a.prior.settings()),
        ("device", lambda a: a.device),
    ):
        values = [of(agent) for agent in agents]
        if any(value != values[0] for value in values):
            raise ValueError(f"seeds differ in their {name} ({values}): only seeds of one configuration batch")
