"""What dynamics randomisation costs at reset: the MuJoCo driver's reset, nominal vs randomised, vs reloading the XML.

For each env, `--resets` resets (default 300) of a MujocoDriver are timed one by one with perf_counter_ns, in three
modes:
- nominal: no randomisation (the driver's plain reset: gymnasium's reset_model);
- randomised: `resample: episode` with every range of drivers/randomisation.py open (masses and inertias, joint
  damping and friction loss, actuator force law, contact friction, latency, noise): a draw, the writes into the
  MjModel's arrays, mj_setConst, then the reset;
- reload: what randomising by editing the XML would cost instead, `gym.make(env_id)` + reset (the model compiled
  from its file each episode); timed `--reloads` times (default 20).
The overhead column is randomised minus nominal at the median. Prints a table and writes
bench/out/randomisation.json.

    python bench/randomisation.py [--envs acalign/PandaReach-v0 Hopper-v5 HalfCheetah-v5] [--resets 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

import acalign_robot.sim_tasks  # noqa: F401 - registers acalign/PandaReach-v0
from acalign_robot.config import to_dict
from acalign_robot.drivers.mujoco import MujocoDriver, RealismConfig, SimConfig
from acalign_robot.drivers.randomisation import RandomisationConfig

OUT = Path(__file__).parent / "out" / "randomisation.json"
EVERY_RANGE = RandomisationConfig(
    body_mass_scale=(0.8, 1.2),
    joint_damping_scale=(0.5, 2.0),
    joint_friction_scale=(0.5, 2.0),
    actuator_gain_scale=(0.9, 1.1),
    contact_friction_scale=(0.7, 1.3),
    action_delay_ticks=(0, 2),
    observation_noise_std=(0.0, 0.01),
)


def time_resets(reset, count: int) -> np.ndarray:
    reset()  # the first reset seeds and allocates: not what an episode costs
    samples = np.empty(count, dtype=np.int64)
    for i in range(count):
        start = time.perf_counter_ns()
        reset()
        samples[i] = time.perf_counter_ns() - start
    return samples


def summary_ms(samples: np.ndarray) -> dict:
    return {
        "p50_ms": round(float(np.percentile(samples, 50)) / 1e6, 4),
        "p99_ms": round(float(np.percentile(samples, 99)) / 1e6, 4),
        "max_ms": round(float(samples.max()) / 1e6, 4),
    }


def reload_and_reset(env_id: str):
    def reset():
        env = gym.make(env_id)
        env.reset(seed=0)
        env.close()

    return reset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=["acalign/PandaReach-v0", "Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--resets", type=int, default=300, help="timed resets per mode (default 300)")
    parser.add_argument("--reloads", type=int, default=20, help="timed XML reloads per env (default 20)")
    args = parser.parse_args()

    rows = {}
    for env_id in args.envs:
        nominal = MujocoDriver(SimConfig(env_id=env_id))
        randomised = MujocoDriver(SimConfig(env_id=env_id, realism=RealismConfig(randomisation=EVERY_RANGE)))
        rows[env_id] = {
            "nominal": summary_ms(time_resets(nominal.reset, args.resets)),
            "randomised": summary_ms(time_resets(randomised.reset, args.resets)),
            "reload": summary_ms(time_resets(reload_and_reset(env_id), args.reloads)),
        }
        rows[env_id]["overhead_p50_ms"] = round(
            rows[env_id]["randomised"]["p50_ms"] - rows[env_id]["nominal"]["p50_ms"], 4
        )
        for sim in (nominal, randomised):
            sim.close()

    print(f"driver reset cost, {args.resets} resets per mode ({args.reloads} for reload); p50 / p99 in ms")
    print(f"{'env':24s} {'nominal':>15s} {'randomised':>15s} {'overhead p50':>13s} {'reload XML':>15s}")
    for env_id, row in rows.items():
        cells = [f"{row[mode]['p50_ms']:.3f} / {row[mode]['p99_ms']:.3f}" for mode in ("nominal", "randomised")]
        reload = f"{row['reload']['p50_ms']:.1f} / {row['reload']['p99_ms']:.1f}"
        print(f"{env_id:24s} {cells[0]:>15s} {cells[1]:>15s} {row['overhead_p50_ms']:13.3f} {reload:>15s}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "load_average_1m": os.getloadavg()[0],
                    "python": platform.python_version(),
                    "mujoco": mujoco.__version__,
                    "gymnasium": gym.__version__,
                },
                "config": {"resets": args.resets, "reloads": args.reloads, "ranges": to_dict(EVERY_RANGE)},
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
