"""Actor-critic invariants (STYLE.md 11): RL bugs are silent, so each property is asserted directly."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from acalign_robot.algo import losses
from acalign_robot.algo.aca import ACAConfig, OfflineACA, align, naive_finetuning, policy_entropy
from acalign_robot.algo.networks import TanhGaussianActor, atanh_clipped, tanh_gaussian_log_prob
from acalign_robot.algo.sac import SAC, SACConfig, frozen
from acalign_robot.data.replay_buffer import Batch

OBS, ACT, B = 5, 2, 32
SMALL = SACConfig(batch_size=B, hidden_sizes=(32, 32))


def _batch(seed=0) -> Batch:
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, (B, ACT)).astype(np.float32)
    action[:4] = np.sign(action[:4])  # dataset actions exactly at +-1
    return Batch(
        obs=rng.normal(size=(B, OBS)).astype(np.float32),
        action=action,
        reward=rng.normal(size=B).astype(np.float32),
        next_obs=rng.normal(size=(B, OBS)).astype(np.float32),
        terminated=(rng.uniform(size=B) < 0.2).astype(np.float32),
    )


def _offline(config: ACAConfig | None = None) -> OfflineACA:
    torch.manual_seed(0)
    return OfflineACA(OBS, ACT, config or ACAConfig(sac=SMALL), _batch().obs)


def _grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def _tensors(batch: Batch):
    return [torch.as_tensor(x) for x in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated)]


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, ACT), torch.randn(64, ACT).clamp(-2, 1)
    u = mean + log_std.exp() * torch.randn(64, ACT)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    expected = reference.log_prob(torch.tanh(u).clamp(-0.999999, 0.999999)).sum(-1)
    close = torch.tanh(u).abs().max(-1).values < 0.999
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std)[close], expected[close], atol=1e-3, rtol=1e-4)


def test_dataset_actions_at_the_bounds_score_finitely():
    actor = TanhGaussianActor(OBS, ACT, (32,))
    obs = torch.randn(8, OBS)
    assert torch.isfinite(actor.log_prob(obs, torch.ones(8, ACT))).all()
    assert torch.isfinite(atanh_clipped(-torch.ones(3))).all()


def test_each_phase1_loss_moves_only_its_own_network():
    agent = _offline()
    sac = agent.sac
    obs, action, reward, next_obs, terminated = _tensors(_batch())
    draw = losses.Draw(sac.actor, obs)
    with torch.no_grad():
        next_draw = losses.Draw(sac.actor, next_obs)
    dataset_log_prob = sac.actor.log_prob(obs, action)
    alpha = sac.log_alpha.detach().exp()
    modules = {
        "actor": sac.actor,
        "critic": sac.critic,
        "target": sac.target_critic,
        "z": agent.z,
        "z_target": agent.z_target,
    }

    def owners(loss):
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        sac.log_alpha.grad = None
        loss.backward(retain_graph=True)
        moved = {name for name, module in modules.items() if any(_grads(module))}
        return moved | ({"log_alpha"} if sac.log_alpha.grad is not None else set())

    assert owners(losses.temperature_loss(sac.log_alpha, draw.log_prob, -ACT)[0]) == {"log_alpha"}
    critic_loss = losses.sac_critic_loss(
        sac.critic, sac.target_critic, obs, action, reward, next_obs, terminated, next_draw, alpha, 0.99
    )[0]
    assert owners(critic_loss) == {"critic"}
    for bootstrap_z in (agent.z, agent.z_target):  # the reference's current Z, and the Polyak copy
        z_loss = losses.z_loss(
            agent.z, bootstrap_z, obs, dataset_log_prob, reward, next_obs, terminated, next_draw, alpha, 0.99
        )[0]
        assert owners(z_loss) == {"z"}
    with frozen(sac.critic):
        actor_loss = losses.offline_actor_loss(sac.critic, obs, draw, dataset_log_prob, alpha, 30.0)[0]
    assert owners(actor_loss) == {"actor"}


def test_phase3_losses_leave_prior_and_targets_untouched():
    online = align(_offline())
    obs, action, reward, next_obs, terminated = _tensors(_batch())
    draw = losses.Draw(online.actor, obs)
    with torch.no_grad():
        next_draw = losses.Draw(online.actor, next_obs)
    alpha = online.log_alpha.detach().exp()
    prior = online.prior
    prior_at_obs = losses.PriorAt(prior.actor, obs, prior.beta)
    prior_at_next_obs = losses.PriorAt(prior.actor, next_obs, prior.beta)
    terms = losses.aligned_critic_terms(
        online.critic,
        online.target_critic,
        prior_at_obs,
        prior_at_next_obs,
        obs,
        action,
        reward,
        next_obs,
        terminated,
        next_draw,
        alpha,
        prior.w,
        0.99,
    )
    critic_loss, _ = losses.aligned_critic_loss(*terms)
    critic_loss.backward()
    assert any(_grads(online.critic)) and not any(_grads(online.actor))
    assert not any(_grads(online.target_critic)) and not any(_grads(prior.actor))
    online.critic.zero_grad(set_to_none=True)
    actor_loss, _ = losses.aligned_actor_loss(online.critic, prior_at_obs, obs, draw, alpha, prior.w)
    actor_loss.backward()
    assert any(_grads(online.actor)) and not any(_grads(prior.actor))


def test_updates_never_mutate_the_batch():
    batch = _batch()
    before = copy.deepcopy(batch)
    agent = _offline()
    agent.update(batch)
    align(agent).update(batch)
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(before, name))


def test_residual_equals_z_at_the_switch_for_any_action():
    agent = _offline()
    for _ in range(3):
        agent.update(_batch())
    online = align(agent)
    batch = _batch(1)
    obs = torch.as_tensor(batch.obs)
    with torch.no_grad():
        z = agent.z(obs)
        for action in (torch.as_tensor(batch.action), torch.rand(B, ACT) * 2 - 1):
            torch.testing.assert_close(online.critic(obs, action), z, atol=0, rtol=0)
            torch.testing.assert_close(online.target_critic(obs, action), z, atol=0, rtol=0)


def test_soft_greedy_policy_of_aligned_critic_is_the_offline_actor():
    """At w = 1, inside the clip: Q(s,a1) - Q(s,a2) = log pi_0(a1|s) - log pi_0(a2|s)."""
    online = align(_offline())
    prior = online.prior
    obs = torch.as_tensor(_batch().obs)
    with torch.no_grad():
        mean, log_std = prior.actor(obs)
        u1 = mean + 0.5 * log_std.exp() * torch.randn_like(mean)
        u2 = mean - 0.8 * log_std.exp() * torch.randn_like(mean)

        def q(u):
            return online.critic(obs, torch.tanh(u)).min(0).values + prior.w * losses.prior_term(
                prior.actor, obs, u, prior.beta
            )

        expected = prior.actor.log_prob_of_u(obs, u1) - prior.actor.log_prob_of_u(obs, u2)
        torch.testing.assert_close(q(u1) - q(u2), expected, atol=1e-4, rtol=1e-4)


def test_prior_is_bounded_below_by_clip_and_equals_log_pi0_inside():
    actor = TanhGaussianActor(OBS, ACT, (32,))
    obs = torch.randn(B, OBS)
    beta = 7.0
    with torch.no_grad():
        mean, log_std = actor(obs)
        clip = losses.prior_clip_level(actor, obs, beta)
        far = losses.prior_term(actor, obs, mean + 30 * log_std.exp(), beta)
        near = losses.prior_term(actor, obs, mean + 0.1 * log_std.exp(), beta)
        assert (far >= clip - 1e-5).all()
        torch.testing.assert_close(near, actor.log_prob_of_u(obs, mean + 0.1 * log_std.exp()), atol=1e-4, rtol=0)


def test_w_schedule_decays_linearly_to_floor():
    config = ACAConfig(sac=SMALL, w0=1.0, w_decay_k=0.01, w_min=0.5)  # 1e-1 per update
    online = align(_offline(config))
    seen = [online.update(_batch(i))["w"] for i in range(8)]
    np.testing.assert_allclose(seen, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5], atol=1e-9)


def test_the_temperature_can_follow_w_instead_of_being_tuned():
    """ACAConfig.online_temperature "w" (a diagnostic): alpha = w each update, log_alpha untouched, kept on reload."""
    config = ACAConfig(sac=SMALL, w0=1.0, w_decay_k=0.01, w_min=0.5, online_temperature="w")
    online = align(_offline(config))
    alphas = [online.update(_batch(i))["alpha"] for i in range(3)]
    np.testing.assert_allclose(alphas, [1.0, 0.9, 0.8], atol=1e-9)
    assert online.alpha == 1.0  # log_alpha was not stepped
    restored = SAC(OBS, ACT, SMALL)
    restored.load_state_dict(copy.deepcopy(online.state_dict()))
    assert restored.prior.temperature_follows_w
    assert not align(_offline()).prior.temperature_follows_w  # the default: ALGORITHM.md's auto-tuning


def test_actor_warmup_fits_the_residual_alone_then_hands_over():
    """ACAConfig.actor_warmup_updates: R moves from the first update; actor, alpha and w wait N; kept on reload."""
    config = ACAConfig(sac=SMALL, w0=1.0, w_decay_k=0.01, w_min=0.5, actor_warmup_updates=2)
    online = align(_offline(config))
    actor_at_switch = copy.deepcopy(online.actor.state_dict())
    critic_at_switch = copy.deepcopy(online.critic.state_dict())
    seen = [online.update(_batch(i)) for i in range(2)]
    assert [info["w"] for info in seen] == [1.0, 1.0] and online.alpha == 1.0
    assert all(torch.equal(actor_at_switch[k], v) for k, v in online.actor.state_dict().items())
    assert not all(torch.equal(critic_at_switch[k], v) for k, v in online.critic.state_dict().items())
    restored = SAC(OBS, ACT, SMALL)
    restored.load_state_dict(copy.deepcopy(online.state_dict()))
    assert restored.prior.actor_warmup_updates == 2
    after = online.update(_batch(2))
    assert after["w"] == 1.0 and online.prior.w == pytest.approx(0.9) and online.alpha != 1.0
    assert not all(torch.equal(actor_at_switch[k], v) for k, v in online.actor.state_dict().items())


def test_measured_action_gradients_are_the_two_terms_of_the_actor_objective():
    """At the actor's mean action: |d min R / du|, |d (w L) / du| and the distance to pi_0's mean. R(s, a) = Z(s) at
    the switch and the actor is pi_0, so after the first update (one critic step, then the actor's) all are small."""
    online = align(_offline(ACAConfig(sac=SMALL, measure_action_gradients=True)))
    info = online.update(_batch())
    assert 0.0 < info["actor/residual_action_gradient"] < 1e-2
    assert info["actor/prior_distance_std"] == 0.0  # measured before this update's actor step
    for _ in range(20):
        info = online.update(_batch())
    assert info["actor/prior_distance_std"] > 0.0 and info["actor/prior_action_gradient"] > 0.0
    assert "actor/prior_action_gradient" not in align(_offline()).update(_batch())  # off by default


def test_alignment_resets_alpha_and_keeps_actor():
    agent = _offline()
    with torch.no_grad():
        agent.sac.log_alpha.fill_(-3.0)
    for _ in range(2):
        agent.update(_batch())
    online = align(agent)
    assert online.alpha == 1.0 and online.actor_grad_clip == 0.25
    for p, q in zip(online.actor.parameters(), agent.sac.actor.parameters()):
        assert torch.equal(p, q)
    assert (
        online.actor_optimizer.state_dict()["state"][0]["step"]
        == agent.sac.actor_optimizer.state_dict()["state"][0]["step"]
    )


def test_alignment_temperature_switches_start_where_they_say():
    import dataclasses

    agent = _offline()
    with torch.no_grad():
        agent.sac.log_alpha.fill_(-3.0)
    for _ in range(3):
        agent.update(_batch())
    offline_state = agent.sac.alpha_optimizer.state_dict()["state"][0]
    config = dataclasses.replace(agent.config, online_initial_alpha="offline", carry_temperature_optimizer=True)
    agent.config = config
    online = align(agent)
    assert online.alpha == pytest.approx(agent.sac.alpha) and online.alpha < 0.1
    carried = online.alpha_optimizer.state_dict()["state"][0]
    assert torch.equal(carried["exp_avg"], offline_state["exp_avg"]) and carried["step"] == offline_state["step"]
    assert online.target_entropy == -ACT  # fixed: -c|A|
    assert not align(_offline()).alpha_optimizer.state_dict()["state"]  # the default: a fresh optimiser


def test_prior_target_entropy_starts_the_temperature_at_equilibrium():
    """With the target at pi_0's own entropy on the data, the temperature's gradient at the switch is ~0; with the
    fixed -|A| target it is not (pi_0 here is far wider than -|A|)."""
    import dataclasses

    agent = _offline()
    observations = np.random.default_rng(1).normal(size=(4096, OBS)).astype(np.float32)
    entropy = policy_entropy(agent.sac.actor, observations)
    agent.config = dataclasses.replace(agent.config, online_target_entropy="prior")
    online = align(agent, prior_entropy=entropy)
    assert online.target_entropy == entropy
    obs = torch.as_tensor(observations)

    def temperature_gradient(sac) -> float:
        sac.log_alpha.grad = None
        draw = losses.Draw(sac.actor, obs)
        losses.temperature_loss(sac.log_alpha, draw.log_prob, sac.target_entropy)[0].backward()
        return abs(float(sac.log_alpha.grad))

    assert temperature_gradient(online) < 0.1 * temperature_gradient(align(_offline()))
    reloaded = SAC(OBS, ACT, SMALL)
    reloaded.load_state_dict(online.state_dict())
    assert reloaded.target_entropy == entropy  # it travels in the checkpoint
    with pytest.raises(ValueError, match="prior needs"):
        align(agent)


def test_reference_fidelity_carries_the_optimiser_states_and_feeds_raw_observations():
    agent = _offline(ACAConfig(sac=SMALL, fidelity="reference"))
    for _ in range(3):
        agent.update(_batch())
    for module in (agent.sac.actor, agent.sac.critic, agent.z):
        assert torch.equal(module.normalizer.mean, torch.zeros(OBS)) and torch.equal(
            module.normalizer.std, torch.ones(OBS)
        )
    online = align(agent)
    for carried, offline in (
        (online.critic_optimizer, agent.sac.critic_optimizer),
        (online.alpha_optimizer, agent.sac.alpha_optimizer),
    ):
        carried_state, offline_state = carried.state_dict()["state"], offline.state_dict()["state"]
        assert carried_state.keys() == offline_state.keys() and carried_state
        for index in carried_state:
            assert torch.equal(carried_state[index]["exp_avg_sq"], offline_state[index]["exp_avg_sq"])
    assert online.alpha == 1.0  # the value is reset, as in the reference; only the moments are kept
    assert agent.z_target is None and "z_target" not in agent.state_dict()  # Z bootstraps from itself
    default = _offline()
    assert not torch.equal(default.sac.actor.normalizer.std, torch.ones(OBS))  # the project's default normalises
    assert not align(default).critic_optimizer.state_dict()["state"]


def test_z_bootstraps_from_a_polyak_copy_that_trails_it():
    agent = _offline()
    assert all(torch.equal(a, b) for a, b in zip(agent.z.parameters(), agent.z_target.parameters()))
    assert not any(p.requires_grad for p in agent.z_target.parameters())
    before = [p.clone() for p in agent.z_target.parameters()]
    agent.update(_batch())
    tau = SMALL.tau
    for old, new, trailed in zip(before, agent.z.parameters(), agent.z_target.parameters()):
        torch.testing.assert_close(trailed, (1 - tau) * old + tau * new)
    reloaded = _offline()
    reloaded.load_state_dict(agent.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(reloaded.z_target.parameters(), agent.z_target.parameters()))
    older = {k: v for k, v in agent.state_dict().items() if k != "z_target"}  # a checkpoint from before the copy
    reloaded.load_state_dict(older)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.z_target.parameters(), agent.z.parameters()))


