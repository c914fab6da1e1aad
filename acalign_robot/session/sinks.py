"""Opt-in sinks for a session's live state: TensorBoard and rerun, beside the operator page (launch file `sinks:`).

Each is fed by the session's live feed (session/live.py) once a second with the state the page shows, so a sink
reads nothing of its own from the processes:
- TensorBoard (`sinks.tensorboard: true`): scalars in `<session dir>/tensorboard/`, each robot's episode returns
  (step = episode number) and its numbers each second (tick latency, deadline misses, policy version, swaps,
  rollbacks, SAFE, driver e-stops and watchdog events; step = session seconds), the learner's (updates/s, owed
  updates, critic loss, alpha, w, buffer size, published version). Written with the `tensorboard` package's own
  event writer (`pip install acalign-robot[tensorboard]`): no torch in the supervisor.
- rerun (`sinks.rerun: save | connect`): the same numbers on rerun's `session_time` timeline, and each robot's
  transitions from its controller's durable log as its chunks close (every 1024 transitions or 5 s): observations
  (the joint trajectory: for MuJoCo, positions then velocities), executed actions beside the policy's own actions,
  rewards, on the `wall_time` timeline. `save` writes `<session dir>/session.rrd` (`rerun session.rrd` opens it, also
  while it grows), `connect` streams to a viewer already running at `sinks.rerun_url`
  (`pip install acalign-robot[rerun]`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from acalign_robot.errors import InputError

__all__ = ["RerunSink", "TensorBoardSink", "missing_sink_packages"]

MAX_CHUNKS_PER_STATE = 4  # log chunks sent to rerun per second and robot: the feed stays within its period


def missing_sink_packages(tensorboard: bool, rerun: bool) -> list[str]:
    """One line per enabled sink whose package is not installed."""
    import importlib.util

    problems = []
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        problems.append("sinks.tensorboard: needs the tensorboard package (pip install 'acalign-robot[tensorboard]')")
    if rerun and importlib.util.find_spec("rerun") is None:
        problems.append("sinks.rerun: needs the rerun-sdk package (pip install 'acalign-robot[rerun]')")
    return problems


def _numbers(state: dict) -> list[tuple[str, float]]:
    """(tag, value) of every number the page shows each second (episode returns apart); None and NaN left out."""
    tags = []
    for robot in state["robots"]:
        name = robot["name"]
        driver = robot.get("driver") or {}
        fields = {
            "tick_p50_ms": robot["tick_p50_ms"],
            "tick_p99_ms": robot["tick_p99_ms"],
            "deadline_misses": robot["deadline_misses"],
            "policy_version": robot["policy_version"],
            "swaps": robot["swaps"],
            "rollbacks": robot["rollbacks"],
            "safe": float(robot["safe"]),
            "driver_estops": driver.get("estops"),
            "watchdog_events": driver.get("watchdog_events"),
        }
        tags += [(f"{name}/{key}", value) for key, value in fields.items()]
    learner = state.get("learner")
    if learner:
        for key in ("updates_per_s", "owed_updates", "critic_loss", "alpha", "w", "buffer_size", "published_version"):
            tags.append((f"learner/{key}", learner[key]))
    return [(tag, float(value)) for tag, value in tags if isinstance(value, (int, float)) and np.isfinite(value)]


def _new_episodes(state: dict, written: dict[str, int]) -> list[tuple[str, int, float]]:
    """(robot, episode number, return) of the episodes not written yet; `written` keeps each robot's last number."""
    new = []
    for robot in state["robots"]:
        for number, episode_return, _version in robot["episodes"]:
            if number > written.get(robot["name"], 0) and episode_return is not None:
                new.append((robot["name"], number, episode_return))
                written[robot["name"]] = number
    return new


class TensorBoardSink:
    def __init__(self, directory: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(directory))
        self._episodes_written: dict[str, int] = {}

    def write(self, state: dict) -> None:
        if not state.get("robots"):
            return  # the first state, built before any process ran
        for robot, number, episode_return in _new_episodes(state, self._episodes_written):
            self._scalar(f"{robot}/episode_return", episode_return, number)
        step = int(state["elapsed_s"])
        for tag, value in _numbers(state):
            self._scalar(tag, value, step)
        self._writer.flush()

    def _scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.close()


class RerunSink:
    """`log_dirs`: each local robot's transition log directory (its controller writes it, this only reads)."""

    def __init__(self, session: str, log_dirs: dict[str, Path], *, save_to: Path | None, connect_url: str | None):
        import rerun as rr

        self._rr = rr
        self.log_dirs = log_dirs
        self._recording = rr.RecordingStream(f"acalign-{session}")
        if save_to is not None:
            self._recording.save(str(save_to))
        else:
            try:
                self._recording.connect_grpc(connect_url)
            except Exception as exc:  # a URL rerun cannot use: bad input, named
                raise InputError(f"sinks.rerun_url: {connect_url}: {exc}") from None
        self._chunks_done: dict[str, set[str]] = {robot: set() for robot in log_dirs}
        self._episodes_written: dict[str, int] = {}

    def write(self, state: dict) -> None:
        rr, recording = self._rr, self._recording
        if state.get("robots"):
            recording.set_time("session_time", duration=state["elapsed_s"])
            for tag, value in _numbers(state):
                recording.log(tag, rr.Scalars(value))
            for robot, number, episode_return in _new_episodes(state, self._episodes_written):
                recording.set_time("episode", sequence=number)
                recording.log(f"{robot}/episode_return", rr.Scalars(episode_return))
                recording.disable_timeline("episode")
        for robot, directory in self.log_dirs.items():
            self._send_new_chunks(robot, directory)

    def _send_new_chunks(self, robot: str, directory: Path, limit: int | None = MAX_CHUNKS_PER_STATE) -> None:
        from acalign_robot.robot_log.format import CHUNK_NAME

        rr, done = self._rr, self._chunks_done[robot]
        closed = sorted(path for path in directory.glob("chunk-*.npz") if CHUNK_NAME.fullmatch(path.name))
        for path in [path for path in closed if path.name not in done][:limit]:
            done.add(path.name)
            try:
                with np.load(path, allow_pickle=False) as chunk:
                    columns = {name: chunk[name] for name in ("obs", "action", "reward", "timestamp_s")}
                    policy = chunk["extra.policy_action"] if "extra.policy_action" in chunk.files else None
            except (OSError, ValueError, KeyError):
                continue  # a damaged chunk: `acalign logs convert` names it; the live view skips it
            times = [rr.TimeColumn("wall_time", timestamp=columns["timestamp_s"])]
            series = {
                f"{robot}/observation": columns["obs"],
                f"{robot}/action/executed": columns["action"],
                f"{robot}/reward": columns["reward"],
            }
            if policy is not None:
                series[f"{robot}/action/policy"] = policy
            for entity, values in series.items():
                values = np.asarray(values, dtype=np.float64)
                self._recording.send_columns(entity, indexes=times, columns=rr.Scalars.columns(scalars=values))

    def close(self) -> None:
        """Send every chunk not sent yet (the controllers have stopped and closed their logs), then end."""
        for robot, directory in self.log_dirs.items():
            self._send_new_chunks(robot, directory, limit=None)
        self._recording.flush()
        self._recording.disconnect()
