"""Paired fraction and diagnostics of each real trainer the probe is tested on, unchanged (issue 6).

Trains each one briefly under the probe, as its test in tests/ does, and prints one row per
trainer: update rows, paired fraction, median per-cycle KL and the diagnostics raised (id and
severity). Healthy trainers at their default settings should raise no error; `update-too-small`
is expected at default learning rates (KL under 0.2 x the 0.02 target).

Tianshou's row runs only where tianshou is installed (it is not a test dependency).

Usage: python benchmarks/integrations.py [--only WORD ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

import ppo_probe  # noqa: E402


def cleanrl(out: Path) -> Path:
    from example_overhead import load_example

    ex = load_example()
    cfg = ex.Config(seed=1, total_timesteps=8192)
    envs, agent, optimizer = ex.build(cfg)
    with ppo_probe.watch(agent, optimizer, out=out) as w:
        ex.train(cfg, envs, agent, optimizer)
    return w.path


def zoo(case: str) -> Callable[[Path], Path]:
    def run(out: Path) -> Path:
        from zoo import run_case

        return run_case(case, out)

    return run


def sb3_multidiscrete(out: Path) -> Path:
    import stable_baselines3 as sb3
    from test_sb3 import _TwoHeadBandit

    model = sb3.PPO("MlpPolicy", _TwoHeadBandit(), n_steps=256, batch_size=64, n_epochs=4,
                    learning_rate=3e-3, seed=0, device="cpu", verbose=0)
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=out) as w:
        model.learn(total_timesteps=256 * 5)
    return w.path


def sb3_preprocessed(env_kind: str) -> Callable[[Path], Path]:
    """SB3 PPO where preprocess_obs makes another tensor: one-hot Discrete observations (Taxi-v4),
    uint8 images (CnnPolicy), a dict of an image and a vector (MultiInputPolicy)."""

    def run(out: Path) -> Path:
        import stable_baselines3 as sb3
        from test_sb3 import _DictImages, _Images

        env, policy = {"taxi": ("Taxi-v4", "MlpPolicy"), "images": (_Images(), "CnnPolicy"),
                       "dict": (_DictImages(), "MultiInputPolicy")}[env_kind]
        model = sb3.PPO(policy, env, n_steps=256, batch_size=64, n_epochs=4, seed=0, device="cpu", verbose=0)
        with ppo_probe.watch(model.policy, model.policy.optimizer, out=out) as w:
            model.learn(256 * 4)
        return w.path

    return run


def maskable_ppo(out: Path) -> Path:
    from sb3_contrib import MaskablePPO
    from test_sb3_contrib import MaskedChoice

    model = MaskablePPO("MlpPolicy", MaskedChoice(), n_steps=256, batch_size=64, n_epochs=4,
                        seed=0, device="cpu", verbose=0)
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=out) as w:
        model.learn(total_timesteps=256 * 5)
    return w.path


def recurrent_ppo(out: Path) -> Path:
    from sb3_contrib import RecurrentPPO

    model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=128, seed=0, device="cpu")
    with ppo_probe.watch(model.policy, model.policy.optimizer, out=out) as w:
        model.learn(8 * 128)
    return w.path


def sb3_callback(out: Path) -> Path:
    import stable_baselines3 as sb3

    from ppo_probe.integrations.sb3 import ProbeCallback

    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, n_epochs=4, seed=0,
                    device="cpu", verbose=0)
    probe = ProbeCallback(out=out)
    model.learn(256 * 5, callback=probe)
    return probe.path


def torchrl(out: Path) -> Path:
    from test_torchrl import _train

    report, _ = _train("actor", out)
    return report.run.path


def skrl_ppo(out: Path) -> Path:
    from test_skrl import _train

    return _train(out, scaler=False).run.path


def tianshou_ppo(out: Path) -> Path:
    """Tianshou 2's PPO on CartPole as its test/discrete/test_ppo_discrete.py builds it (shared
    trunk, no advantage normalization), shrunk to 6 collect / update cycles; the actor watched.
    Not a test dependency: tianshou 2.0.1 pins pandas < 3 (`pip install tianshou --no-deps` and
    its other requirements runs it)."""
    import gymnasium as gym
    import numpy as np
    import torch
    from tianshou.algorithm import PPO
    from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OnPolicyTrainerParams
    from tianshou.utils.net.common import ActorCritic, Net
    from tianshou.utils.net.discrete import DiscreteActor, DiscreteCritic

    np.random.seed(0)
    torch.manual_seed(0)
    train_envs = DummyVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(8)])
    test_envs = DummyVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
    train_envs.seed(0)
    test_envs.seed(0)
    net = Net(state_shape=(4,), hidden_sizes=[64, 64])
    actor = DiscreteActor(preprocess_net=net, action_shape=2)
    critic = DiscreteCritic(preprocess_net=net)
    for m in ActorCritic(actor, critic).modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.orthogonal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    policy = DiscreteActorPolicy(actor=actor, dist_fn=torch.distributions.Categorical,
                                 action_space=gym.spaces.Discrete(2), deterministic_eval=True)
    algorithm = PPO(policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=3e-4), max_grad_norm=0.5,
                    eps_clip=0.2, vf_coef=0.5, ent_coef=0.0, gae_lambda=0.95, advantage_normalization=False)
    params = OnPolicyTrainerParams(
        training_collector=Collector[CollectStats](algorithm, train_envs, VectorReplayBuffer(20000, 8)),
        test_collector=Collector[CollectStats](algorithm, test_envs),
        max_epochs=1, epoch_num_steps=3072, collection_step_num_env_steps=512,
        update_step_num_repetitions=4, batch_size=64, test_step_num_episodes=2, show_progress=False,
        verbose=False,
    )
    with ppo_probe.watch(actor, algorithm.optim._optim, out=out) as w:  # the torch optimizer inside
        algorithm.run_training(params)
    return w.path


def ddp(out: Path) -> Path:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


TRAINERS: dict[str, Callable[[Path], Path]] = {
    "CleanRL-style CartPole (examples/)": cleanrl,
    "SB3 PPO, Discrete (CartPole)": zoo("sb3_healthy"),
    "SB3 PPO, MultiDiscrete([3, 4])": sb3_multidiscrete,
    "SB3 PPO via ProbeCallback": sb3_callback,
    "SB3 PPO, Taxi-v4 (Discrete observations)": sb3_preprocessed("taxi"),
    "SB3 PPO, CnnPolicy (uint8 images)": sb3_preprocessed("images"),
    "SB3 PPO, MultiInputPolicy (image + vector)": sb3_preprocessed("dict"),
    "sb3-contrib MaskablePPO": maskable_ppo,
    "sb3-contrib RecurrentPPO (LSTM)": recurrent_ppo,
    "TorchRL ClipPPOLoss": torchrl,
    "skrl PPO (CategoricalMixin)": skrl_ppo,
    "Tianshou PPO (NumPy observations)": tianshou_ppo,
    "two-actor MAPPO with masks": zoo("mappo_healthy"),
    "DDP, 2 gloo ranks": ddp,
}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="only the trainers whose name holds one of these words")
    args = parser.parse_args()
    trainers = {name: train for name, train in TRAINERS.items()
                if args.only is None or any(w.lower() in name.lower() for w in args.only)}
    print("| trainer | update rows | paired | median per-cycle KL | diagnostics |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, train) in enumerate(trainers.items()):
            try:
                path = train(Path(tmp) / f"run{i}")
            except ImportError as exc:  # an optional library (tianshou) not installed here
                print(f"| {name} | not run: {exc} |  |  |  |", flush=True)
                continue
            report = ppo_probe.analyze(path)
            found = ", ".join(f"{r.id} ({r.severity})" for r in report.diagnostics.itertuples()) or "none"
            kl = report.per_cycle["kl_k3"].median()
            padding = f" (+{report.run.padding_rows:,} padding)" if report.run.padding_rows else ""
            print(f"| {name} | {len(report.run.pairs):,}{padding} | {report.paired_fraction:.2%} | {kl:.3g} | "
                  f"{found} |", flush=True)


if __name__ == "__main__":
    main()
