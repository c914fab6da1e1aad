"""The controller's outgoing transitions: batched on the control thread, written to the durable log, streamed to
the learner.

Losing the learner never stops control: batches that do not fit the bounded queue are counted as drops, and every
batch stays in a resend window (wire/delivery.py: ResendWindow) until the learner acknowledges it as checkpointed;
what the learner reports missing (after a drop, or after it was killed and restarted) is resent, one batch per tick
at most. At exit the controller waits up to `final_delivery_s` for the learner to acknowledge its last batch.

The driver's step info (StepReply.info) rides along as extras, one column per key (robot_log/format.py names them).
The columns are fixed by the first step, as the log's are: a later step that lacks a key fills it (NaN, 0, False or
an empty string; counted in `info_values_missing`), and a value of a new key, or of another type or shape than the
first, is left out (`info_values_dropped`). Both counts go to the controller's status: a driver should report the
same keys every step.
"""

from __future__ import annotations

import time

import numpy as np

from acalign_robot.robot_log.format import INFO_PREFIX, INFO_TEXT_PREFIX
from acalign_robot.robot_log.transition_log import TransitionLog
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import TransitionClient
from acalign_robot.wire.delivery import ResendWindow

__all__ = ["TransitionBatcher"]

ACK_POLL_S = 0.02  # how often the control loop looks for the learner's acknowledgements


