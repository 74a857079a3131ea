"""The xArm6 from `pybullet_data` with the cell's cylindrical effector, as one URDF file.

The tool is a straight pipe fixed to the flange (link6) along the flange axis, like the real cell's 6-inch PVC
pipe: default radius 0.010 m (20 mm diameter; IBC does not state the pipe's diameter, and IBC's oracle
distances - approach to 3 cm from the block centre - assume a tool of at most ~1 cm radius), length 0.1524 m.
The control point ("tcp" link) sits on the pipe axis `tcp_above_tip` (default 0.05 m) above the pipe's lower
end, so with the TCP at the reference effector height 0.06 m the pipe ends 0.01 m above the table and its
side hits a 0.04 m block over most of the block's height.

The same file serves the simulated arm (sim/cell.py) and the kinematics-only IK client (control/ik.py), so
the IK solves exactly the chain the simulator drives.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pybullet_data

JOINT_NAMES: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
TCP_LINK = "tcp"
TOOL_LINK = "tool"


@dataclass(frozen=True)
class ToolGeometry:
    """Cylindrical effector fixed to the flange, pointing along the flange axis. Units: metres."""

    radius: float = 0.01
    length: float = 0.1524
    tcp_above_tip: float = 0.05

    def __post_init__(self) -> None:
        if not (self.radius > 0 and self.length > 0 and 0 <= self.tcp_above_tip < self.length):
            raise ValueError(f"tool needs radius > 0, length > 0 and 0 <= tcp_above_tip < length; got {self}")

    @property
    def flange_to_tcp(self) -> float:
        """Distance from the flange to the TCP along the tool axis (m)."""
        return self.length - self.tcp_above_tip


def _tool_xml(tool: ToolGeometry) -> str:
    half = tool.length / 2.0
    return f"""
  <link name="{TOOL_LINK}">
    <visual>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <geometry><cylinder length="{tool.length}" radius="{tool.radius}"/></geometry>
      <material name="pvc"><color rgba="0.92 0.92 0.90 1"/></material>
    </visual>
    <collision>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <geometry><cylinder length="{tool.length}" radius="{tool.radius}"/></geometry>
    </collision>
    <inertial>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <mass value="0.05"/>
      <inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-5"/>
    </inertial>
  </link>
  <joint name="tool_joint" type="fixed">
    <parent link="link6"/>
    <child link="{TOOL_LINK}"/>
    <origin rpy="0 0 0" xyz="0 0 {half}"/>
  </joint>
  <link name="{TCP_LINK}">
    <inertial>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <mass value="0.001"/>
      <inertia ixx="1e-7" ixy="0" ixz="0" iyy="1e-7" iyz="0" izz="1e-7"/>
    </inertial>
  </link>
  <joint name="tcp_joint" type="fixed">
    <parent link="link6"/>
    <child link="{TCP_LINK}"/>
    <origin rpy="0 0 0" xyz="0 0 {tool.flange_to_tcp}"/>
  </joint>
"""


def xarm6_with_tool_urdf(tool: ToolGeometry = ToolGeometry(), cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a URDF: pybullet_data's xarm/xarm6_robot.urdf plus the tool and TCP links (written once, cached).

    Mesh references (package://xarm_description/...) are rewritten to absolute paths into pybullet_data so the
    file loads from anywhere.
    """
    xarm_dir = Path(pybullet_data.getDataPath()) / "xarm"
    text = (xarm_dir / "xarm6_robot.urdf").read_text()
    text = text.replace("package://", str(xarm_dir) + "/")
    end = text.rfind("</robot>")
    if end < 0:
        raise ValueError(f"{xarm_dir / 'xarm6_robot.urdf'} has no </robot> tag")
    text = text[:end] + _tool_xml(tool) + text[end:]
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "irvs_ros_urdf"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"xarm6_tool_{digest}.urdf"
    if not path.exists():
        # Write-then-rename so parallel processes never load a half-written file.
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    return path
