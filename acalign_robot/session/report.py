"""The session report written when a session ends: report.json, report.md and report.png in the session directory.

Sources: each controller's stats.json (episodes with their policy versions, tick timing, the ticks that missed their
deadline, SAFE latches with their reasons, safety filter counts, transition batches sent and dropped) and
tick_latency_s.npy, the drivers' Stats (watchdog and e-stop counts, taken before they stop), the learner's
status.json (updates, transitions, gaps, duplicates, published version) and metrics.jsonl (losses, alpha, w, rates,
owed updates over time), and the supervisor's event list (starts, restarts, exits).

report.json holds every number; report.md opens with a one-screen summary (what ran, how long, returns, swaps,
deadline misses, safety events with their reasons, learner updates, then one verdict line per check) and leaves out
what is empty; report.png draws only the panels that have data. Times on the plot are session times: each process's
own clock is placed at its `ready` event, so they line up to within a process's start-up time.

A robot computer installed without matplotlib (deploy/requirements-controller.txt) gets report.json and report.md,
and no plot.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Recorded", "figure", "markdown", "read_recorded", "summary", "write_report"]

# What the controller's safety layer did: interventions of the filter, driver timeouts, the SAFE state and rollbacks.
SAFETY_KEYS = (
    "filter_nonfinite",
    "filter_clipped",
    "filter_rate_limited",
    "filter_safe_ticks",
    "driver_timeouts",
    "step_errors",
    "session_restarts",
    "safe",
    "safe_reason",
    "safe_reaction_s",
    "rollbacks",
    "safety_log",
)
# The controller's counts of what its safety layer did, in words (report.md and the plot's bars): (singular, plural).
CONTROLLER_SAFETY_COUNTS = {
    "filter_nonfinite": ("non-finite action", "non-finite actions"),
    "filter_clipped": ("clipped action", "clipped actions"),
    "filter_rate_limited": ("rate-limited action", "rate-limited actions"),
    "filter_safe_ticks": ("tick on the safe action", "ticks on the safe action"),
    "driver_timeouts": ("driver timeout", "driver timeouts"),
    "step_errors": ("driver error", "driver errors"),
    "session_restarts": ("new driver session", "new driver sessions"),
}
# The drivers' counts that are safety events (their Stats also carry steps, clears, ...), as (singular, plural).
DRIVER_SAFETY_KEYS = {
    "watchdog_events": ("watchdog event", "watchdog events"),
    "estops": ("e-stop", "e-stops"),
    "safe_action_steps": ("step on the safe action", "steps on the safe action"),
    "clipped_actions": ("clipped action", "clipped actions"),
    "bad_requests": ("bad request", "bad requests"),
}
# More versions than this are drawn as contiguous ranges of versions, one colour each: a legend stays readable.
MAX_VERSION_COLOURS = 10
# The learner's curves: (title, metrics.jsonl keys). Each key is drawn when some record holds it.
LEARNER_PANELS = (
    ("learner: critic loss", ("loss/critic",)),
    ("learner: temperature alpha and prior weight w", ("alpha", "w")),
)


@dataclass
class Recorded:
    """What the processes left on disk for the report."""

    controllers: dict[str, dict] = field(default_factory=dict)  # robot -> stats.json
    latency_s: dict[str, np.ndarray] = field(default_factory=dict)  # robot -> whole-tick durations, oldest first
    learner_metrics: list[dict] = field(default_factory=list)  # metrics.jsonl records, in order


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a kill mid-write: the others still count
            continue
    return records


def read_recorded(directory: Path, controller_names: list[str], learner_metrics: Path | None) -> Recorded:
    recorded = Recorded()
    for name in controller_names:
        recorded.controllers[name] = _read_json(directory / name / "stats.json")
        latency_path = directory / name / "tick_latency_s.npy"
        if latency_path.exists():
            recorded.latency_s[name] = np.load(latency_path)
    if learner_metrics is not None:
        recorded.learner_metrics = _read_jsonl(learner_metrics)
    return recorded


def _controller_row(name: str, stats: dict) -> dict:
    returns = stats.get("episode_returns") or []
    log = stats.get("episode_log") or []
    target_hz = stats.get("target_rate_hz")
    return {
        "robot": name,
        "ticks": stats.get("ticks", 0),
        "rate_hz": stats.get("achieved_rate_hz"),
        "target_hz": target_hz,
        "deadline_ms": 1000 / target_hz if target_hz else None,
        "tick_p50_ms": 1000 * stats.get("tick_p50_s", 0.0),
        "tick_p99_ms": 1000 * stats.get("tick_p99_s", 0.0),
        "tick_max_ms": 1000 * stats.get("tick_max_s", 0.0),
        "deadline_misses": stats.get("deadline_misses", 0),
        "episodes": stats.get("episodes", 0),
        "first_return": returns[0] if returns else None,
        "last_return": returns[-1] if returns else None,
        "mean_return_first10": float(np.mean(returns[:10])) if returns else None,
        "mean_return_last10": float(np.mean(returns[-10:])) if returns else None,
        "first_policy_version": log[0][3] if log else None,
        "policy_version": stats.get("policy_version"),
        "swaps": stats.get("swaps", 0),
        "swap_rejections": sum((stats.get("swap_rejections") or {}).values()),
        "last_rejection": stats.get("last_rejection") or None,
        "batches_sent": stats.get("transition_batches_sent", 0),
        "batches_dropped": stats.get("transition_batches_dropped", 0),
        "learner_has_every_batch": stats.get("learner_has_every_batch"),
        "safe": stats.get("safe", False),
    }


def _robot_description(robot) -> dict:
    driver = robot.driver
    target = driver.env_id or driver.sim or driver.log
    return {"name": robot.name, "driver": f"{driver.kind} {target}" if target else driver.kind}


def write_report(supervisor, failure: str | None) -> dict:
    directory: Path = supervisor.session_dir
    names = [p.name for p in supervisor.processes if p.role == "controller"]
    learner_config = supervisor.resolved.learner
    has_learner = any(p.role == "learner" for p in supervisor.processes)
    metrics_path = None
    if has_learner:
        metrics_path = (
            Path(learner_config.metrics) if learner_config.metrics else directory / "learner" / "metrics.jsonl"
        )
    recorded = read_recorded(directory, names, metrics_path)
    report = {
        "session": supervisor.config.session,
        "directory": str(directory),
        "failure": failure,
        "duration_s": max((e["t_s"] for e in supervisor.events), default=0.0),
        "robots": [_robot_description(robot) for robot in supervisor.resolved.robots if robot.name in names],
        "controllers": [_controller_row(name, stats) for name, stats in recorded.controllers.items()],
        # plus, for a driver that declares robot limits, the ticks held or latched by each limit (filter_limit_*)
        "safety": {
            name: {key: stats.get(key) for key in SAFETY_KEYS}
            | {key: value for key, value in stats.items() if key.startswith("filter_limit_")}
            for name, stats in recorded.controllers.items()
        },
        "drivers": supervisor.driver_stats,
        "learner": _read_json(directory / "learner" / "status.json") if has_learner else {},
        "events": supervisor.events,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (directory / "report.md").write_text(markdown(report))
    print("\n".join(summary(report)) + "\n\n" + markdown_table(report))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        drawn = figure(report, recorded)
        drawn.savefig(directory / "report.png", dpi=100)
        plt.close(drawn)
        plotted = f"plot:   {directory / 'report.png'}"
    except ImportError:
        plotted = "plot:   none (matplotlib is not installed: a controller-only install)"
    print(f"\nreport: {directory / 'report.md'}\n{plotted}", flush=True)
    return report


# --- report.md ------------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _ended(report: dict) -> str:
    if report["failure"]:
        return "failed"
    stops = [e["detail"] for e in report["events"] if e["event"] == "stop"]
    return stops[-1] if stops else "stopped"


def _latches(report: dict, robot: str) -> list[tuple[int, float, str]]:
    """`robot`'s SAFE latches as (tick, session time, reason): the controller times them from its run's start,
    which is its last `ready` event."""
    offset = (_ready_times(report["events"], robot) or [0.0])[-1]
    return [(tick, offset + t_s, reason) for tick, t_s, reason in report["safety"][robot].get("safety_log") or []]


def _safety_events(report: dict, robot: str) -> list[str]:
    """One phrase per kind of safety event of `robot` (nothing when there was none)."""
    safety = report["safety"].get(robot, {})
    phrases = []
    latches = _latches(report, robot)
    if latches:
        reasons = Counter(reason for _, _, reason in latches)
        first_s = {reason: t_s for _, t_s, reason in reversed(latches)}
        phrases.append(
            "SAFE latched "
            + "; ".join(f"{count}x '{reason}' (first at {first_s[reason]:.1f} s)" for reason, count in reasons.items())
        )
    elif safety.get("safe") and safety.get("safe_reason"):  # a stats.json from before safety_log was kept
        phrases.append(f"SAFE latched: '{safety['safe_reason']}'")
    if safety.get("safe"):
        phrases.append("still SAFE at the end")
    counted = [_plural(safety[key], *words) for key, words in CONTROLLER_SAFETY_COUNTS.items() if safety.get(key)]
    if counted:
        phrases.append(", ".join(counted))
    rollbacks = safety.get("rollbacks") or []
    if rollbacks:
        phrases.append("rolled back " + ", ".join(f"v{bad} -> v{good}" for bad, good in rollbacks))
    driver = report["drivers"].get(robot) or {}
    driver_counted = [_plural(driver[key], *words) for key, words in DRIVER_SAFETY_KEYS.items() if driver.get(key)]
    if driver_counted:
        phrases.append("driver: " + ", ".join(driver_counted))
    return phrases


def _learner_line(report: dict) -> str:
    learner = report["learner"]
    if not learner:
        return "- learner: none in this session"
    parts = [
        f"{learner.get('updates', 0)} updates ({_fmt(learner.get('updates_per_s'))}/s)",
        f"{learner.get('transitions_received', learner.get('env_steps', 0))} transitions",
        f"published v{learner.get('published_version')}",
        f"{learner.get('owed_updates', 0)} updates owed at the end",
    ]
    if learner.get("alpha") is not None:
        parts.append(f"alpha {learner['alpha']:.3g}")
    if learner.get("w") is not None:
        parts.append(f"w {learner['w']:.3g}")
    return "- learner: " + ", ".join(parts)


def _verdicts(report: dict) -> list[str]:
    """One line per check: `ok` when it holds, `CHECK` when a person should look."""
    lines = []
    if report["failure"]:
        lines.append(f"CHECK the session failed: {report['failure'].splitlines()[0]}")
    for row in report["controllers"]:
        robot, episodes = row["robot"], row["episodes"]
        if episodes >= 2:
            first, last = row["mean_return_first10"], row["mean_return_last10"]
            n = min(10, episodes)
            word = "ok   " if last >= first else "CHECK"
            change = "rose" if last > first else "fell" if last < first else "stayed"
            lines.append(f"{word} {robot}: returns {change} from {first:.1f} to {last:.1f} (first/last {n} episodes)")
        misses, ticks = row["deadline_misses"], row["ticks"]
        if misses:
            lines.append(
                f"CHECK {robot}: {_plural(misses, 'deadline miss', 'deadline misses')} in {ticks} ticks "
                f"({100 * misses / max(ticks, 1):.2f}%, tick max {row['tick_max_ms']:.2f} ms)"
            )
        else:
            lines.append(f"ok    {robot}: every tick met its deadline")
        events = _safety_events(report, robot)
        lines.append(f"CHECK {robot}: {events[0]}" if events else f"ok    {robot}: no safety event")
        if row["swap_rejections"]:
            lines.append(
                f"CHECK {robot}: the swap gate refused {_plural(row['swap_rejections'], 'version')} "
                f"(last: {row['last_rejection'] or '?'})"
            )
    learner = report["learner"]
    if learner:
        dropped = sum(row["batches_dropped"] for row in report["controllers"])
        gaps, undelivered = (
            learner.get("gaps", 0),
            [row["robot"] for row in report["controllers"] if row["learner_has_every_batch"] is False],
        )
        if dropped or gaps or undelivered:
            lines.append(
                f"CHECK transitions: {dropped} batches dropped, {gaps} gaps at the learner"
                + (f", not every batch delivered from {', '.join(undelivered)}" if undelivered else "")
            )
        else:
            lines.append("ok    transitions: every batch reached the learner")
        owed = learner.get("owed_updates", 0)
        lines.append(
            f"CHECK learner: {owed} updates owed at the end (it fell behind the UTD ratio)"
            if owed
            else "ok    learner: kept up with the UTD ratio (no update owed at the end)"
        )
    return lines


def summary(report: dict) -> list[str]:
    """The one-screen summary at the top of report.md: each line has a value, nothing is left blank."""
    robots = ", ".join(f"{r['name']} ({r['driver']})" for r in report["robots"]) or "no robot"
    ran = robots + (" and a learner" if report["learner"] else "")
    lines = [f"- ran: {ran}, {report['duration_s']:.0f} s; ended: {_ended(report)}"]
    for row in report["controllers"]:
        robot = row["robot"]
        if row["episodes"]:
            lines.append(
                f"- {robot} returns: first {row['first_return']:.1f}, last {row['last_return']:.1f}, mean of the last "
                f"{min(10, row['episodes'])} {row['mean_return_last10']:.1f} ({_plural(row['episodes'], 'episode')})"
            )
        else:
            lines.append(f"- {robot} returns: no episode ended")
        first = f"v{row['first_policy_version']} -> " if row["first_policy_version"] is not None else ""
        lines.append(
            f"- {robot} policy: {first}v{row['policy_version']}, {_plural(row['swaps'], 'swap')}, "
            f"{row['swap_rejections']} refused"
        )
        deadline = f" of {row['deadline_ms']:.1f} ms ({row['target_hz']:g} Hz)" if row["deadline_ms"] else ""
        lines.append(
            f"- {robot} deadline: {_plural(row['deadline_misses'], 'miss', 'misses')} in "
            f"{row['ticks']} ticks{deadline}; tick p50 {row['tick_p50_ms']:.2f} ms, p99 {row['tick_p99_ms']:.2f} ms, "
            f"max {row['tick_max_ms']:.2f} ms"
        )
        events = _safety_events(report, robot)
        lines.append(f"- {robot} safety: {'; '.join(events) if events else 'no event'}")
    lines.append(_learner_line(report))
    return lines + ["", "Verdict:", "", "```", *_verdicts(report), "```"]


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
    parts = [f"# Session {report['session']}", "", *summary(report), "", "## Controllers", "", markdown_table(report)]
    safety = [(robot, _safety_events(report, robot)) for robot in report["safety"]]
    if any(events for _, events in safety):
        parts += ["", "## Safety", ""] + [f"- {robot}: {'; '.join(events)}" for robot, events in safety if events]
    latches = [(robot, entry) for robot in report["safety"] for entry in _latches(report, robot)]
    if latches:
        parts += ["", "SAFE latches:", ""]
        parts += [f"- {robot} at {t_s:.1f} s (after tick {tick}): {reason}" for robot, (tick, t_s, reason) in latches]
    if report["learner"]:
        learner = report["learner"]
        keys = (
            "updates",
            "env_steps",
            "updates_per_s",
            "transitions_per_s",
            "owed_updates",
            "buffer_size",
            "published_version",
            "gaps",
            "duplicates",
        )
        parts += ["", "## Learner", "", ", ".join(f"{k} {_fmt(learner[k])}" for k in keys if k in learner)]
    parts += ["", "## Events", ""] + [
        f"- {e['t_s']:.1f} s {e['event']} {e['process']} {e['detail']}".rstrip() for e in report["events"]
    ]
    return "\n".join(parts) + "\n"


# --- report.png -----------------------------------------------------------------------------------------------------


def _ready_times(events: list[dict], process: str) -> list[float]:
    return [e["t_s"] for e in events if e["event"] == "ready" and e["process"] == process]


def _version_groups(versions: list[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) ranges of the versions seen, at most MAX_VERSION_COLOURS of them."""
    unique = sorted(set(versions))
    chunks = np.array_split(np.asarray(unique), min(len(unique), MAX_VERSION_COLOURS))
    return [(int(chunk[0]), int(chunk[-1])) for chunk in chunks]


