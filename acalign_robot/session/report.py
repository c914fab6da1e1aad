"""The session report written when a session ends: report.json, report.md and report.png in the session directory.

Sources: each controller's stats.json (episodes with their policy versions, tick timing, safety filter counts,
transition batches sent and dropped) and tick_latency_s.npy, the drivers' Stats (watchdog and e-stop counts, taken
before they stop), the learner's status.json (updates, transitions, gaps, duplicates, published version) and the
supervisor's event list (starts, restarts, exits). A robot computer installed without matplotlib
(deploy/requirements-controller.txt) gets report.json and report.md, and no plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_report"]

# What the controller's safety layer did: interventions of the filter, driver timeouts, the SAFE state and rollbacks.
SAFETY_KEYS = (
    "filter_nonfinite",
    "filter_clipped",
    "filter_rate_limited",
    "filter_safe_ticks",
    "driver_timeouts",
    "safe",
    "safe_reason",
    "safe_reaction_s",
    "rollbacks",
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _controller_row(name: str, stats: dict) -> dict:
    returns = stats.get("episode_returns") or []
    return {
        "robot": name,
        "ticks": stats.get("ticks", 0),
        "rate_hz": stats.get("achieved_rate_hz"),
        "target_hz": stats.get("target_rate_hz"),
        "tick_p50_ms": 1000 * stats.get("tick_p50_s", 0.0),
        "tick_p99_ms": 1000 * stats.get("tick_p99_s", 0.0),
        "deadline_misses": stats.get("deadline_misses", 0),
        "episodes": stats.get("episodes", 0),
        "first_return": returns[0] if returns else None,
        "last_return": returns[-1] if returns else None,
        "mean_return_last10": float(np.mean(returns[-10:])) if returns else None,
        "policy_version": stats.get("policy_version"),
        "swaps": stats.get("swaps", 0),
        "swap_rejections": sum((stats.get("swap_rejections") or {}).values()),
        "batches_sent": stats.get("transition_batches_sent", 0),
        "batches_dropped": stats.get("transition_batches_dropped", 0),
        "safe": stats.get("safe", False),
    }


def write_report(supervisor, failure: str | None) -> dict:
    directory: Path = supervisor.session_dir
    controllers = {
        p.name: _read_json(directory / p.name / "stats.json") for p in supervisor.processes if p.role == "controller"
    }
    learner = _read_json(directory / "learner" / "status.json")
    report = {
        "session": supervisor.config.session,
        "directory": str(directory),
        "failure": failure,
        "controllers": [_controller_row(name, stats) for name, stats in controllers.items()],
        "safety": {name: {key: stats.get(key) for key in SAFETY_KEYS} for name, stats in controllers.items()},
        "drivers": supervisor.driver_stats,
        "learner": learner,
        "events": supervisor.events,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (directory / "report.md").write_text(markdown(report))
    print(markdown_table(report))
    try:
        plot(directory, controllers, report)
        plotted = f"plot:   {directory / 'report.png'}"
    except ImportError:
        plotted = "plot:   none (matplotlib is not installed: a controller-only install)"
    print(f"\nreport: {directory / 'report.md'}\n{plotted}", flush=True)
    return report


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(report: dict) -> str:
    lines = [
        "| robot | ticks | rate Hz | tick p50 ms | tick p99 ms | misses | episodes | first return | last return "
        "| policy v | swaps | batches sent/dropped |",
        "|" + "---|" * 12,
    ]
    for row in report["controllers"]:
        lines.append(
            f"| {row['robot']} | {row['ticks']} | {_fmt(row['rate_hz'])} | {_fmt(row['tick_p50_ms'], 2)} | "
            f"{_fmt(row['tick_p99_ms'], 2)} | {row['deadline_misses']} | {row['episodes']} | "
            f"{_fmt(row['first_return'])} | {_fmt(row['last_return'])} | {row['policy_version']} | {row['swaps']} | "
            f"{row['batches_sent']}/{row['batches_dropped']} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    parts = [f"# Session {report['session']}", ""]
    if report["failure"]:
        parts += [f"**Failed:** {report['failure'].splitlines()[0]}", ""]
    parts += ["## Controllers", "", markdown_table(report), "", "## Safety", ""]
    for name, safety in report["safety"].items():
        parts.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in safety.items()))
    for name, stats in report["drivers"].items():
        keys = ("watchdog_events", "estops", "safe_action_steps", "clipped_actions", "bad_requests")
        parts.append(f"- {name} driver: " + ", ".join(f"{k} {stats.get(k)}" for k in keys))
    if report["learner"]:
        learner = report["learner"]
        keys = (
            "updates",
            "env_steps",
            "updates_per_s",
            "transitions_per_s",
            "buffer_size",
            "published_version",
            "gaps",
            "duplicates",
        )
        parts += ["", "## Learner", "", ", ".join(f"{k} {learner.get(k)}" for k in keys if k in learner)]
    parts += ["", "## Events", ""] + [
        f"- {e['t_s']:.1f} s {e['event']} {e['process']} {e['detail']}".rstrip() for e in report["events"]
    ]
    return "\n".join(parts) + "\n"


def plot(directory: Path, controllers: dict[str, dict], report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    returns_axis, latency_axis, safety_axis, transport_axis = axes.ravel()
    for name, stats in controllers.items():
        log = stats.get("episode_log") or []
        if log:
            seconds = [entry[1] for entry in log]
            returns = [entry[2] for entry in log]
            versions = [entry[3] for entry in log]
            points = returns_axis.scatter(seconds, returns, c=versions, cmap="viridis", s=12, label=name)
            for i in range(1, len(versions)):
                if versions[i] != versions[i - 1]:
                    returns_axis.axvline(seconds[i], color="grey", alpha=0.2, linewidth=0.8)
            figure.colorbar(points, ax=returns_axis, label="policy version")
        latency_path = directory / name / "tick_latency_s.npy"
        if latency_path.exists():
            latency_ms = 1000 * np.load(latency_path)
            if latency_ms.size:
                latency_axis.hist(latency_ms, bins=80, alpha=0.6, label=name, log=True)
    returns_axis.set(
        title="episode returns (colour: policy version; lines: swaps)", xlabel="session time (s)", ylabel="return"
    )
    latency_axis.set(title="tick latency", xlabel="ms", ylabel="ticks")
    counts: dict[str, int] = {}
    for safety in report["safety"].values():
        for key, value in safety.items():
            if key.startswith("filter_") or key == "driver_timeouts":
                counts[key] = counts.get(key, 0) + int(value or 0)
            elif key == "rollbacks":
                counts[key] = counts.get(key, 0) + len(value or [])
    for stats in report["drivers"].values():
        for key in ("watchdog_events", "estops", "safe_action_steps"):
            counts[f"driver_{key}"] = counts.get(f"driver_{key}", 0) + int(stats.get(key, 0))
    safety_axis.barh(list(counts), list(counts.values()))
    safety_axis.set(title="safety events", xlim=(0, max([1, *counts.values()]) * 1.1))
    transport = {
        "batches sent": sum(r["batches_sent"] for r in report["controllers"]),
        "batches dropped": sum(r["batches_dropped"] for r in report["controllers"]),
        "learner gaps": int(report["learner"].get("gaps", 0) or 0),
        "learner duplicates": int(report["learner"].get("duplicates", 0) or 0),
    }
    transport_axis.bar(list(transport), list(transport.values()))
    transport_axis.set(title="transition batches")
    transport_axis.tick_params(axis="x", labelrotation=15)
    for axis in (returns_axis, latency_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "report.png", dpi=100)
    plt.close(figure)