def _reach_like_data(rng: np.random.Generator, episodes: int = 40, length: int = 100) -> tuple[np.ndarray, ...]:
    """A reach arm's data in miniature: smooth state walks, no terminal state, rewards in [0.25, 0.96]."""
    obs_dim, action_dim = 10, 7
    walks = np.cumsum(rng.normal(0, 0.05, (episodes, length + 1, obs_dim)), axis=1) + rng.normal(size=(episodes, 1, 1))
    obs, next_obs = walks[:, :-1].reshape(-1, obs_dim), walks[:, 1:].reshape(-1, obs_dim)
    actions = np.clip(rng.normal(0, 0.6, (len(obs), action_dim)), -1, 1)
    rewards = rng.uniform(0.25, 0.96, len(obs))
    return tuple(x.astype(np.float32) for x in (obs, actions, rewards, next_obs))


def test_z_bootstrapped_from_itself_runs_away_where_its_polyak_copy_does_not():
    """The Panda reach medium data made the reference's Z diverge (2e8 at 30k updates, Q ~50); the same happens in
    miniature within a few hundred updates, and the Polyak copy holds Z near the critic's values."""
    z_means = {}
    for bootstrap in ("current", "polyak"):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        obs, actions, rewards, next_obs = _reach_like_data(rng)
        config = ACAConfig(sac=SACConfig(hidden_sizes=(64, 64)), z_bootstrap=bootstrap)
        agent = OfflineACA(obs.shape[1], actions.shape[1], config, obs)
        for _ in range(400):
            i = rng.integers(0, len(obs), 64)
            info = agent.update(Batch(obs[i], actions[i], rewards[i], next_obs[i], np.zeros(64, np.float32)))
        z_means[bootstrap], q_mean = info["z_mean"], info["q_mean"]  # the critics are alike in both runs
    assert z_means["polyak"] < 3 * q_mean  # measured: 17 against Q 8
    assert z_means["current"] > 3 * z_means["polyak"]  # measured: 103, growing without bound


