"""Attribution and pairing rules of DESIGN section 2 on trainers shaped to stress them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import ppo_probe
from trainers import BanditConfig, make_actor, precision_mlp, train_bandit, train_bf16_update


def test_dict_of_actors_pairs_each_agent_with_its_own_samples(tmp_path):
    cfg = BanditConfig(seed=4)
    torch.manual_seed(4)
    actors = {"agent_0": make_actor(cfg), "agent_1": make_actor(cfg)}
    params = [p for a in actors.values() for p in a.parameters()]
    optim = torch.optim.Adam(params, lr=cfg.lr)
    with ppo_probe.watch(actors, optim, out=tmp_path / "run", strict=True) as w:
        train_bandit(cfg, actors, optim)
    report = ppo_probe.analyze(w.path)
    pairs = report.run.pairs
    # both agents see identical observations and often pick the same action: only the actor key
    # keeps their rows apart, and a mix-up would show as ratio != 1 on the first step
    assert set(pairs["actor"]) == {"agent_0", "agent_1"}
    assert len(pairs) == 2 * cfg.cycles * cfg.epochs * cfg.batch
    assert pairs["paired"].all()
    assert report.per_cycle["first_step_max_abs_log_ratio"].max() < 1e-6
    names = set(report.run.layers["name"])
    assert {"agent_0.0.weight", "agent_1.2.bias"} <= names


def test_input_changed_in_place_before_the_distribution_is_not_mispaired(tmp_path):
    cfg = BanditConfig(seed=5, mutate_before_dist=True)
    torch.manual_seed(5)
    actor = make_actor(cfg)
    optim = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        train_bandit(cfg, {"a": actor}, optim)
    run = ppo_probe.load(w.path)
    sampling = run.dists[~run.dists["grad_enabled"]]
    assert sampling["input_mutated"].all()  # detected through the version counter
    samples = run.samples
    assert samples.loc[samples["phase"] == "sampling", "fingerprint"].isna().all()
    # the update rows exist, are kept, and are counted as unpaired instead of guessed
    assert len(run.pairs) == cfg.cycles * cfg.epochs * cfg.batch
    assert not run.pairs["paired"].any()


def test_buffer_reused_after_the_call_still_pairs(tmp_path):
    """The fingerprint is taken when the Categorical is built, so a trainer that overwrites its
    observation buffer in place for the next step (a common pattern) pairs normally."""
    torch.manual_seed(6)
    actor = torch.nn.Linear(3, 4)
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    obs_buffer = torch.zeros(8, 3)
    stored_obs, stored_actions, stored_logp = [], [], []
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        for t in range(4):
            obs_buffer.copy_(torch.full((8, 3), float(t)) + torch.arange(8.0)[:, None])
            with torch.no_grad():
                dist = Categorical(logits=actor(obs_buffer))
                action = dist.sample()
                stored_logp.append(dist.log_prob(action))
            stored_obs.append(obs_buffer.clone())
            stored_actions.append(action)
        obs, actions, old = torch.cat(stored_obs), torch.cat(stored_actions), torch.cat(stored_logp)
        new = Categorical(logits=actor(obs)).log_prob(actions)
        loss = -(torch.exp(new - old) * torch.ones_like(new)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    pairs = ppo_probe.load(w.path).pairs
    assert len(pairs) == 32 and pairs["paired"].all()
    assert pairs["log_ratio"].abs().max() < 1e-6
    # dLoss/dlogp = -r / B for this loss: adv_eff recovers the advantage 1
    assert (pairs["adv_eff"] - 1.0).abs().max() < 1e-5


def test_multi_dimensional_batches_flatten_to_rows(tmp_path):
    torch.manual_seed(7)
    actor = torch.nn.Linear(5, 3)
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    obs = torch.randn(4, 6, 5)  # [B, T, obs]
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        with torch.no_grad():
            dist = Categorical(logits=actor(obs))  # batch shape [4, 6]
            action = dist.sample()
            old = dist.log_prob(action)
        new = Categorical(logits=actor(obs)).log_prob(action)
        (-(new - old).exp().mean()).backward()
        optim.step()
    run = ppo_probe.load(w.path)
    assert len(run.pairs) == 24 and run.pairs["paired"].all()
    assert (run.pairs["call_rows"] == 24).all()
    assert run.dists["rows"].tolist() == [24, 24]


def test_a_broadcast_log_prob_writes_each_row_with_its_distribution_rows_hash_and_logits(tmp_path):
    """log_prob of [3, B] actions on a [B] Categorical: each of the 3 x B rows is the dist row it
    broadcast from, in its fingerprint and in its kept logits (the flush's broadcast index)."""
    torch.manual_seed(12)
    actor = torch.nn.Linear(5, 3)
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    obs = torch.randn(4, 5)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True, logits_one_in=1) as w:
        with torch.no_grad():
            dist = Categorical(logits=actor(obs))
            dist.log_prob(dist.sample())  # [B]: the dist's own rows, in order
            dist.log_prob(torch.randint(0, 3, (3, 4)))
    samples = ppo_probe.load(w.path).table("samples").to_pandas()
    own, broadcast = samples[samples["call_rows"] == 4], samples[samples["call_rows"] == 12]
    assert len(own) == 4 and len(broadcast) == 12
    fp = broadcast["fingerprint"].to_numpy().reshape(3, 4)
    assert len(set(fp[0])) == 4 and (fp == own["fingerprint"].to_numpy()).all()  # row j: dist row j
    logits = np.stack(broadcast["logits"].to_numpy()).reshape(3, 4, 3)
    expected = dist.logits.numpy()
    assert np.allclose(logits, np.broadcast_to(expected, (3, 4, 3)))


