"""policy_node: runs one policy file on camera images and publishes absolute TCP setpoints.

Every `period` seconds of the node clock (sim time under use_sim_time) it takes the newest image from
`/camera/camera/color/image_raw`; if none arrived or the newest is older than `max_image_age` (by its header
stamp) it holds: warns and publishes nothing. Should a fresh image (or the first effector pose) come while the
clock still stands at that decision time, the decision is taken then: a lockstep sim holds its clock until the
decision's setpoint came, and the frame, which travels apart from the clock, can come a few ms after it under load.
Otherwise it crops/resizes the image to the policy's input (`image_ops.crop_resize`), acts
(`runtime.policy_file.Policy.act_with_info`: the argmin the file names, with `argmin_samples` candidates when set,
IRvS tilt `eta_inv`), and publishes `/irvs/setpoint` = previous setpoint + action, through the envelope's step and
workspace limits (`control.Envelope.apply_delta`). The first previous setpoint is the effector pose
(`/irvs/ee_pose`) or `start_xy`.

`/diagnostics` (1 Hz): decision latency (compute: image taken -> setpoint published; and image received ->
setpoint published) p50 / p99 / last in ms, the chosen action's energy, the predicted return, decisions,
holds for stale images, onnxruntime providers. Never imports torch.

`~/enable` (std_srvs/SetBool), for episodes run by a driver (nodes.episode_runner): false stops deciding (it
answers after a decision in progress); true starts a new episode: the previous setpoint, image and effector pose
are forgotten (only messages stamped from now on count), the argmin sampling is reseeded from `seed`, and the
decision timer restarts, so decisions fall at now + k * period.
"""

from __future__ import annotations

import collections
import math
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import SetBool

from irvs_ros.control.envelope import EnvelopeError
from irvs_ros.nodes.common import (
    COMMAND_QOS,
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    SENSOR_QOS,
    SETPOINT_ENVELOPE_KEYS,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    envelope_from_params,
    envelope_params,
    finite,
    node_now,
    non_negative,
    one_of,
    pair,
    percentile_ms,
    positive,
    run_node,
    to_sec,
)
from irvs_ros.nodes.image_ops import ImageError, crop_resize, image_array
from irvs_ros.runtime.policy_file import PolicyFileError, default_providers, load_policy
from irvs_ros.runtime.spec import SpecError

NODE_NAME = "policy_node"
# State entries the node can fill from the graph, with their sizes.
STATE_SOURCES = {"effector_xy": 2, "setpoint_xy": 2}

PARAMS: dict[str, Param] = {
    "model": Param(str, "path to a policy .onnx file", lambda v: None if v.strip() else "a path to a policy file"),
    "eta_inv": Param(float, "IRvS tilt toward high return; < 0 uses the file's value", finite),
    "providers": Param(str, "onnxruntime providers", one_of("auto", "cpu", "cuda")),
    "threads": Param(int, "onnxruntime intra-op threads of the policy; 0 = one per core", non_negative),
    "spinning": Param(bool, "idle onnxruntime threads busy-wait for work (lower latency, burns the cores)"),
    "period": Param(float, "decision period (s, node clock)", positive),
    "max_image_age": Param(float, "newest image older than this (s) -> hold", positive),
    "seed": Param(int, "seed of the argmin's sampling"),
    "argmin_samples": Param(int, "argmin candidates per decision (DFO / Langevin num_samples); 0 = the file's",
                            non_negative),
    "image_topic": Param(str, "camera images in (Image)"),
    "setpoint_topic": Param(str, "absolute TCP setpoints out (PoseStamped)"),
    "ee_pose_topic": Param(str, "effector pose in (PoseStamped)"),
    "frame_id": Param(str, "base frame of the setpoints"),
    "start_from_ee_pose": Param(bool, "start from the effector pose instead of start_xy"),
    "start_xy": Param(list, "TCP xy (m) the first delta applies to when not starting from the effector pose", pair),
    "diagnostics_period": Param(float, "seconds between /diagnostics messages", positive),
    **envelope_params(SETPOINT_ENVELOPE_KEYS),
}


def _providers(choice: str) -> list[str]:
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return default_providers()


