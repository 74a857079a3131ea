"""Seeded episodes of a running policy graph in simulation: sim_node, interpolator_node and policy_node (rclpy).

The graph is any running `push_insert` (or `push`) graph on sim time, e.g. `irvs bringup push_insert --sim`;
with sim_node's `lockstep: true` (what `irvs demo` starts) every step below happens in simulated time, so an
episode's result depends only on its seed, the policy file and the node parameters, not on CPU load (up to the
rare late delivery to a starved node that nodes.lockstep describes: results then differ by about 0.1 mm).

Per episode with seed s:
  1. pause the sim (`sim_node/pause` true) and stop the policy (`policy_node/enable` false);
  2. set sim_node's `seed`, `episode_time_limit` and `pause_on_success`, and the policy's argmin `seed` (s), then
     `sim_node/reset` (scene s, the arm at its start pose);
  3. `interpolator_node/resync` to the reset pose (retried until it reports that pose);
  4. start the policy's episode (`policy_node/enable` true: decisions at reset time + k * period) and resume;
  5. wait until the sim pauses itself (first decision time with success, or the time limit) and read
     `sim_node/task_state`.
An episode in which the lockstep timed out (its result then depends on CPU load) is run again from its seed
(`run(reruns=1)`). Camera frames of an episode can be written to a video (`sim.video`: .mp4, or .gif where MP4
cannot be written).

    with EpisodeRunner(domain_id=7) as runner:
        runner.wait_until_ready(timeout=120)
        summary = runner.run([0, 1, 2], video="out/episode.mp4")
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import SetBool, Trigger

from irvs_ros.nodes.common import COMMAND_QOS, to_sec
from irvs_ros.nodes.image_ops import ImageError, image_array
from irvs_ros.nodes.lockstep import DECISION_NS
from irvs_ros.sim.push_tasks import TaskConfig

DECISION_PERIOD = 0.2     # s: the policy's period (5 Hz) = sim_node's decision_period
ATTEMPT_TIMEOUT = 10.0   # s: a service request without an answer this long is sent again
RESYNC_TOLERANCE = 0.002  # m: the interpolator's resync position must be the reset effector position within this
# Final state entries kept in each result (sim_node task_state "state").
STATE_KEYS = ("effector_xy", "block_xy", "block_yaw", "goal_xy", "goal_yaw")
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.BEST_EFFORT)


class EpisodeError(RuntimeError):
    """The graph did not do what an episode needs (a service missing or failing, simulated time not advancing)."""


def default_time_limit(task: str, decision_period: float = DECISION_PERIOD) -> float:
    """The gym task's episode length in simulated seconds (its max steps x the decision period)."""
    cfg = TaskConfig()
    steps = {"push": cfg.max_steps_push, "push_insert": cfg.max_steps_insert}.get(task)
    if steps is None:
        raise ValueError(f"no default time limit for task {task!r}; expected push or push_insert")
    return steps * decision_period