def test_naive_baseline_carries_critic_and_temperature():
    agent = _offline()
    for _ in range(2):
        agent.update(_batch())
    naive = naive_finetuning(agent)
    assert naive.prior is None and naive.actor_grad_clip is None
    assert naive.alpha == pytest.approx(agent.sac.alpha)
    for p, q in zip(naive.critic.parameters(), agent.sac.critic.parameters()):
        assert torch.equal(p, q)


def test_reload_keeps_optimizer_references_and_continues_identically():
    online = align(_offline())
    online.update(_batch(0))
    restored = SAC(OBS, ACT, SMALL)
    restored.load_state_dict(copy.deepcopy(online.state_dict()))
    assert restored.actor_optimizer.param_groups[0]["params"][0] is next(restored.actor.parameters())
    assert restored.critic_optimizer.param_groups[0]["params"][0] is next(restored.critic.parameters())
    torch.manual_seed(5)
    online.update(_batch(2))
    torch.manual_seed(5)
    restored.update(_batch(2))
    for p, q in zip(online.actor.parameters(), restored.actor.parameters()):
        torch.testing.assert_close(p, q)
    assert restored.prior.w == online.prior.w


def test_utd_one_update_per_env_step_once_buffer_exceeds_batch():
    from acalign_robot.algo.env_loop import OnlineLoop
    from acalign_robot.data.replay_buffer import ReplayBuffer

    agent = SAC(4, 1, SACConfig(batch_size=16, hidden_sizes=(16,)))
    buffer = ReplayBuffer(1000, 4, 1)
    OnlineLoop("InvertedPendulum-v5", seed=0).run(agent, buffer, steps=40)
    assert len(buffer) == 40
    assert agent.updates == 40 - 16


