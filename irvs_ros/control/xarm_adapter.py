"""Thin adapter over `xarm.wrapper.XArmAPI` (xarm-python-sdk) for the xArm6 driver: SI units, checked return codes.

Angles are radians, lengths metres (the SDK's boundary is in mm). Every SDK call that returns a code is checked:
a non-zero code raises `XArmError` naming the call and the code. The API object can be injected
(`XArmAdapter(api)`) so the driver can be exercised without an arm; `XArmAdapter.connect(ip)` makes the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SERVO_MODE = 1     # set_mode(1): servo motion, set_servo_angle_j executes only the newest target
STATE_READY = 0    # set_state(0): start motion
STATE_STOP = 4     # set_state(4): stop


class XArmError(RuntimeError):
    """An SDK call failed (code = its return code or the controller error code, None when not known)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class XArmUnreachable(XArmError):
    """The arm's controller cannot be reached (connection refused, no route, or no answer in time)."""


@dataclass(frozen=True)
class TcpBox:
    """Axis-aligned TCP box in the base frame (m), for the controller's reduced-mode boundary (fence)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    z_min: float
    z_max: float

    def __post_init__(self) -> None:
        vals = (self.x_min, self.x_max, self.y_min, self.y_max, self.z_min, self.z_max)
        if not all(np.isfinite(vals)) or not (self.x_min < self.x_max and self.y_min < self.y_max
                                               and self.z_min < self.z_max):
            raise ValueError(f"TcpBox needs finite min < max on every axis, got {vals}")

    def boundary_mm(self) -> list[int]:
        """[x_max, x_min, y_max, y_min, z_max, z_min] in whole mm, as set_reduced_tcp_boundary takes it."""
        return [int(round(v * 1000.0)) for v in (self.x_max, self.x_min, self.y_max, self.y_min, self.z_max,
                                                   self.z_min)]


def _default_factory(ip: str) -> Any:
    from xarm.wrapper import XArmAPI

    return XArmAPI(ip, is_radian=True, do_not_open=True)


class XArmAdapter:
    """The calls the driver makes, over an XArmAPI-like object `api` (see module docstring)."""

    def __init__(self, api: Any, ip: str = "") -> None:
        self.api = api
        self.ip = ip

    @classmethod
    def connect(cls, ip: str, timeout: float = 5.0,
                factory: Callable[[str], Any] = _default_factory) -> XArmAdapter:
        """Connect to the controller at `ip`; XArmUnreachable when that fails or takes longer than `timeout` s."""
        if not ip:
            raise XArmUnreachable("no robot IP given")
        result: dict[str, Any] = {}

        def attempt() -> None:
            try:
                api = factory(ip)
                if not api.connected:
                    api.connect()
                result["api"] = api
            except Exception as e:  # the SDK raises bare Exception ("connect socket failed")
                result["error"] = e

        # The SDK's socket connect can hang on an unroutable address: bound it.
        thread = threading.Thread(target=attempt, name="xarm-connect", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise XArmUnreachable(f"xArm at {ip} did not answer within {timeout} s")
        if "error" in result:
            raise XArmUnreachable(f"cannot connect to the xArm at {ip}: {result['error']}")
        api = result["api"]
        if not api.connected:
            raise XArmUnreachable(f"cannot connect to the xArm at {ip}: the SDK reports it is not connected")
        return cls(api, ip)

    # ------------------------------------------------------------------ checked calls
    def _check(self, name: str, ret: Any) -> Any:
        code = ret[0] if isinstance(ret, tuple) else ret
        if code != 0:
            raise XArmError(f"xArm {name} failed with code {code}", code)
        return ret

    def clean_warnings_and_errors(self) -> None:
        """clean_warn() and clean_error() (once, at start or on an operator's explicit request)."""
        self._check("clean_warn", self.api.clean_warn())
        self._check("clean_error", self.api.clean_error())

    def set_tcp_boundary(self, box: TcpBox) -> None:
        """The controller's own reduced-mode TCP boundary = `box`, with the fence (boundary) and reduced mode on."""
        self._check("set_reduced_tcp_boundary", self.api.set_reduced_tcp_boundary(box.boundary_mm()))
        self._check("set_fence_mode", self.api.set_fence_mode(True))
        self._check("set_reduced_mode", self.api.set_reduced_mode(True))

    def enable_servo_mode(self) -> None:
        """motion_enable(True), set_mode(1) (servo), set_state(0) (ready)."""
        self._check("motion_enable", self.api.motion_enable(enable=True))
        self._check("set_mode", self.api.set_mode(SERVO_MODE))
        self._check("set_state", self.api.set_state(STATE_READY))

    def servo_j(self, q: Sequence[float]) -> None:
        """Stream one joint target (rad, 6 values) with set_servo_angle_j."""
        self._check("set_servo_angle_j", self.api.set_servo_angle_j([float(v) for v in q], is_radian=True))

    def joint_positions(self) -> np.ndarray:
        """Measured joint angles (6,) in rad."""
        code, angles = self.api.get_servo_angle(is_radian=True)
        if code != 0:
            raise XArmError(f"xArm get_servo_angle failed with code {code}", code)
        return np.asarray(angles[:6], dtype=np.float64)

    def stop(self) -> None:
        """set_state(4): stop motion now (the controller then ignores motion commands until set_state(0))."""
        self._check("set_state(stop)", self.api.set_state(STATE_STOP))

    @property
    def error_code(self) -> int:
        """The controller's current error code (0: none), as last reported."""
        return int(self.api.error_code)

    @property
    def warn_code(self) -> int:
        return int(self.api.warn_code)

    @property
    def connected(self) -> bool:
        return bool(self.api.connected)

    def disconnect(self) -> None:
        self.api.disconnect()