def _probs_built_run(path, rows: int, **watch_kwargs):
    torch.manual_seed(8)
    actor = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softmax(-1))
    optim = torch.optim.SGD(actor.parameters(), lr=0.5 * rows / 16)  # the loss is a mean over rows
    obs = torch.randn(rows, 4)
    with ppo_probe.watch(actor, optim, out=path, strict=True, **watch_kwargs) as w:
        with torch.no_grad():
            dist = Categorical(probs=actor(obs))
            action = dist.sample()
            old = dist.log_prob(action)
        for _ in range(2):
            policy_now = actor(obs).detach()
            new = Categorical(probs=actor(obs)).log_prob(action)
            optim.zero_grad()
            (-(new - old).exp().mean()).backward()
            optim.step()
    # rows of the second step were computed by the policy after one step (policy_now)
    torch_kl = torch.distributions.kl_divergence(Categorical(probs=dist.probs), Categorical(probs=policy_now))
    return ppo_probe.load(w.path), torch_kl.double()


def test_probs_built_distribution_and_kept_logits(tmp_path):
    run, torch_kl = _probs_built_run(tmp_path / "run", 16, logits_one_in=1)
    assert run.pairs["paired"].all() and len(run.pairs) == 32
    second = run.pairs[run.pairs["epoch"] == 1]
    assert float(torch_kl.mean()) > 1e-3
    assert torch.allclose(torch.tensor(second["kl_exact"].to_numpy()), torch_kl, rtol=1e-4, atol=1e-7)
    assert (run.dists["entropy_norm"] > 0).all() and (run.dists["n_categories"] == 5).all()