def _draw_returns(axis, report: dict, recorded: Recorded) -> None:
    import matplotlib.pyplot as plt

    logs = {name: stats.get("episode_log") or [] for name, stats in recorded.controllers.items()}
    groups = _version_groups([entry[3] for log in logs.values() for entry in log])
    colours = plt.get_cmap("tab10").colors
    markers = "os^Dv<>"
    for index, (name, log) in enumerate(logs.items()):
        if not log:
            continue
        offset = (_ready_times(report["events"], name) or [0.0])[-1]
        seconds = np.array([entry[1] for entry in log]) + offset
        returns = np.array([entry[2] for entry in log])
        versions = np.array([entry[3] for entry in log])
        axis.plot(seconds, returns, color="grey", alpha=0.3, linewidth=0.8)
        for colour, (first, last) in zip(colours, groups):
            chosen = (versions >= first) & (versions <= last)
            if chosen.any():
                label = f"v{first}" if first == last else f"v{first}-v{last}"
                if len(logs) > 1:
                    label = f"{name} {label}"
                axis.scatter(
                    seconds[chosen], returns[chosen], color=colour, marker=markers[index % 7], s=14, label=label
                )
        for number, (_, t_s, _) in enumerate(_latches(report, name)):
            axis.axvline(t_s, color="red", linestyle=":", label="SAFE latch" if number == 0 else None)
    axis.set(title="episode returns (colour: policy version)", xlabel="session time (s)", ylabel="return")
    axis.legend(fontsize=7, ncol=2, loc="best")