class PolicyNode(Node):
    """The 5 Hz policy (see module docstring)."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.envelope = envelope_from_params(p, SETPOINT_ENVELOPE_KEYS)
            eta = None if p["eta_inv"] < 0 else p["eta_inv"]
            samples = {"num_samples": p["argmin_samples"]} if p["argmin_samples"] else None
            self.policy = load_policy(p["model"], eta_inv=eta, argmin_overrides=samples,
                                      providers=_providers(p["providers"]), threads=p["threads"],
                                      spinning=p["spinning"])
            obs = self.policy.spec.obs
            if obs.image_shape is None:
                raise NodeConfigError(f"{NODE_NAME}: {p['model']} is a state-only policy; policy_node acts on images")
            self._state_keys = self._check_state_keys(obs.state_keys, obs.state_dim)
        except (PolicyFileError, SpecError, EnvelopeError) as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self.image_hw = obs.image_shape[:2]
        self.rng = np.random.default_rng(p["seed"])
        self._lock = threading.Lock()             # the newest inputs
        self._decision_lock = threading.Lock()    # one decision at a time (timer, or a held decision's late input)
        self._held_at: float | None = None        # node time of a decision held for a missing input
        self._image: tuple[Image, float] | None = None      # newest message, wall time received
        self._ee_xy: np.ndarray | None = None
        self.setpoint: np.ndarray | None = None
        self.decisions = 0
        self.stale_holds = 0
        self.errors = 0
        self.last_error = ""
        self.last_energy = float("nan")
        self.last_return = float("nan")
        self._compute = collections.deque(maxlen=100)
        self._end_to_end = collections.deque(maxlen=100)
        self._enabled = True
        self._episode_start = -math.inf  # node clock (s): older images and poses belong to a previous episode

        self.create_subscription(Image, p["image_topic"], self._on_image, SENSOR_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(PoseStamped, p["ee_pose_topic"], self._on_ee_pose, COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._pub = self.create_publisher(PoseStamped, p["setpoint_topic"], COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Decisions and ~/enable share a group of their own (enable never runs during a decision), apart from the
        # default group, which holds rclpy's /clock subscription. Were they in the default group, every /clock
        # message arriving during a decision (the lockstep sim re-publishes its clock every 50 ms while it waits)
        # would find its group busy, and rclpy's MultiThreadedExecutor then busy-looped holding the GIL until the
        # decision ended: a 60 ms decision (4096 DFO samples) took 2 s and more. (The nodes now spin a
        # graph.PoolExecutor, which waits instead; the groups stay apart so that neither waits for the other.)
        decision_group = MutuallyExclusiveCallbackGroup()
        self._timer = self.create_timer(p["period"], self._on_timer, callback_group=decision_group)
        self.create_service(SetBool, "~/enable", self._on_enable, callback_group=decision_group)
        # Its own group: a decision that takes longer than the period keeps the default group's timer always ready,
        # which would starve a diagnostics timer sharing that group (no diagnostics while acting).
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"loaded {self.policy!r}")

    @staticmethod
    def _check_state_keys(keys: tuple[str, ...], state_dim: int) -> tuple[str, ...]:
        if state_dim == 0:
            return ()
        unknown = [k for k in keys if k not in STATE_SOURCES]
        if unknown or sum(STATE_SOURCES[k] for k in keys) != state_dim:
            raise NodeConfigError(f"{NODE_NAME}: the policy's state {list(keys)} (dim {state_dim}) cannot be built "
                                  f"on the ROS graph; supported keys: {STATE_SOURCES}")
        return keys

    # ------------------------------------------------------------------ inputs: keep the newest
    def _on_image(self, msg: Image) -> None:
        if to_sec(msg.header.stamp) < self._episode_start:
            return
        with self._lock:
            self._image = (msg, time.monotonic())
        self._retry_held()

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        if to_sec(msg.header.stamp) < self._episode_start:
            return
        xy = np.array([msg.pose.position.x, msg.pose.position.y])
        if np.all(np.isfinite(xy)):
            with self._lock:
                self._ee_xy = xy
            self._retry_held()

    # ------------------------------------------------------------------ the decision
    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        if req.data:
            seed = self.get_parameter("seed").value
            if not isinstance(seed, int) or seed < 0:
                resp.success, resp.message = False, f"parameter 'seed' must be an int >= 0, got {seed!r}"
                return resp
            with self._decision_lock:
                now = node_now(self)
                with self._lock:
                    self._image, self._ee_xy = None, None
                self.setpoint, self._held_at = None, None
                self.rng = np.random.default_rng(seed)
                self._episode_start = now
                self._timer.reset()
                self._enabled = True
            resp.message = f"new episode from t={now:.9f} s (argmin seed {seed})"
        else:
            with self._decision_lock:
                self._enabled, self._held_at = False, None
            resp.message = "disabled: no decisions until enabled"
        resp.success = True
        return resp

    def _on_timer(self) -> None:
        with self._decision_lock:
            self._held_at = None
            self._decide(node_now(self))

    def _retry_held(self) -> None:
        """An input came: take the decision held for a missing input if the clock still stands at its time."""
        if self._held_at is None:
            return
        with self._decision_lock:
            at = self._held_at
            if at is not None and node_now(self) <= at + 1e-6:
                self._held_at = None
                self._decide(at)

    def _decide(self, now: float) -> None:
        """The decision at node time `now` (s); called holding the decision lock."""
        if not self._enabled:
            return
        with self._lock:
            latest, ee_xy = self._image, self._ee_xy
        why = self._missing_input(latest, ee_xy, now)
        if why:
            self._held_at = now
            self._hold(why)
            return
        msg, received = latest
        if self.setpoint is None:
            self.setpoint = self.envelope.clamp(ee_xy if self.params["start_from_ee_pose"]
                                                else np.asarray(self.params["start_xy"]))
        t0 = time.monotonic()
        try:
            image = crop_resize(image_array(msg), *self.image_hw)
            obs = {"image": image[None]}
            if self._state_keys:
                parts = {"effector_xy": ee_xy if ee_xy is not None else self.setpoint, "setpoint_xy": self.setpoint}
                obs["state"] = np.concatenate([parts[k] for k in self._state_keys])[None].astype(np.float32)
            action, info = self.policy.act_with_info(obs, self.rng)
        except (ImageError, PolicyFileError, SpecError) as e:
            self.errors += 1
            self.last_error = str(e)
            self.get_logger().error(f"decision failed, holding: {e}", throttle_duration_sec=1.0)
            return
        res = self.envelope.apply_delta(self.setpoint, action[0])
        if not res.accepted:
            self.errors += 1
            self.last_error = res.reason
            self.get_logger().error(f"action rejected by the envelope, holding: {res.reason}",
                                    throttle_duration_sec=1.0)
            return
        out = PoseStamped()
        out.header.stamp = self.get_clock().now().to_msg()
        out.header.frame_id = self.params["frame_id"]
        out.pose.position.x, out.pose.position.y = float(res.xy[0]), float(res.xy[1])
        out.pose.position.z = self.envelope.config.z
        out.pose.orientation.y = 1.0  # tool pointing down (control.ik.DOWN_QUATERNION)
        self._pub.publish(out)
        done = time.monotonic()
        self.setpoint = res.xy
        self.decisions += 1
        self._compute.append(done - t0)
        self._end_to_end.append(done - received)
        if info.get("energy") is not None:
            self.last_energy = float(info["energy"][0])
        if info.get("return") is not None:
            self.last_return = float(info["return"][0])

    def _missing_input(self, latest: tuple[Image, float] | None, ee_xy: np.ndarray | None, now: float) -> str:
        """Why no decision can be taken at node time `now` on these inputs; '' when one can."""
        if latest is None:
            return "no image received yet"
        age = now - to_sec(latest[0].header.stamp)
        if age > self.params["max_image_age"]:
            return f"newest image is {age:.3f} s old (> max_image_age {self.params['max_image_age']} s)"
        if self.setpoint is None and self.params["start_from_ee_pose"] and ee_xy is None:
            return f"no {self.params['ee_pose_topic']} yet to start from"
        return ""

    def _hold(self, why: str) -> None:
        self.stale_holds += 1
        self.get_logger().warn(f"holding, no setpoint: {why}", throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if self.errors and self.last_error:
            level, message = DIAG_ERROR, f"decision failed: {self.last_error}"
        elif self.stale_holds and not self.decisions:
            level, message = DIAG_WARN, "holding: no fresh image"
        else:
            level, message = DIAG_OK, "acting"
        comp, e2e = list(self._compute), list(self._end_to_end)  # one C call each: atomic beside _decide's appends
        values = {
            "decisions": self.decisions, "stale_holds": self.stale_holds, "errors": self.errors,
            "latency_compute_p50_ms": percentile_ms(comp, 50), "latency_compute_p99_ms": percentile_ms(comp, 99),
            "latency_compute_last_ms": comp[-1] * 1e3 if comp else math.nan,
            "latency_image_to_setpoint_p50_ms": percentile_ms(e2e, 50),
            "latency_image_to_setpoint_p99_ms": percentile_ms(e2e, 99),
            "energy": self.last_energy, "predicted_return": self.last_return,
            "eta_inv": self.policy.eta_inv, "algorithm": self.policy.algorithm,
            "argmin": self.policy.argmin.get("method", ""),
            "argmin_samples": int(self.policy.argmin.get("num_samples", 0)),
            "providers": ",".join(self.policy.providers),
            "precision": self.policy.precision,
        }
        if self.setpoint is not None:
            values["setpoint_x"], values["setpoint_y"] = float(self.setpoint[0]), float(self.setpoint[1])
        status = diagnostic_status(f"{self.get_name()}: policy", level, message, values, self.policy.path.name)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    def close(self) -> None:
        """Nothing runs outside the executor; present for symmetry with the other nodes."""


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