def test_logits_kept_for_one_row_in_k_the_same_rows_at_sampling_and_update(tmp_path):
    """By default about one row in K (5 here) keeps its logits; which ones depends on the input
    alone, so every sample that has them at sampling has them in both update epochs, and the
    exact KL of those rows is torch's. The Categorical statistics still use every row."""
    run, torch_kl = _probs_built_run(tmp_path / "run", 2000)
    samples = run.table("samples").to_pandas()
    has = samples["logits"].notna()
    by_phase = samples.assign(has=has).groupby("phase")["has"].mean()
    assert 0.15 < by_phase["sampling"] < 0.25, by_phase  # binomial sd at 2000 rows: 0.009
    assert by_phase["sampling"] == by_phase["update"]
    kept_fps = set(samples.loc[has & (samples["phase"] == "sampling"), "fingerprint"])
    update = samples[samples["phase"] == "update"]
    assert (update["logits"].notna() == update["fingerprint"].isin(kept_fps)).all()
    second = run.pairs[run.pairs["epoch"] == 1].reset_index(drop=True)
    exact = second["kl_exact"].notna().to_numpy().copy()
    assert exact.sum() == has[samples["phase"] == "sampling"].sum()
    assert float(torch_kl.mean()) > 1e-3
    ours = torch.from_numpy(second["kl_exact"].to_numpy()[exact].copy())
    assert torch.allclose(ours, torch_kl[torch.from_numpy(exact)], rtol=1e-4, atol=1e-7)
    assert (run.dists["entropy_norm"] > 0).all() and (run.dists["rows"] == 2000).all()
    with pytest.raises(ValueError, match="logits_one_in"):
        ppo_probe.watch(logits_one_in=0)


def test_tensors_written_in_place_after_log_prob_are_counted_not_mispaired(tmp_path):
    torch.manual_seed(9)
    actor = torch.nn.Linear(3, 4)
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    obs = torch.randn(16, 3)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        with torch.no_grad():
            dist = Categorical(logits=actor(obs))
            action = dist.sample()
            old = dist.log_prob(action)
            stored = action.clone()
            action.fill_(0)  # the trainer reuses its action tensor: the recorded values are gone
        new = Categorical(logits=actor(obs)).log_prob(stored)
        (-(new - old).exp().mean()).backward()
        optim.step()
    run = ppo_probe.load(w.path)
    assert run.meta["counts"]["calls_changed_after_record"] == 1
    sampling = run.samples[run.samples["phase"] == "sampling"]
    assert sampling["fingerprint"].isna().all()
    assert len(run.pairs) == 16 and not run.pairs["paired"].any()


def test_every_actor_of_a_dict_is_found_to_feed_its_logits(tmp_path):
    """The logits' graph is walked once per actor and cycle, not once per cycle: the second
    actor's parameters feed logits too."""
    from zoo import MappoConfig, make_mappo_actors, train_mappo

    cfg = MappoConfig(cycles=2)
    actors = make_mappo_actors(cfg)
    optim = torch.optim.Adam([p for a in actors.values() for p in a.parameters()], lr=cfg.lr)
    with ppo_probe.watch(actors, optim, out=tmp_path / "run") as w:
        train_mappo(cfg, actors, optim)
    params = ppo_probe.load(w.path).meta["actor_params"]
    assert len(actors) == 2 and len(params) == sum(len(list(a.parameters())) for a in actors.values())
    assert all(p["feeds_logits"] for p in params), [p["name"] for p in params if not p["feeds_logits"]]


def test_split_heads_pair_per_head_and_a_rebuilt_distribution_is_no_head(tmp_path):
    """CleanRL's MultiDiscrete: one forward, logits split into a Categorical per dimension. Each
    slice is a head; a Categorical built again from the first slice (an entropy recomputation)
    is not a third head."""
    torch.manual_seed(0)
    nvec = (3, 4)
    actor = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, sum(nvec)))
    optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    obs = torch.randn(128, 5)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        for _cycle in range(2):
            with torch.no_grad():
                heads = [Categorical(logits=s) for s in torch.split(actor(obs), nvec, dim=1)]
                action = torch.stack([h.sample() for h in heads], dim=1)
                old_logp = sum(h.log_prob(a) for h, a in zip(heads, action.T))
            adv = torch.randn(128)
            for _epoch in range(2):
                split = torch.split(actor(obs), nvec, dim=1)
                heads = [Categorical(logits=s) for s in split]
                logp = sum(h.log_prob(a) for h, a in zip(heads, action.T))
                extra_entropy = Categorical(logits=split[0]).entropy().mean()
                ratio = (logp - old_logp).exp()
                loss = -(ratio * adv).mean() - 0.01 * extra_entropy
                optim.zero_grad()
                loss.backward()
                optim.step()
    run = ppo_probe.load(w.path)
    assert sorted(set(run.dists["head"])) == [0, 1]
    pairs = run.pairs
    assert len(pairs) == 2 * 2 * 128 * len(nvec)
    assert pairs["paired"].all()
    assert set(pairs["head"]) == {0, 1}