def _draw_latency_histogram(axis, report: dict, recorded: Recorded) -> None:
    rows = {row["robot"]: row for row in report["controllers"]}
    deadlines = set()
    for name, samples in recorded.latency_s.items():
        if samples.size == 0:
            continue
        latency_ms = 1000 * samples
        deadline_ms = rows[name]["deadline_ms"]
        high = max(latency_ms.max(), deadline_ms or 0.0) * 1.3
        bins = np.geomspace(max(latency_ms.min(), 1e-3), high, 80)
        label = f"{name}: p50 {rows[name]['tick_p50_ms']:.2f} ms, p99 {rows[name]['tick_p99_ms']:.2f} ms"
        axis.hist(latency_ms, bins=bins, alpha=0.6, log=True, label=label)
        if deadline_ms:
            deadlines.add((deadline_ms, rows[name]["deadline_misses"]))
    for deadline_ms, misses in sorted(deadlines):
        axis.axvline(deadline_ms, color="red", linestyle="--", label=f"deadline {deadline_ms:.1f} ms ({misses} misses)")
    axis.set_xscale("log")
    axis.set(title="tick latency (work per tick; red: the control period)", xlabel="ms", ylabel="ticks")
    axis.legend(fontsize=7)


def _draw_latency_timeline(axis, report: dict, recorded: Recorded) -> None:
    rows = {row["robot"]: row for row in report["controllers"]}
    for name, samples in recorded.latency_s.items():
        if samples.size == 0:
            continue
        ticks_total = recorded.controllers[name].get("ticks", samples.size)
        first_tick = ticks_total - samples.size + 1  # the samples are the newest ticks, numbered from 1
        ticks = np.arange(first_tick, ticks_total + 1)
        axis.plot(ticks, 1000 * samples, linewidth=0.5, alpha=0.7, label=name, rasterized=True)
        logged = np.asarray(recorded.controllers[name].get("miss_ticks") or [], dtype=int)
        misses = logged[(logged >= first_tick) & (logged <= ticks_total)]
        if misses.size:
            shown = _shown(logged.size, rows[name]["deadline_misses"])
            axis.scatter(
                misses,
                1000 * samples[misses - first_tick],
                marker="x",
                color="red",
                s=18,
                zorder=3,
                label=f"{name}: deadline misses ({shown})",
            )
        if rows[name]["deadline_ms"]:
            axis.axhline(rows[name]["deadline_ms"], color="red", linestyle="--", linewidth=1)
    axis.set_yscale("log")
    axis.set(title="tick latency per tick (dashed: the period; x under it: a late wake-up)", xlabel="tick", ylabel="ms")
    axis.legend(fontsize=7)