def test_scalar_head_matches_baddbmm_with_gradients():
    """The ensembles' scalar output layer avoids the batched-gemv kernel; its maths must be baddbmm's."""
    from acalign_robot.algo.networks import _ScalarHead

    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 5, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 1, 1, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_ScalarHead.apply(x, weight, bias), torch.baddbmm(bias, x, weight))
    assert torch.autograd.gradcheck(_ScalarHead.apply, (x, weight, bias))


def test_shared_actor_pass_scores_the_dataset_action_as_log_prob():
    actor = TanhGaussianActor(OBS, ACT, (32,))
    obs, action = _tensors(_batch())[:2]
    draw = losses.Draw(actor, obs, dataset_action=action)
    torch.testing.assert_close(draw.dataset_log_prob, actor.log_prob(obs, action), atol=0, rtol=0)


def test_prior_at_matches_prior_term():
    actor = TanhGaussianActor(OBS, ACT, (32,)).requires_grad_(False)
    obs = torch.randn(B, OBS)
    u = torch.randn(B, ACT, requires_grad=True)
    value = losses.PriorAt(actor, obs, 7.0).soft_clipped(u)
    mean, log_std = actor(obs)
    expected = losses.soft_clipped_prior(
        tanh_gaussian_log_prob(u, mean, log_std), losses.prior_clip_level(actor, obs, 7.0)
    )
    torch.testing.assert_close(value, expected, atol=0, rtol=0)
    value.sum().backward()
    assert u.grad is not None and bool(u.grad.abs().sum() > 0)