def test_separate_head_modules_are_heads_of_one_forward(tmp_path):
    """A MultiDiscrete policy with one head module per action dimension (a ModuleList whose
    outputs the forward returns as a list): every head pairs, and no false unpaired-samples. A
    Categorical built again from a head's logits is still no further head."""
    torch.manual_seed(1)

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh())
            self.heads = torch.nn.ModuleList([torch.nn.Linear(32, 3), torch.nn.Linear(32, 4)])

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            h = self.body(x)
            return [head(h) for head in self.heads]

    actor = Policy()
    optim = torch.optim.Adam(actor.parameters(), lr=3e-3)
    sampled = []  # per cycle, per head: the normalized logits sampled from
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        for _cycle in range(2):
            obs = torch.randn(128, 6)
            with torch.no_grad():
                dists = [Categorical(logits=logits) for logits in actor(obs)]
                sampled.append([d.logits.clone() for d in dists])
                actions = [d.sample() for d in dists]
                old = sum(d.log_prob(a) for d, a in zip(dists, actions))
            adv = torch.randn(128)
            for _epoch in range(2):
                for idx in torch.randperm(128).split(64):
                    out = actor(obs[idx])
                    new = sum(Categorical(logits=lg).log_prob(a[idx]) for lg, a in zip(out, actions))
                    entropy = Categorical(logits=out[1]).entropy().mean()  # rebuilt: no third head
                    ratio = (new - old[idx]).exp()
                    loss = -torch.min(ratio * adv[idx], ratio.clamp(0.8, 1.2) * adv[idx]).mean() - 0.01 * entropy
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
    report = ppo_probe.analyze(w.path)
    pairs = report.run.pairs
    assert sorted(set(report.run.dists["head"])) == [0, 1]
    assert len(pairs) == 2 * 2 * 128 * 2 and bool(pairs["paired"].all())
    assert (pairs["actor"] == "actor").all()
    assert "unpaired-samples" not in report.ids
    # logits of two K (3 and 4) in one flush: each row's kept logits are its own, so at a cycle's
    # first step (the policy still the sampling one) the exact KL of every row that has them is 0
    first = pairs[pairs["step"] == pairs.groupby("cycle")["step"].transform("min")]
    for head in (0, 1):
        kl = first.loc[first["head"] == head, "kl_exact"].dropna()
        assert len(kl) > 0 and float(kl.abs().max()) < 1e-6, (head, kl.describe())
    # and they are the trainer's own: each kept sampling row holds the logits it was sampled from
    samples = report.run.samples  # the logits column only in the raw table
    samples = samples.assign(within=samples.groupby("call_id").cumcount(),
                             logits=report.run.table("samples").column("logits").to_pylist())
    kept = samples[(samples["phase"] == "sampling") & samples["logits"].notna()]
    assert set(kept["head"]) == {0, 1} and 0.1 * 512 < len(kept) < 0.5 * 512
    for row in kept.itertuples():
        expected = sampled[row.cycle][row.head][row.within].numpy()
        assert len(row.logits) == len(expected) and np.allclose(row.logits, expected, atol=1e-6)