def describe_timeouts(by_stream: dict[str, int]) -> str:
    """Lockstep timeouts per late stream as text, e.g. "command 2, setpoint 1" ("" for none)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(by_stream.items()))


@dataclass(frozen=True)
class EpisodeResult:
    """One episode. reward_level: the task's final reward (push: 0 / 1; push_insert: 0 / 0.5 partial / 1 full);
    steps: decisions carried out (as gym steps); sim_time: simulated s from the first decision to the end (the
    arm holds still for the decision period between the reset and the first decision)."""

    seed: int
    success: bool
    reward_level: float
    end: str                      # "success" or "time_limit"
    steps: int
    sim_time: float
    wall_time: float
    goal_distance: float
    inserted_fraction: float | None
    final_state: dict[str, list[float]]
    lockstep_timeouts: int        # ticks the sim went on without an answer (0 = a clean lockstep episode)
    decisions: int = 0            # setpoints the policy published in the episode
    decisions_on_time: int = 0    # ... of them stamped at a decision time (lockstep: all, one per step)
    frames: int = 0               # camera frames recorded (for the video)
    video: str | None = None
    reruns: int = 0               # earlier runs of this seed dropped for a lockstep timeout (see EpisodeRunner.run)
    timeouts_by_stream: dict[str, int] = field(default_factory=dict)  # lockstep_timeouts by late stream

    @property
    def partial(self) -> bool:
        """A partial insertion (0 < reward level < 1)."""
        return 0.0 < self.reward_level < 1.0

    def describe(self) -> str:
        outcome = "success" if self.success else ("partial" if self.partial else "failure")
        extra = f", inserted {self.inserted_fraction:.2f}" if self.inserted_fraction is not None else ""
        if self.decisions_on_time != self.steps:
            extra += f"  ({self.decisions_on_time} of {self.steps} decisions on time)"
        if self.reruns:
            extra += f"  (run {self.reruns + 1} times: lockstep timeouts)"
        if self.lockstep_timeouts:
            late = describe_timeouts(self.timeouts_by_stream) or self.lockstep_timeouts
            extra += f"  (lockstep went on without an answer: {late})"
        return (f"seed {self.seed}: {outcome:8s} reward {self.reward_level:.1f}  steps {self.steps:3d}  "
                f"sim {self.sim_time:5.1f} s  wall {self.wall_time:5.1f} s  goal distance "
                f"{100 * self.goal_distance:.1f} cm{extra}")


@dataclass
class RunSummary:
    """Results of a run of seeded episodes."""

    episodes: list[EpisodeResult] = field(default_factory=list)
    video: str | None = None

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else math.nan

    @property
    def partial_rate(self) -> float:
        return float(np.mean([e.partial for e in self.episodes])) if self.episodes else math.nan

    @property
    def mean_reward(self) -> float:
        return float(np.mean([e.reward_level for e in self.episodes])) if self.episodes else math.nan

    def to_dict(self) -> dict[str, Any]:
        by_stream = dict(sum((Counter(e.timeouts_by_stream) for e in self.episodes), Counter()))
        return {"episodes": len(self.episodes), "success_rate": self.success_rate, "partial_rate": self.partial_rate,
                "mean_reward": self.mean_reward, "lockstep_timeouts": sum(e.lockstep_timeouts for e in self.episodes),
                "lockstep_timeouts_by_stream": by_stream,
                "decisions_not_on_time": sum(e.steps - e.decisions_on_time for e in self.episodes),
                "reruns": sum(e.reruns for e in self.episodes),
                "wall_time": sum(e.wall_time for e in self.episodes), "video": self.video,
                "per_episode": [dict(asdict(e), partial=e.partial) for e in self.episodes]}


class _StampLog:
    """Header stamps (sim s) of one topic's messages from `start(since)` on (callback thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = math.inf
        self._stamps: list[float] = []

    def start(self, since: float) -> None:
        with self._lock:
            self._since, self._stamps = since, []

    def on_msg(self, msg: Any) -> None:
        t = to_sec(msg.header.stamp)
        with self._lock:
            if t > self._since:
                self._stamps.append(t)

    def stamps(self) -> list[float]:
        with self._lock:
            return list(self._stamps)


