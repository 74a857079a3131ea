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
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

JOINT_NAMES: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
TCP_LINK = "tcp"
TOOL_LINK = "tool"
TOOL_MASS = 0.05     # kg, the pipe (inertia diag(1e-4, 1e-4, 1e-5) kg m^2 about its centre)
TCP_MASS = 0.001     # kg, a point-like marker link (inertia 1e-7 kg m^2)


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
      <mass value="{TOOL_MASS}"/>
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
      <mass value="{TCP_MASS}"/>
      <inertia ixx="1e-7" ixy="0" ixz="0" iyy="1e-7" iyz="0" izz="1e-7"/>
    </inertial>
  </link>
  <joint name="tcp_joint" type="fixed">
    <parent link="link6"/>
    <child link="{TCP_LINK}"/>
    <origin rpy="0 0 0" xyz="0 0 {tool.flange_to_tcp}"/>
  </joint>
"""


def _xarm_urdf_text() -> tuple[Path, str]:
    xarm_dir = Path(pybullet_data.getDataPath()) / "xarm"
    return xarm_dir, (xarm_dir / "xarm6_robot.urdf").read_text()


def xarm6_joint_origins() -> dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """Each joint of pybullet_data's xarm6_robot.urdf: name -> origin in the parent link frame (xyz (m), rpy (rad))."""
    _, text = _xarm_urdf_text()
    out = {}
    for joint in ET.fromstring(text).findall("joint"):   # not the <joint> refs inside <transmission>
        origin = joint.find("origin")
        xyz = rpy = (0.0, 0.0, 0.0)
        if origin is not None:
            xyz = tuple(float(v) for v in origin.get("xyz", "0 0 0").split())
            rpy = tuple(float(v) for v in origin.get("rpy", "0 0 0").split())
        out[joint.get("name")] = (xyz, rpy)
    return out


def xarm6_with_tool_urdf(tool: ToolGeometry = ToolGeometry(), cache_dir: str | os.PathLike | None = None, *,
                         merged: bool = False) -> Path:
    """Path of a URDF: pybullet_data's xarm/xarm6_robot.urdf plus the tool and TCP links (written once, cached).

    Mesh references (package://xarm_description/...) are rewritten to absolute paths into pybullet_data so the
    file loads from anywhere.

    `merged=True` gives the same arm with its fixed links folded into their parents, for the simulator: no
    "world" link (the base link is the root), and the tool is a visual and collision shape of link6 (whose own
    collision mesh, 0.1 m above the tool tip and filtered out of collisions anyway, is dropped); link6's
    inertial is the combined one of link6, tool and TCP marker. There is no "tcp" link: the TCP is
    `tool.flange_to_tcp` along link6's z axis. Three fewer links for the articulated-body algorithm.
    (PyBullet's URDF_MERGE_FIXED_LINKS does the same but prints its progress to stdout.)
    """
    xarm_dir, text = _xarm_urdf_text()
    text = text.replace("package://", str(xarm_dir) + "/")
    end = text.rfind("</robot>")
    if end < 0:
        raise ValueError(f"{xarm_dir / 'xarm6_robot.urdf'} has no </robot> tag")
    text = _merged_xml(text, tool) if merged else text[:end] + _tool_xml(tool) + text[end:]
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


def _merged_xml(text: str, tool: ToolGeometry) -> str:
    root = ET.fromstring(text)
    for link in root.findall("link"):
        if link.get("name") == "world":
            root.remove(link)
    for joint in root.findall("joint"):
        if joint.get("name") == "world_joint":
            root.remove(joint)
    link6 = next(link for link in root.findall("link") if link.get("name") == "link6")
    for collision in link6.findall("collision"):
        link6.remove(collision)
    # Tool shapes in link6's frame: the pipe's centre is half its length out along z.
    tool_xml = ET.fromstring(f"<robot>{_tool_xml(tool)}</robot>").find("link")
    for kind in ("visual", "collision"):
        element = tool_xml.find(kind)
        element.find("origin").set("xyz", f"0 0 {tool.length / 2.0}")
        link6.append(element)
    inertial = link6.find("inertial")
    origin = inertial.find("origin")
    if any(abs(float(v)) > 0 for v in origin.get("rpy", "0 0 0").split()):
        raise ValueError("link6's inertial frame is rotated; merging assumes it is not")
    parts = [(float(inertial.find("mass").get("value")), np.array([float(v) for v in origin.get("xyz").split()]),
              _inertia_matrix(inertial.find("inertia"))),
             (TOOL_MASS, np.array([0.0, 0.0, tool.length / 2.0]), np.diag([1e-4, 1e-4, 1e-5])),
             (TCP_MASS, np.array([0.0, 0.0, tool.flange_to_tcp]), np.eye(3) * 1e-7)]
    mass = sum(m for m, _, _ in parts)
    com = sum(m * c for m, c, _ in parts) / mass
    inertia = sum(i + m * (float(d @ d) * np.eye(3) - np.outer(d, d)) for m, c, i in parts for d in [c - com])
    origin.set("xyz", " ".join(f"{v:.9g}" for v in com))
    inertial.find("mass").set("value", f"{mass:.9g}")
    el = inertial.find("inertia")
    for name, (r, c) in _INERTIA_KEYS.items():
        el.set(name, f"{inertia[r, c]:.9g}")
    return ET.tostring(root, encoding="unicode")


_INERTIA_KEYS = {"ixx": (0, 0), "ixy": (0, 1), "ixz": (0, 2), "iyy": (1, 1), "iyz": (1, 2), "izz": (2, 2)}


def _inertia_matrix(el: ET.Element) -> np.ndarray:
    m = np.zeros((3, 3))
    for name, (r, c) in _INERTIA_KEYS.items():
        m[r, c] = m[c, r] = float(el.get(name, "0"))
    return m