def _two_calls_per_step(tmp_path, accumulate: bool):
    """A bandit PPO whose every optimizer step is fed by two log_prob calls of 64 rows: two
    micro-batches with ``(loss / 2).backward()`` each (gradient accumulation), or one backward of
    the sum of two agents' mean losses (a shared policy looped over agents)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optim = torch.optim.Adam(net.parameters(), lr=3e-3)
    target = torch.randn(6, 4)
    with ppo_probe.watch(net, optim, out=tmp_path / ("accumulated" if accumulate else "summed"), strict=True) as w:
        for _cycle in range(3):
            obs = torch.randn(256, 6)
            with torch.no_grad():
                dist = Categorical(logits=net(obs))
                action = dist.sample()
                old = dist.log_prob(action)
            reward = (obs @ target).softmax(-1).gather(1, action[:, None]).squeeze(1)
            for _epoch in range(2):
                for idx in torch.randperm(256).split(128):
                    optim.zero_grad()
                    total = 0.0
                    for part in idx.split(64):
                        adv = (reward[part] - reward[part].mean()) / (reward[part].std() + 1e-8)
                        ratio = (Categorical(logits=net(obs[part])).log_prob(action[part]) - old[part]).exp()
                        loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
                        if accumulate:
                            (loss / 2).backward()
                        else:
                            total = total + loss
                    if not accumulate:
                        total.backward()
                    optim.step()
    return ppo_probe.analyze(w.path)


@pytest.mark.parametrize("accumulate", [True, False], ids=["gradient accumulation", "summed means"])
def test_adv_eff_divides_by_the_loss_rows_of_each_backward_pass(tmp_path, accumulate):
    """adv_eff is the normalized advantage either way: with two backward passes per step the
    mean-reduced loss's B is both micro-batches (128), with one pass each call's own (64)."""
    report = _two_calls_per_step(tmp_path, accumulate)
    pairs = report.run.pairs
    assert (pairs["call_rows"] == 64).all()
    assert (pairs["loss_rows"] == (128 if accumulate else 64)).all()
    # per-step normalization: the unclipped rows' effective advantages have std ~1 and mean ~0
    assert 0.8 < float(report.per_step["adv_eff_std"].median()) < 1.1
    assert "advantages-not-normalized" not in report.ids and "loss-sum-reduction" not in report.ids


def test_bf16_autocast_on_the_update_path_only_is_no_mismatch(tmp_path):
    """Sampling in fp32 and updating under bf16 autocast differ by float precision only (a first
    step |log r| that grows with the logits, ~1-2% here): no sampling-update-mismatch; the same
    trainer with a temperature of 1.5 on its sampling path still raises it."""
    def run(temperature: float, name: str):
        net = precision_mlp(logit_scale=20)  # confident logits (spread ~2.3): bf16's error grows with them
        optim = torch.optim.Adam(net.parameters(), lr=3e-4)
        with ppo_probe.watch(net, optim, out=tmp_path / name) as w:
            train_bf16_update(net, optim, temperature)
        return ppo_probe.analyze(w.path)

    precision = run(1.0, "bf16")
    pairs = precision.run.pairs
    first = pairs[pairs["step"] == pairs.groupby("cycle")["step"].transform("min")]  # before any step
    # the paths do differ: on most rows by more than 1e-3, on 10% by more than 1% of the ratio
    deviation = first["log_ratio"].abs()
    assert (deviation > 1e-3).mean() > 0.5 and deviation.quantile(0.9) > 0.01 and deviation.max() < 0.1
    assert "sampling-update-mismatch" not in precision.ids
    assert "sampling-update-mismatch" in run(1.5, "tempered").ids


def test_observation_stays_the_input_past_many_calls_before_the_head(tmp_path):
    """A recurrent update steps its cell once per timestep between the encoder and the head: with
    80 timesteps, 80 calls stand between the observation and the Categorical. The observation must
    still be the attributed input (the kept entries are the earliest and the latest, not only the
    latest)."""
    torch.manual_seed(7)
    envs, steps, k = 4, 80, 3
    actor = torch.nn.ModuleDict({"enc": torch.nn.Linear(5, 16), "cell": torch.nn.GRUCell(16, 16),
                                 "head": torch.nn.Linear(16, k)})
    optim = torch.optim.Adam(actor.parameters(), lr=3e-3)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        for _ in range(2):
            obs = torch.randn(steps, envs, 5)
            actions, old_logp = [], []
            with torch.no_grad():
                h = torch.zeros(envs, 16)
                for t in range(steps):
                    h = actor["cell"](actor["enc"](obs[t]), h)
                    dist = Categorical(logits=actor["head"](h))
                    a = dist.sample()
                    actions.append(a)
                    old_logp.append(dist.log_prob(a))
            actions_all, old_all = torch.stack(actions).reshape(-1), torch.stack(old_logp).reshape(-1)
            adv = torch.randn(steps * envs)
            for _ in range(2):
                x = actor["enc"](obs.reshape(-1, 5)).reshape(steps, envs, 16)
                h, hs = torch.zeros(envs, 16), []
                for t in range(steps):
                    h = actor["cell"](x[t], h)
                    hs.append(h)
                dist = Categorical(logits=actor["head"](torch.stack(hs).reshape(-1, 16)))
                ratio = (dist.log_prob(actions_all) - old_all).exp()
                loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
    run = ppo_probe.load(w.path)
    update = run.dists[run.dists["grad_enabled"]]
    assert (update["entry"] == "enc").all()
    assert len(run.pairs) == 2 * 2 * steps * envs
    assert run.pairs["paired"].all()
    assert run.padding_rows == 0


class _NumpyActor(torch.nn.Module):
    """Tianshou's shape of actor: it is handed the NumPy observation array and makes the
    tensor inside its trunk (``Net`` runs ``torch.as_tensor``), and the trunk is shared with
    the critic."""

    def __init__(self, trunk: torch.nn.Module, n_actions: int) -> None:
        super().__init__()
        self.preprocess = trunk
        self.last = torch.nn.Linear(32, n_actions)

    def forward(self, obs: np.ndarray) -> torch.Tensor:
        return self.last(self.preprocess(obs))


class _Trunk(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.Tanh())

    def forward(self, obs: np.ndarray) -> torch.Tensor:
        return self.model(torch.as_tensor(obs, dtype=torch.float32))


def _train_numpy_obs_ppo(actor: _NumpyActor, critic_head: torch.nn.Module, optim, cycles: int = 4) -> None:
    """PPO as Tianshou 2 runs it, on CartPole: the rollout builds its Categoricals in grad mode
    and only samples; log-probs of the rollout are recomputed under no_grad before the update;
    each minibatch calls the critic on the very observation array after the distribution."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(4)])
    obs, _ = envs.reset(seed=0)
    critic = lambda o: critic_head(actor.preprocess(o)).squeeze(-1)  # noqa: E731
    for _ in range(cycles):
        batch_obs, batch_act, rewards, dones = [], [], [], []
        for _ in range(32):
            act = Categorical(logits=actor(obs)).sample()  # grad mode, as Tianshou's collector
            batch_obs.append(obs)
            batch_act.append(act)
            obs, r, term, trunc, _ = envs.step(act.numpy())
            rewards.append(r)
            dones.append(term | trunc)
        all_obs = np.concatenate(batch_obs).astype(np.float32)
        acts = torch.cat(batch_act)
        with torch.no_grad():
            values = critic(all_obs)
            ret = torch.as_tensor(np.concatenate(rewards), dtype=torch.float32)
            adv = ret - values
            logp_old = Categorical(logits=actor(all_obs)).log_prob(acts)
        for _ in range(3):
            for idx in np.array_split(np.random.default_rng(0).permutation(len(all_obs)), 4):
                mb_obs = all_obs[idx]  # one array for the actor and the critic, as minibatch.obs
                dist = Categorical(logits=actor(mb_obs))
                ratio = (dist.log_prob(acts[idx]) - logp_old[idx]).exp()
                a = (adv[idx] - adv[idx].mean()) / (adv[idx].std() + 1e-8)
                clip_loss = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()
                value_loss = (ret[idx] - critic(mb_obs)).pow(2).mean()
                optim.zero_grad()
                (clip_loss + 0.5 * value_loss - 0.01 * dist.entropy().mean()).backward()
                optim.step()
    envs.close()