def _shown(logged: int, counted: int) -> str:
    """How many of the counted events the markers show (the controller keeps the newest MAX_MISSES_LOGGED)."""
    return str(counted) if logged >= counted else f"the newest {logged} of {counted}"


def _learner_segments(report: dict, recorded: Recorded) -> list[tuple[float, list[dict]]]:
    """The metrics records per learner run (a restarted learner appends, its elapsed_s from 0 again), each with the
    session time of that run's `ready` event."""
    segments: list[list[dict]] = []
    for record in recorded.learner_metrics:
        if not segments or record.get("elapsed_s", 0.0) < segments[-1][-1].get("elapsed_s", 0.0):
            segments.append([])
        segments[-1].append(record)
    ready = _ready_times(report["events"], "learner") or [0.0]
    return [(ready[min(i, len(ready) - 1)], records) for i, records in enumerate(segments)]


def _series(segments: list[tuple[float, list[dict]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [
        (offset + record["elapsed_s"], record[key])
        for offset, records in segments
        for record in records
        if isinstance(record.get(key), (int, float)) and math.isfinite(record[key])
    ]
    return np.array([t for t, _ in points]), np.array([v for _, v in points])


def _draw_learner_series(axis, segments, title: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        seconds, values = _series(segments, key)
        if seconds.size:
            axis.plot(seconds, values, marker=".", markersize=3, label=key)
    axis.set(title=title, xlabel="session time (s)")
    axis.legend(fontsize=7)


def _draw_learner_rates(axis, segments) -> None:
    seconds, rates = _series(segments, "updates_per_s")
    axis.plot(seconds, rates, color="tab:blue", marker=".", markersize=3, label="updates/s")
    axis.set(title="learner: updates/s and updates owed", xlabel="session time (s)", ylabel="updates/s")
    axis.tick_params(axis="y", colors="tab:blue")
    owed_axis = axis.twinx()
    seconds, owed = _series(segments, "owed_updates")
    owed_axis.plot(seconds, owed, color="tab:orange", marker=".", markersize=3, label="owed updates")
    owed_axis.set_ylabel("owed updates")
    owed_axis.tick_params(axis="y", colors="tab:orange")
    lines = axis.get_legend_handles_labels()[0] + owed_axis.get_legend_handles_labels()[0]
    axis.legend(lines, [line.get_label() for line in lines], fontsize=7)


def _safety_counts(report: dict) -> dict[str, int]:
    counts: Counter = Counter()
    for safety in report["safety"].values():
        counts["SAFE latches"] += len(safety.get("safety_log") or [])
        counts["rollbacks"] += len(safety.get("rollbacks") or [])
        for key, (_, plural) in CONTROLLER_SAFETY_COUNTS.items():
            counts[plural] += int(safety.get(key) or 0)
    for stats in report["drivers"].values():
        for key, (_, plural) in DRIVER_SAFETY_KEYS.items():
            counts[f"{plural} (driver)"] += int(stats.get(key) or 0)
    return {key: value for key, value in counts.items() if value}


def _draw_safety(axis, counts: dict[str, int]) -> None:
    bars = axis.barh(list(counts), list(counts.values()), color="tab:red")
    axis.bar_label(bars, fontsize=7)
    axis.set_title("safety events (count)")
    if max(counts.values()) > 20 * min(counts.values()):  # one latch beside thousands of safe ticks stays visible
        axis.set_xscale("log")
        axis.set_xlim(0.5, max(counts.values()) * 3)
    else:
        axis.set_xlim(0, max(counts.values()) * 1.15)
    axis.invert_yaxis()


def _draw_transitions(axis, report: dict) -> None:
    values = {
        "batches sent": sum(r["batches_sent"] for r in report["controllers"]),
        "batches dropped": sum(r["batches_dropped"] for r in report["controllers"]),
        "learner gaps": int(report["learner"].get("gaps", 0) or 0),
        "learner duplicates": int(report["learner"].get("duplicates", 0) or 0),
    }
    bars = axis.bar(list(values), list(values.values()))
    axis.bar_label(bars, fontsize=7)
    axis.set(title="transition batches to the learner")
    axis.tick_params(axis="x", labelrotation=15)


def figure(report: dict, recorded: Recorded):
    """The report's figure: only the panels that have data, two to a row (matplotlib is imported here)."""
    import matplotlib.pyplot as plt

    panels = []
    if any(stats.get("episode_log") for stats in recorded.controllers.values()):
        panels.append(lambda axis: _draw_returns(axis, report, recorded))
    if any(samples.size for samples in recorded.latency_s.values()):
        panels.append(lambda axis: _draw_latency_histogram(axis, report, recorded))
        panels.append(lambda axis: _draw_latency_timeline(axis, report, recorded))
    segments = _learner_segments(report, recorded)
    for title, keys in LEARNER_PANELS:
        if any(_series(segments, key)[0].size for key in keys):
            panels.append(lambda axis, title=title, keys=keys: _draw_learner_series(axis, segments, title, keys))
    if _series(segments, "updates_per_s")[0].size:
        panels.append(lambda axis: _draw_learner_rates(axis, segments))
    counts = _safety_counts(report)
    if counts:
        panels.append(lambda axis: _draw_safety(axis, counts))
    if report["learner"]:
        panels.append(lambda axis: _draw_transitions(axis, report))
    rows = max(1, math.ceil(len(panels) / 2))
    drawn, axes = plt.subplots(rows, 2, figsize=(13, 3.6 * rows), squeeze=False)
    for draw, axis in zip(panels, axes.ravel()):
        draw(axis)
        axis.grid(alpha=0.3)
    for axis in axes.ravel()[len(panels) :]:
        axis.remove()
    drawn.suptitle(f"session {report['session']}: {report['duration_s']:.0f} s, {_ended(report)}")
    drawn.tight_layout()
    return drawn