def test_reward_scale_is_the_same_as_scaled_rewards_in_every_phase():
    """sac.reward_scale c on a batch updates exactly as c times the batch's rewards (phase 1 and phase 3 alike)."""
    batch = _batch()
    scaled_batch = Batch(batch.obs, batch.action, 3.0 * batch.reward, batch.next_obs, batch.terminated)
    results = []
    for config, data in (
        (ACAConfig(sac=dataclasses.replace(SMALL, reward_scale=3.0)), batch),
        (ACAConfig(sac=SMALL), scaled_batch),
    ):
        offline = _offline(config)
        torch.manual_seed(1)
        offline.update(data)
        online = align(offline)
        online.update(data)
        results.append([t.clone() for t in (*offline.sac.critic.parameters(), *online.critic.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_balanced_reward_scale_weighs_a_step_of_reward_against_pi0_nats():
    from acalign_robot.algo.aca import NATS_FLOOR_PER_ACTION_DIM, balanced_reward_scale

    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, (32, 32))
    observations = _batch().obs
    rewards = np.array([0.5, -1.5, 1.0, 0.0], np.float32)  # mean |r| = 0.75
    choice = balanced_reward_scale(actor, observations, rewards, balance=2.0)
    generator_state = torch.get_rng_state()
    entropy = policy_entropy(actor, observations)
    assert policy_entropy(actor, observations) == entropy and torch.equal(torch.get_rng_state(), generator_state)
    assert choice.prior_entropy == pytest.approx(entropy) and choice.reward_abs_mean == pytest.approx(0.75)
    assert choice.nats_per_step == pytest.approx(max(abs(entropy), NATS_FLOOR_PER_ACTION_DIM * ACT))
    assert choice.reward_scale * choice.reward_abs_mean == pytest.approx(2.0 * choice.nats_per_step)
    with torch.no_grad():  # mean 0, std e^-1.3 in every state: ~+0.05 nats per dimension, so the floor holds
        actor.trunk[-1].weight.zero_()
        actor.trunk[-1].bias.zero_()
        actor.trunk[-1].bias[ACT:] = -1.3
    many_states = np.random.default_rng(0).normal(size=(4000, OBS)).astype(np.float32)
    floored = balanced_reward_scale(actor, many_states, rewards, balance=2.0)
    assert abs(floored.prior_entropy) < NATS_FLOOR_PER_ACTION_DIM * ACT
    assert floored.reward_scale == pytest.approx(2.0 * NATS_FLOOR_PER_ACTION_DIM * ACT / 0.75)
    with pytest.raises(ValueError, match="non-zero reward"):
        balanced_reward_scale(actor, observations, np.zeros(4, np.float32), balance=2.0)