@pytest.mark.parametrize("watched", ["actor", "everything"])
def test_an_actor_handed_numpy_observations_pairs_on_the_array(tmp_path, watched):
    """Before the array counted as the input, the watched actor's first tensor input was its
    head's (the shared trunk's features, which every step changes): 3.1% of Tianshou's update rows paired."""
    torch.manual_seed(0)
    actor = _NumpyActor(_Trunk(4), 2)
    critic_head = torch.nn.Linear(32, 1)
    optim = torch.optim.Adam([*actor.parameters(), *critic_head.parameters()], lr=3e-3)
    target = actor if watched == "actor" else None
    with ppo_probe.watch(target, optim if target is not None else None, out=tmp_path / "run", every=1,
                         strict=True) as w:
        _train_numpy_obs_ppo(actor, critic_head, optim)
    report = ppo_probe.analyze(w.path)
    pairs = report.run.pairs
    assert len(pairs) == 4 * 3 * 128
    assert pairs["paired"].all()
    assert report.per_cycle["n_epochs"].eq(3).all()
    assert report.per_cycle["kl_k3"].gt(0).all()
    assert report.per_cycle["first_step_max_abs_log_ratio"].max() < 1e-5
    assert not report.diagnostics["severity"].eq("error").any(), report.diagnostics
    # the rollout's grad-mode Categoricals are dropped right after sample(): still a rollout's
    # (before, all 128 counted as update Categoricals, in the per-step entropy among others)
    grad_mode = report.run.dists[report.run.dists["grad_enabled"]]
    assert int(grad_mode["sampled"].sum()) == 4 * 32 and int((~grad_mode["sampled"]).sum()) == 4 * 3 * 4