class TransitionBatcher:
    """Fills preallocated arrays; `flush` turns them into one TransitionBatch with the next sequence number, which
    goes to the durable log (when on) and to the learner (when connected), whose acknowledgements `service` reads
    and answers with resends."""

    def __init__(
        self,
        stream_id: str,
        size: int,
        obs_dim: int,
        action_dim: int,
        sender: TransitionClient | None,
        log: TransitionLog | None,
        window: ResendWindow,
    ):
        self.stream_id, self.size, self.sender, self.log, self.window = stream_id, size, sender, log, window
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.action = np.zeros((size, action_dim), np.float32)
        self.policy_action = np.zeros((size, action_dim), np.float32)
        self.reward = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, bool)
        self.truncated = np.zeros(size, bool)
        self.version = np.zeros(size, np.int64)
        self.flags = np.zeros(size, np.int32)
        self.timestamp_s = np.zeros(size, np.float64)  # wall clock (time.time()) when the step reply arrived
        # Driver info: key -> (extras name, (size, ...) column), fixed at the first step (module docstring).
        self.info_columns: dict[str, tuple[str, np.ndarray]] | None = None
        self.info_values_missing = 0
        self.info_values_dropped = 0
        self.filled = 0
        self.seq = 0
        self.sent_batches = 0
        self.dropped_batches = 0
        self._next_ack_poll = 0.0

    def add(
        self,
        obs: np.ndarray,
        policy_action: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        version: int,
        flags: int,
        episode_return: float | None = None,
        info: dict[str, p.InfoValue] | None = None,
    ) -> None:
        """One executed transition (`version`: the policy's that chose `policy_action`; `flags`: FilterFlags;
        `episode_return`: the episode's return when this transition ends it; `info`: the driver's StepReply.info). A
        full batch is flushed, and so is the batch an episode ends in: its last transition is the episode's, and it
        carries the return."""
        i = self.filled
        self.obs[i], self.policy_action[i], self.action[i], self.next_obs[i] = obs, policy_action, action, next_obs
        self.reward[i], self.terminated[i], self.truncated[i] = reward, terminated, truncated
        self.version[i], self.flags[i], self.timestamp_s[i] = version, flags, time.time()
        self._add_info(i, info or {})
        self.filled += 1
        if self.filled == self.size or episode_return is not None:
            self.flush(episode_return)

    def _add_info(self, i: int, info: dict[str, p.InfoValue]) -> None:
        if self.info_columns is None:
            self.info_columns = {key: self._info_column(key, value) for key, value in info.items()}
        for key, (name, column) in self.info_columns.items():
            value = info.get(key)
            if value is not None and _put(column, i, value, text=name.startswith(INFO_TEXT_PREFIX)):
                continue
            column[i] = np.nan if column.dtype.kind == "f" else 0
            if value is None:
                self.info_values_missing += 1
            else:
                self.info_values_dropped += 1
        self.info_values_dropped += sum(key not in self.info_columns for key in info)

    def _info_column(self, key: str, value: p.InfoValue) -> tuple[str, np.ndarray]:
        """The extras name and (size, ...) buffer of an info key, by the type of its first value."""
        if isinstance(value, str):
            return INFO_TEXT_PREFIX + key, np.zeros((self.size, p.MAX_INFO_TEXT_BYTES), np.uint8)
        if isinstance(value, np.ndarray):
            return INFO_PREFIX + key, np.zeros((self.size, *value.shape), value.dtype)
        return INFO_PREFIX + key, np.zeros(self.size, bool if isinstance(value, bool) else np.float64)

    def flush(self, episode_return: float | None = None) -> None:
        if self.filled == 0:
            return
        n, self.filled = self.filled, 0
        if self.sender is None and self.log is None:
            return
        batch = p.TransitionBatch(
            stream_id=self.stream_id,
            seq=self.seq,
            policy_version=self.version[:n].copy(),
            obs=self.obs[:n].copy(),
            action=self.action[:n].copy(),
            reward=self.reward[:n].copy(),
            next_obs=self.next_obs[:n].copy(),
            terminated=self.terminated[:n].copy(),
            truncated=self.truncated[:n].copy(),
            extras={
                "policy_action": self.policy_action[:n].copy(),
                "safety_flags": self.flags[:n].copy(),
                **{name: column[:n].copy() for name, column in (self.info_columns or {}).values()},
            },
            resend_from=self.window.oldest(self.seq),  # what the learner lacks below it is gone: it writes it off
            episode_return=episode_return,
        )
        self.seq += 1
        if self.log is not None:
            self.log.write(batch, self.timestamp_s[:n].copy())
        if self.sender is None:
            return
        if self.sender.send(batch):
            self.sent_batches += 1
        else:
            self.dropped_batches += 1
        self.window.record(batch, time.perf_counter())

    def service(self, now: float) -> None:
        """Between ticks (`now`: perf_counter): read the learner's acks every ACK_POLL_S, resend at most one batch."""
        if self.sender is None:
            return
        if now >= self._next_ack_poll:
            self._next_ack_poll = now + ACK_POLL_S
            self._take_acks(now)
        self._resend_one(now)

    def deliver_rest(self, timeout_s: float) -> bool:
        """At exit: keep answering acks until the learner holds every batch or `timeout_s` passed; True if it does."""
        if self.sender is None or self.seq == 0:
            return True
        deadline = time.perf_counter() + timeout_s
        while self.window.received_through < self.seq - 1 and (now := time.perf_counter()) < deadline:
            self._take_acks(now, wait_s=min(0.05, deadline - now))
            while self._resend_one(time.perf_counter()):
                pass
        return self.window.received_through >= self.seq - 1

    def _take_acks(self, now: float, wait_s: float = 0.0) -> None:
        """Hand every queued TransitionAck of this stream to the window (waiting up to wait_s for the first)."""
        message = self.sender.recv(wait_s)
        while isinstance(message, p.TransitionAck):
            if message.stream_id == self.stream_id:
                self.window.acknowledge(message, now)
            message = self.sender.recv(0.0)

    def _resend_one(self, now: float) -> bool:
        """Resend the next batch the learner lacks; False when none is due or the channel is full."""
        batch = self.window.next_due(now)
        if batch is None:
            return False
        if self.sender.send(batch):
            return True
        self.window.retry_later(batch)
        return False


def _put(column: np.ndarray, i: int, value: p.InfoValue, text: bool) -> bool:
    """Write an info value into row i of its column; False (nothing written) when it is not of the column's kind."""
    if text or isinstance(value, str):
        if not (text and isinstance(value, str)):
            return False
        data = value.encode("utf-8")  # protocol.check_info bounds it to the column's width
        column[i, : len(data)], column[i, len(data) :] = np.frombuffer(data, np.uint8), 0
        return True
    if isinstance(value, np.ndarray):
        fits = value.shape == column.shape[1:] and np.can_cast(value.dtype, column.dtype, "same_kind")
    elif isinstance(value, bool):
        fits = column.dtype == bool
    else:
        fits = column.ndim == 1 and column.dtype == np.float64 and isinstance(value, (int, float))
    if fits:
        column[i] = value
    return fits