class _FrameRecorder:
    """Keeps camera frames (H, W, 3) uint8 with sim-time stamps while recording (callback thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._frames: dict[float, np.ndarray] = {}

    def start(self, since: float) -> None:
        with self._lock:
            self._since, self._frames = since, {}

    def stop(self, until: float) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            frames = sorted((t, f) for t, f in self._frames.items() if t <= until + 1e-9)
            self._since, self._frames = None, {}
        return frames

    def on_image(self, msg: Image) -> None:
        since = self._since
        if since is None:
            return
        t = to_sec(msg.header.stamp)
        if t < since - 1e-9:
            return
        try:
            frame = image_array(msg)
        except ImageError:
            return
        with self._lock:
            if self._since is not None:
                self._frames[t] = frame


def write_episode_video(frames: list[tuple[float, np.ndarray]], path: str | Path) -> Path:
    """Write stamped frames [(sim s, (H, W, 3) uint8)] to `path` (.mp4 or .gif) at their simulated frame rate;
    an .mp4 becomes a .gif when MP4 cannot be written here (no imageio-ffmpeg). Returns the written path."""
    from irvs_ros.sim.video import mp4_available, write_video

    if not frames:
        raise EpisodeError(f"no camera frames were received for the video {path}")
    path = Path(path)
    if path.suffix.lower() == ".mp4" and not mp4_available():
        path = path.with_suffix(".gif")
    stamps = np.array([t for t, _ in frames])
    fps = 1.0 / float(np.median(np.diff(stamps))) if len(frames) > 1 else 5.0
    images = [f for _, f in frames]
    if path.suffix.lower() == ".mp4" and (images[0].shape[0] % 2 or images[0].shape[1] % 2):
        images = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in images]  # yuv420p needs even sizes
    return write_video(path, images, fps=min(max(fps, 1.0), 60.0))


class EpisodeRunner:
    """Runs seeded episodes on a running sim graph (see module docstring).

    context: an initialized rclpy Context to use; None: the runner creates (and later shuts down) its own on
    `domain_id` (None: the environment's ROS_DOMAIN_ID). Node names are those of the graph description.
    service_timeout: wall s a service may take (and to wait for it to appear); stall_timeout: wall s without
    simulated time advancing after which an episode fails with EpisodeError.
    """

    def __init__(self, context: Context | None = None, *, domain_id: int | None = None, sim: str = "/sim_node",
                 policy: str = "/policy_node", interpolator: str = "/interpolator_node",
                 image_topic: str = "/camera/camera/color/image_raw", setpoint_topic: str = "/irvs/setpoint",
                 decision_period: float = DECISION_PERIOD,
                 service_timeout: float = 30.0, stall_timeout: float = 60.0, poll_period: float = 0.2) -> None:
        if decision_period <= 0 or service_timeout <= 0 or stall_timeout <= 0 or poll_period <= 0:
            raise ValueError("decision_period, service_timeout, stall_timeout and poll_period must be > 0 s, got "
                             f"{decision_period}, {service_timeout}, {stall_timeout}, {poll_period}")
        self._own_context = context is None
        if context is None:
            context = Context()
            rclpy.init(context=context, domain_id=domain_id)
        self.context = context
        self.sim, self.policy, self.interpolator = (n.rstrip("/") for n in (sim, policy, interpolator))
        self.decision_period = float(decision_period)
        self.service_timeout = float(service_timeout)
        self.stall_timeout = float(stall_timeout)
        self.poll_period = float(poll_period)
        # Service clients live on a private node that spins only while waiting for an answer (caller's thread).
        self._calls_node = Node("episode_runner_calls", context=context, start_parameter_services=False)
        self._calls = SingleThreadedExecutor(context=context)
        self._calls.add_node(self._calls_node)
        self._clients: dict[str, Any] = {}
        self._node = Node("episode_runner", context=context, start_parameter_services=False)
        self._recorder = _FrameRecorder()
        self._node.create_subscription(Image, image_topic, self._recorder.on_image, IMAGE_QOS)
        self._setpoints = _StampLog()
        self._node.create_subscription(PoseStamped, setpoint_topic, self._setpoints.on_msg, COMMAND_QOS)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self._node)
        self._spin = threading.Thread(target=self._executor.spin, name="episode-runner-spin", daemon=True)
        self._spin.start()

    # ------------------------------------------------------------------ services
    def _trigger(self, name: str) -> dict[str, Any]:
        resp = self._call(Trigger, name, Trigger.Request())
        data = _json(resp.message, name)
        if not resp.success:
            raise EpisodeError(f"{name} failed: {data.get('error', resp.message)}")
        return data

    def _set_bool(self, name: str, value: bool) -> str:
        resp = self._call(SetBool, name, SetBool.Request(data=value))
        if not resp.success:
            raise EpisodeError(f"{name} ({value}) failed: {resp.message}")
        return resp.message

    def _set_params(self, node: str, **values: Any) -> None:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        resp = self._call(SetParameters, f"{node}/set_parameters", req)
        bad = [f"{k}: {r.reason}" for k, r in zip(values, resp.results, strict=True) if not r.successful]
        if bad:
            raise EpisodeError(f"{node} refused parameters {bad}")

    def _call(self, srv_type: type, name: str, request: Any) -> Any:
        """The response of service `name`. Every request here is idempotent, so one that gets no answer within
        ATTEMPT_TIMEOUT is sent again (a new client's first response can be dropped while DDS still matches it)
        until `service_timeout` has passed."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self._calls_node.create_client(srv_type, name)
        deadline = time.monotonic() + self.service_timeout
        if not client.wait_for_service(timeout_sec=self.service_timeout):
            raise EpisodeError(f"service {name} is not available after {self.service_timeout} s (is the graph "
                               f"running on this ROS domain?)")
        while True:
            future = client.call_async(request)
            attempt = max(0.1, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
            self._calls.spin_until_future_complete(future, timeout_sec=attempt)
            if future.done():
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise EpisodeError(f"service {name} did not answer within {self.service_timeout} s")

    def task_state(self) -> dict[str, Any]:
        """sim_node's ~/task_state (task, success, reward_level, state, sim_time, episode_time, paused, ...)."""
        return self._trigger(f"{self.sim}/task_state")

    def wait_until_ready(self, timeout: float = 120.0, alive: Callable[[], str | None] | None = None) -> None:
        """Block until the services of the three nodes exist (the policy's once its model is loaded).

        alive: optional check called while waiting; a returned text (e.g. "policy_node exited with 2") aborts
        with EpisodeError. Raises EpisodeError after `timeout` wall s, naming the missing services."""
        wanted = {f"{self.sim}/reset": Trigger, f"{self.sim}/task_state": Trigger, f"{self.sim}/pause": SetBool,
                  f"{self.sim}/set_parameters": SetParameters, f"{self.interpolator}/resync": Trigger,
                  f"{self.policy}/enable": SetBool, f"{self.policy}/set_parameters": SetParameters}
        clients = {name: self._node.create_client(t, name) for name, t in wanted.items()}
        try:
            deadline = time.monotonic() + timeout
            while True:
                missing = [n for n, c in clients.items() if not c.service_is_ready()]
                if not missing:
                    return
                why = alive() if alive is not None else None
                if why:
                    raise EpisodeError(f"the graph stopped while starting: {why}")
                if time.monotonic() > deadline:
                    raise EpisodeError(f"graph not ready after {timeout:.0f} s: services {missing} are missing "
                                       f"(for {self.policy}/enable: a policy_node with the episode service, "
                                       f"its model loaded)")
                time.sleep(0.1)
        finally:
            for c in clients.values():
                self._node.destroy_client(c)

    # ------------------------------------------------------------------ episodes
    def _resync(self, effector_xy: np.ndarray) -> None:
        """Resync the interpolator until it holds at `effector_xy` (it may not have the reset pose yet: the sim's
        joint states are re-sent between tries)."""
        deadline = time.monotonic() + self.service_timeout
        last = ""
        while time.monotonic() < deadline:
            resp = self._call(Trigger, f"{self.interpolator}/resync", Trigger.Request())
            last = resp.message
            if resp.success:
                numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", resp.message.rpartition("[")[2])
                if len(numbers) >= 2 and np.allclose([float(v) for v in numbers[:2]], effector_xy,
                                                     atol=RESYNC_TOLERANCE):
                    return
            time.sleep(0.05)
            self._set_bool(f"{self.sim}/pause", True)  # the paused sim publishes its joint states again
        raise EpisodeError(f"the interpolator did not resync to the reset pose {np.round(effector_xy, 4).tolist()} "
                           f"within {self.service_timeout} s (last answer: {last!r})")

    def _enable_policy(self, t0: float, lockstep: bool) -> None:
        """Start the policy's episode; in lockstep check that it starts at the paused clock (t0 + DECISION_NS),
        which orders its decisions after the ticks' joint commands (nodes.lockstep), re-sending the clock else."""
        expected = t0 + DECISION_NS * 1e-9
        answer = ""
        for _ in range(20):
            answer = self._set_bool(f"{self.policy}/enable", True)
            match = re.search(r"from t=(-?\d+\.\d+) s", answer)
            if not lockstep or (match and abs(float(match.group(1)) - expected) < 2e-7):
                return
            time.sleep(0.05)
            self._set_bool(f"{self.sim}/pause", True)  # the sim publishes its paused clock again
        raise EpisodeError(f"{self.policy} did not start its episode at the paused sim clock {expected:.9f} s "
                           f"(answer: {answer!r}); is /clock reaching it?")

    def pause(self) -> dict[str, Any]:
        """Stop simulated time and the policy (both stay so until the next episode starts)."""
        paused = _json(self._set_bool(f"{self.sim}/pause", True), f"{self.sim}/pause")
        self._set_bool(f"{self.policy}/enable", False)
        return paused

    def run_episode(self, seed: int, *, time_limit: float | None = None,
                    video: str | Path | None = None) -> EpisodeResult:
        """One episode from scene `seed` until success or `time_limit` simulated s (None: the task's own length);
        with `video`, its camera frames are written there. The sim is left paused at the episode's end."""
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        seed = int(seed)
        t_wall = time.monotonic()
        self.pause()
        if time_limit is None:
            time_limit = default_time_limit(self.task_state()["task"], self.decision_period)
        if not (math.isfinite(time_limit) and time_limit > 0):
            raise ValueError(f"time_limit must be a positive number of simulated seconds, got {time_limit!r}")
        self._set_params(self.sim, seed=seed, episode_time_limit=float(time_limit), pause_on_success=True)
        self._set_params(self.policy, seed=seed)
        start = self._trigger(f"{self.sim}/reset")
        if start.get("seed") != seed:
            raise EpisodeError(f"{self.sim}/reset drew seed {start.get('seed')}, expected {seed}")
        self._resync(np.asarray(start["state"]["effector_xy"], dtype=np.float64))
        timeouts0 = dict(start["lockstep_timeouts"])
        t0 = float(start["sim_time"])
        if video is not None:
            self._recorder.start(t0)
        self._setpoints.start(t0)
        self._enable_policy(t0, lockstep=bool(start.get("lockstep")))
        self._set_bool(f"{self.sim}/pause", False)
        try:
            state = self._wait_for_end(t0)
        finally:
            frames = self._recorder.stop(math.inf) if video is not None else []
        written = str(write_episode_video(frames, video)) if video is not None else None
        steps = int(state["episode_steps"])
        # Decisions carried out: after the start and before the end (the one made at the end time is never carried
        # out; one made at the previous episode's end, t0 + DECISION_NS, may reach us after this one started).
        end_time = float(state["sim_time"])
        window = (t0 + 0.5 * self.decision_period, end_time - 0.5 * self.decision_period)

        def carried_out() -> np.ndarray:
            return np.array([t for t in self._setpoints.stamps() if window[0] < t < window[1]])

        deadline = time.monotonic() + 1.0  # the last decision's setpoint may still be on its way here
        while len(carried_out()) < steps and time.monotonic() < deadline:
            time.sleep(0.02)
        stamps = carried_out()
        n = np.round((stamps - t0) / self.decision_period)
        on_time = int(np.sum((n >= 1) & (np.abs(stamps - t0 - n * self.decision_period - DECISION_NS * 1e-9) < 5e-7)))
        details = {k: float(state[k]) for k in ("goal_distance", "inserted_fraction") if k in state}
        timeouts = {k: int(v) - int(timeouts0.get(k, 0)) for k, v in state["lockstep_timeouts"].items()}
        timeouts = {k: v for k, v in timeouts.items() if v}
        return EpisodeResult(
            seed=seed, success=bool(state["success"]), reward_level=float(state["reward_level"]),
            end=state["pause_reason"], steps=steps, sim_time=float(state["episode_time"]),
            wall_time=time.monotonic() - t_wall, goal_distance=details.get("goal_distance", math.nan),
            inserted_fraction=details.get("inserted_fraction"),
            final_state={k: state["state"][k] for k in STATE_KEYS if k in state["state"]},
            lockstep_timeouts=sum(timeouts.values()), timeouts_by_stream=timeouts,
            decisions=len(stamps), decisions_on_time=on_time, frames=len(frames), video=written)

    def _wait_for_end(self, t0: float) -> dict[str, Any]:
        last_time, last_change = t0, time.monotonic()
        while True:
            time.sleep(self.poll_period)
            state = self.task_state()
            if state["paused"] and state["pause_reason"] in ("success", "time_limit"):
                return state
            if state["sim_time"] > last_time:
                last_time, last_change = state["sim_time"], time.monotonic()
            elif time.monotonic() - last_change > self.stall_timeout:
                raise EpisodeError(f"simulated time stopped at {last_time:.2f} s for {self.stall_timeout:.0f} s "
                                   f"(paused: {state['paused']} {state['pause_reason']!r}); is a node down?")

    def run(self, seeds: Sequence[int], *, time_limit: float | None = None, video: str | Path | None = None,
            video_episode: int = 0, on_result: Callable[[EpisodeResult], None] | None = None,
            reruns: int = 1) -> RunSummary:
        """Episodes for `seeds` in order; the camera frames of episode `video_episode` (an index into seeds) go to
        `video`. on_result(result) is called after each episode.

        reruns: an episode in which the lockstep went on without an answer (a message that came seconds late to a
        starved node: the result then depends on CPU load) is run again from its seed, up to this many times; the
        result kept says how often (`reruns`) and still counts its own timeouts."""
        if not len(seeds):
            raise ValueError("no seeds: give at least one episode seed")
        if video is not None and not 0 <= video_episode < len(seeds):
            raise ValueError(f"video_episode {video_episode} is not an index of the {len(seeds)} episodes")
        if int(reruns) != reruns or reruns < 0:
            raise ValueError(f"reruns must be an integer >= 0, got {reruns!r}")
        summary = RunSummary()
        for i, seed in enumerate(seeds):
            attempt = 0
            while True:
                result = self.run_episode(seed, time_limit=time_limit, video=video if i == video_episode else None)
                if not result.lockstep_timeouts or attempt >= reruns:
                    break
                attempt += 1
            result = replace(result, reruns=attempt)
            summary.episodes.append(result)
            if result.video:
                summary.video = result.video
            if on_result is not None:
                on_result(result)
        return summary

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop spinning and free the runner's nodes (and its context when it made one); idempotent."""
        if self._executor is None:
            return
        self._executor.shutdown(timeout_sec=2.0)
        self._spin.join(timeout=2.0)
        self._executor = None
        self._calls.shutdown(timeout_sec=1.0)
        self._calls_node.destroy_node()
        self._node.destroy_node()
        if self._own_context and self.context.ok():
            rclpy.shutdown(context=self.context)

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise EpisodeError(f"{what} answered {text!r}, expected JSON") from None
    if not isinstance(data, dict):
        raise EpisodeError(f"{what} answered {text!r}, expected a JSON object")
    return data