def test_a_read_only_numpy_observation_pairs_and_the_probe_raises_no_torch_warning(tmp_path):
    """torch.from_numpy of a read-only array warns once per process (so a fresh one here); the
    probe must not be the one to spend that warning: it copies such an array instead of viewing
    it, and the trainer's own conversion then warns, from the trainer's line."""
    script = f"""
import sys, warnings
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np, torch, ppo_probe
from torch.distributions import Categorical
from test_pairing_rules import _NumpyActor, _Trunk
torch.manual_seed(0)
actor = _NumpyActor(_Trunk(4), 2)
optim = torch.optim.SGD(actor.parameters(), lr=0.1)
obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
obs.setflags(write=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with ppo_probe.watch(actor, optim, out={str(tmp_path / "run")!r}, strict=True) as w:
        for _ in range(3):
            with torch.no_grad():
                dist = Categorical(logits=actor(obs))
                act = dist.sample()
                dist.log_prob(act)
            for _ in range(2):
                loss = -Categorical(logits=actor(obs)).log_prob(act).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
print("probe warnings", [str(m.message)[:80] for m in caught if "ppo_probe" in m.filename])
print("paired", ppo_probe.analyze(w.path).paired_fraction)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "probe warnings []" in done.stdout, done.stdout
    assert "paired 1.0" in done.stdout, done.stdout


class _OwnLogProb(Categorical):
    """Computes log_prob and entropy without Categorical's (as TorchRL's MaskedCategorical)."""

    def log_prob(self, value):
        return -torch.nn.functional.cross_entropy(self.logits, value, reduction="none")

    def entropy(self):
        return -(self.probs * self.logits).sum(-1)


class _SuperLogProb(Categorical):
    """Overrides log_prob and entropy but calls Categorical's: one event each, not two."""

    def log_prob(self, value):
        return super().log_prob(value)

    def entropy(self):
        return super().entropy()


@pytest.mark.parametrize("cls", [_OwnLogProb, _SuperLogProb])
def test_categorical_subclasses_overriding_log_prob_are_seen_once(tmp_path, cls):
    torch.manual_seed(0)
    actor = torch.nn.Linear(3, 4)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-2)
    obs = torch.randn(32, 3)
    own = {name: cls.__dict__[name] for name in ("log_prob", "entropy")}
    calls = 0
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", every=1, strict=True) as w:
        for _ in range(3):
            with torch.no_grad():
                dist = cls(logits=actor(obs))
                act = dist.sample()
                dist.log_prob(act)
                calls += 1
            adv = torch.randn(32)
            for _ in range(2):
                dist = cls(logits=actor(obs))
                loss = -(dist.log_prob(act) * adv).mean() - 0.01 * dist.entropy().mean()
                calls += 1
                optim.zero_grad()
                loss.backward()
                optim.step()
    # the subclass's own functions are back after the watch
    assert all(cls.__dict__[name] is fn for name, fn in own.items())
    report = ppo_probe.analyze(w.path)
    counts = report.run.meta["counts"]
    assert counts["log_prob_calls"] == calls and counts["untracked_log_prob_calls"] == 0
    assert report.paired_fraction == 1.0 and len(report.run.pairs) == 3 * 2 * 32
    assert report.run.dists.loc[report.run.dists["grad_enabled"], "grad_entropy"].notna().all()
    assert report.per_cycle["kl_k3"].gt(0).all()


def test_samples_of_one_input_and_action_under_different_masks_pair_by_their_own_mask(tmp_path):
    """A mask that is not a function of the observation (drawn afresh every step, stored and
    rebuilt at update), K = 100 (the mask is hashed, not a bitmask), 4 distinct observations: most
    (observation, action)s are sampled several times under different masks. Each update row must
    pair with the sample drawn under its own mask: per-cycle kl_k3 (the last epoch's mean, as
    SB3's approx_kl) equals the trainer's own."""
    torch.manual_seed(0)
    k, rows = 100, 256
    actor = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, k))
    optim = torch.optim.Adam(actor.parameters(), lr=3e-3)
    trainer_kl = []
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", every=1, strict=True) as w:
        for _ in range(3):
            obs = torch.eye(4)[torch.randint(4, (rows,))]
            valid = torch.rand(rows, k) < 0.5
            valid[:, 0] = True
            with torch.no_grad():
                dist = Categorical(logits=actor(obs).masked_fill(~valid, -1e8))
                action = dist.sample()
                old = dist.log_prob(action)
            advantage = (action == obs.argmax(1)).float() - 0.02
            for _epoch in range(4):
                kls = []
                for idx in torch.randperm(rows).split(64):
                    new = Categorical(logits=actor(obs[idx]).masked_fill(~valid[idx], -1e8)).log_prob(action[idx])
                    log_ratio = new - old[idx]
                    ratio = log_ratio.exp()
                    adv = advantage[idx]
                    loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
                    kls.append(float(((ratio - 1) - log_ratio).mean().detach()))
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
            trainer_kl.append(np.mean(kls))
    report = ppo_probe.analyze(w.path)
    sampling = report.run.samples[report.run.samples["phase"] == "sampling"]
    assert sampling.groupby(["cycle", "fingerprint", "action"])["mask"].nunique().gt(1).sum() > 10
    assert report.paired_fraction == 1.0
    assert max(trainer_kl) > 1e-3
    np.testing.assert_allclose(report.per_cycle["kl_k3"], trainer_kl, rtol=1e-4)


def test_a_subclass_is_not_kept_alive_by_the_watch(tmp_path):
    """The patch goes in and out at every skipped cycle; the wrappers of Categorical's own methods
    are made once and kept, but a user's subclass (whose super() call holds its class) must not
    be: once the user drops it, it is collected."""
    import gc
    import weakref

    class Local(Categorical):
        def log_prob(self, value):
            return super().log_prob(value)

    torch.manual_seed(0)
    actor = torch.nn.Linear(3, 4)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-2)
    obs = torch.randn(16, 3)
    with ppo_probe.watch(actor, optim, out=tmp_path / "run", strict=True) as w:
        for _ in range(12):  # the default schedule records 0-7 and skips 8-11
            with torch.no_grad():
                dist = Local(logits=actor(obs))
                act = dist.sample()
                dist.log_prob(act)
            loss = -(Local(logits=actor(obs)).log_prob(act) * torch.randn(16)).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
    assert ppo_probe.analyze(w.path).paired_fraction == 1.0
    gone = weakref.ref(Local)
    del Local, dist
    gc.collect()
    assert gone() is None
