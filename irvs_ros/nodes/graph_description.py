"""The one description of each irvs_ros ROS graph, read by both the launch files (launch/*.launch.py, for
`ros2 launch` on a ROS 2 machine) and `irvs bringup` (the same graph from Python where there is no `ros2`).

A graph has launch arguments (strings, as on the `ros2 launch` command line: `use_sim:=true model:=p.onnx`),
nodes (console-script executable, node name, parameter YAML files of config/, fixed parameter overrides,
launch-argument -> parameter overrides, and a condition on launch arguments) and refusals (argument
combinations it cannot run, with the reason). A node whose executable does not exist yet is `pending`: a graph
branch that needs it is refused with a clear message instead of failing to find the executable.

Imports neither rclpy nor launch, so it can be read anywhere (tests, the bring-up, a launch file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "irvs_ros"
REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class GraphDescriptionError(ValueError):
    """An unknown graph or argument, a bad argument value, or a branch that cannot run (see the message)."""


@dataclass(frozen=True)
class LaunchArg:
    """A launch argument: `name:=value` on the `ros2 launch` line; `choices` () = any string."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()
    required: bool = False  # an empty value cannot run the graph (checked by the bring-up, and by the node itself)


@dataclass(frozen=True)
class ArgParam:
    """Launch argument `arg` sets parameter `param` of a node, converted to `kind` (bool, float, int or str)."""

    arg: str
    param: str
    kind: type


@dataclass(frozen=True)
class NodeEntry:
    """One node of a graph. `when`: (argument, value) pairs that must all hold (value compared as a word:
    booleans by truth, others exactly); () = always. `pending`: the executable is not written yet."""

    executable: str
    name: str
    param_files: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    from_args: tuple[ArgParam, ...] = ()
    when: tuple[tuple[str, str], ...] = ()
    pending: str = ""  # non-empty: why / what will replace it


@dataclass(frozen=True)
class Refusal:
    """Argument values (all of `when`) this graph cannot run, and why."""

    when: tuple[tuple[str, str], ...]
    reason: str


@dataclass(frozen=True)
class GraphDescription:
    name: str
    description: str
    args: tuple[LaunchArg, ...]
    nodes: tuple[NodeEntry, ...]
    refusals: tuple[Refusal, ...] = field(default=())

    def arg(self, name: str) -> LaunchArg:
        for a in self.args:
            if a.name == name:
                return a
        raise GraphDescriptionError(f"graph {self.name!r} has no launch argument {name!r}; "
                                    f"it has {[a.name for a in self.args]}")

    def all_refusals(self) -> tuple[Refusal, ...]:
        """The explicit refusals plus one per pending node (its branch cannot start)."""
        pending = tuple(Refusal(n.when, f"node {n.name!r} needs executable {n.executable!r}, which is pending: "
                                        f"{n.pending}") for n in self.nodes if n.pending)
        return self.refusals + pending


@dataclass(frozen=True)
class ResolvedNode:
    """A node to start: its executable, name, parameter files (absolute paths) and overrides (typed values)."""

    executable: str
    name: str
    param_files: tuple[Path, ...]
    overrides: dict[str, Any]


# ---------------------------------------------------------------------------------------------- the graphs

_USE_SIM = LaunchArg("use_sim", "false", "true: the PyBullet cell (sim_node) instead of the xArm6 and camera",
                     ("true", "false"))
_ROBOT_IP = LaunchArg("robot_ip", "192.168.1.185", "xArm6 controller address (real robot only)")
_CAMERA = LaunchArg("camera", "realsense", "image source: realsense (the D415 on the robot) or sim (sim_node's "
                    "camera, needs use_sim:=true)", ("realsense", "sim"))
_SIM_TIME = ArgParam("use_sim", "use_sim_time", bool)


def _sim_node(task: str | None = None, when: tuple[tuple[str, str], ...] = ()) -> NodeEntry:
    fixed = (("task", task),) if task else ()
    return NodeEntry("sim_node", "sim_node", ("sim_node.yaml",), fixed=fixed, when=when)


def _real_robot_nodes() -> tuple[NodeEntry, ...]:
    return (
        NodeEntry("xarm_driver_node", "xarm_driver_node", ("xarm_driver_node.yaml",),
                  from_args=(ArgParam("robot_ip", "robot_ip", str),), when=(("use_sim", "false"),)),
        NodeEntry("camera_node", "camera_node", ("camera_node.yaml",),
                  when=(("use_sim", "false"), ("camera", "realsense"))),
    )


_SIM_CAMERA_REFUSAL = Refusal((("use_sim", "false"), ("camera", "sim")),
                              "camera:=sim is sim_node's camera and needs use_sim:=true")

GRAPHS: dict[str, GraphDescription] = {
    "sim": GraphDescription(
        "sim", "the simulated xArm6 cell and the 100 Hz interpolator on sim time (no policy): a robot to drive",
        args=(LaunchArg("task", "push", "simulated task", ("push", "push_insert")),
              LaunchArg("real_time_factor", "1.0", "simulated s per wall s (0 = as fast as possible)")),
        nodes=(NodeEntry("sim_node", "sim_node", ("sim_node.yaml",),
                         from_args=(ArgParam("task", "task", str), ArgParam("real_time_factor", "real_time_factor",
                                                                                  float))),
               NodeEntry("interpolator_node", "interpolator_node", ("interpolator_node.yaml",),
                         fixed=(("use_sim_time", True),))),
    ),
    "push_insert": GraphDescription(
        "push_insert", "the push-insert skill: policy (5 Hz) -> interpolator (100 Hz) -> xArm6 or the sim cell",
        args=(_USE_SIM,
              LaunchArg("model", "", "policy file (.onnx, from `irvs export`)", required=True),
              _ROBOT_IP,
              _CAMERA,
              LaunchArg("eta_inv", "-1.0", "IRvS tilt toward high return; < 0 = the policy file's value"),
              LaunchArg("argmin_samples", "0", "argmin candidates per decision; 0 = the policy file's value")),
        nodes=(_sim_node("push_insert", when=(("use_sim", "true"),)),
               *_real_robot_nodes(),
               NodeEntry("interpolator_node", "interpolator_node", ("interpolator_node.yaml",), from_args=(_SIM_TIME,)),
               NodeEntry("policy_node", "policy_node", ("policy_node.yaml",),
                         from_args=(_SIM_TIME, ArgParam("model", "model", str),
                                    ArgParam("eta_inv", "eta_inv", float),
                                    ArgParam("argmin_samples", "argmin_samples", int)))),
        refusals=(_SIM_CAMERA_REFUSAL,),
    ),
    "teleop_record": GraphDescription(
        "teleop_record", "teleoperated demonstrations recorded as one bag per episode (arm or sim cell)",
        args=(LaunchArg("use_sim", "true", _USE_SIM.description, _USE_SIM.choices),
              _ROBOT_IP,
              _CAMERA,
              LaunchArg("task", "push_insert", "task label of the episodes (and the simulated task)",
                        ("push", "push_insert")),
              LaunchArg("output", "recordings", "directory of the episode bags")),
        nodes=(NodeEntry("sim_node", "sim_node", ("sim_node.yaml",), from_args=(ArgParam("task", "task", str),),
                         when=(("use_sim", "true"),)),
               *_real_robot_nodes(),
               NodeEntry("interpolator_node", "interpolator_node", ("interpolator_node.yaml",), from_args=(_SIM_TIME,)),
               NodeEntry("teleop_node", "teleop_node", ("teleop_node.yaml",), from_args=(_SIM_TIME,)),
               NodeEntry("recorder_node", "recorder_node", ("recorder_node.yaml",),
                         from_args=(_SIM_TIME, ArgParam("task", "task", str), ArgParam("output", "output_dir", str))),
               ),
        refusals=(_SIM_CAMERA_REFUSAL,),
    ),
}


# ---------------------------------------------------------------------------------------------- resolution


def graph(name: str) -> GraphDescription:
    """The description of graph `name` (a key of GRAPHS)."""
    try:
        return GRAPHS[name]
    except KeyError:
        raise GraphDescriptionError(f"unknown graph {name!r}; choose from {sorted(GRAPHS)}") from None


def parse_bool(text: str) -> bool:
    """A launch-argument word as a bool (true/false, 1/0, yes/no, on/off; any case)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise GraphDescriptionError(f"expected a boolean (true or false), got {text!r}")


def convert(text: str, kind: type) -> Any:
    """A launch-argument string as a parameter value of type `kind` (bool, int, float or str)."""
    if kind is bool:
        return parse_bool(text)
    if kind in (int, float):
        try:
            return kind(str(text).strip())
        except ValueError:
            raise GraphDescriptionError(f"expected a{'n int' if kind is int else ' number'}, got {text!r}") from None
    return str(text)


def arg_values(desc: GraphDescription, given: dict[str, str] | None = None) -> dict[str, str]:
    """All launch-argument values of `desc`: the defaults updated with `given`; unknown names and values outside
    an argument's choices raise GraphDescriptionError."""
    values = {a.name: a.default for a in desc.args}
    for name, value in (given or {}).items():
        arg = desc.arg(name)
        text = str(value)
        if arg.choices and text.lower() not in arg.choices:
            raise GraphDescriptionError(f"{desc.name}: {name}:={text!r} is not one of {list(arg.choices)}")
        values[name] = text.lower() if arg.choices else text
    return values


def holds(when: tuple[tuple[str, str], ...], values: dict[str, str]) -> bool:
    """True when every (argument, value) pair of `when` holds for `values` (booleans compared by truth)."""
    for name, expected in when:
        actual = values[name]
        if expected in TRUE_WORDS + FALSE_WORDS:
            if parse_bool(actual) != parse_bool(expected):
                return False
        elif actual != expected:
            return False
    return True


def param_file(file_name: str, config_dir: str | os.PathLike | None = None) -> Path:
    """Absolute path of a parameter file of config/: in `config_dir`, else the repository's config/, else the
    installed share/irvs_ros/config (same search as nodes.common.config_path)."""
    candidates = [Path(config_dir) / file_name] if config_dir else []
    candidates.append(REPO_CONFIG_DIR / file_name)
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / file_name)
    except Exception:  # no ament index (plain pip install): the repository copy is the only one
        pass
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise GraphDescriptionError(f"no parameter file {file_name}: looked in {[str(c) for c in candidates]}")


DDS_PROFILE = "fastdds.xml"  # in config/: transports sized for camera frames, short writer heartbeats
DDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def dds_profile_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variable that gives every node of a graph config/fastdds.xml as its Fast DDS profile, as
    {name: path}; {} when `env` (default: this process's) names a profile file already (the user's wins) or no
    copy is installed."""
    if any(v in (os.environ if env is None else env) for v in DDS_PROFILE_VARS):
        return {}
    try:
        return {DDS_PROFILE_VARS[0]: str(param_file(DDS_PROFILE))}
    except GraphDescriptionError:
        return {}


def node_overrides(entry: NodeEntry, values: dict[str, str]) -> dict[str, Any]:
    """Parameter overrides of `entry` for launch-argument `values`: its fixed ones, then those from arguments."""
    out: dict[str, Any] = dict(entry.fixed)
    for ap in entry.from_args:
        try:
            out[ap.param] = convert(values[ap.arg], ap.kind)
        except GraphDescriptionError as e:
            raise GraphDescriptionError(f"launch argument {ap.arg}: {e}") from None
    return out


def selected_nodes(desc: GraphDescription, values: dict[str, str]) -> list[NodeEntry]:
    """The node entries whose condition holds for the (complete) argument `values`, in start order."""
    return [n for n in desc.nodes if holds(n.when, values)]


def refusal(desc: GraphDescription, values: dict[str, str]) -> str | None:
    """Why `desc` cannot run with `values` (a pending node selected, a refused combination, a required argument
    left empty), or None when it can."""
    reasons = [r.reason for r in desc.all_refusals() if holds(r.when, values)]
    reasons += [f"launch argument {a.name}:= is required ({a.description})"
                for a in desc.args if a.required and not values[a.name].strip()]
    return "; ".join(reasons) if reasons else None


def resolve(name: str, given: dict[str, str] | None = None,
            config_dir: str | os.PathLike | None = None) -> list[ResolvedNode]:
    """The nodes graph `name` starts for launch arguments `given` (others at their defaults), with absolute
    parameter files and typed overrides. Raises GraphDescriptionError when the graph refuses these arguments."""
    desc = graph(name)
    values = arg_values(desc, given)
    why = refusal(desc, values)
    if why:
        shown = " ".join(f"{k}:={v}" for k, v in values.items())
        raise GraphDescriptionError(f"graph {name!r} cannot run with {shown}: {why}")
    return [ResolvedNode(n.executable, n.name, tuple(param_file(f, config_dir) for f in n.param_files),
                         node_overrides(n, values)) for n in selected_nodes(desc, values)]


def executables(name: str | None = None, pending: bool | None = None) -> set[str]:
    """Executables named by graph `name` (all graphs when None); pending=True/False: only pending / ready ones."""
    descs = [graph(name)] if name else list(GRAPHS.values())
    return {n.executable for d in descs for n in d.nodes if pending is None or bool(n.pending) == pending}


def condition_expression(when: tuple[tuple[str, str], ...], launch_configuration: type) -> list[Any]:
    """`when` as the token list of a launch PythonExpression (True when all pairs hold), built with the given
    LaunchConfiguration class, for `IfCondition(PythonExpression(tokens))` in a launch file."""
    tokens: list[Any] = []
    for i, (name, expected) in enumerate(when):
        if i:
            tokens.append(" and ")
        if expected in TRUE_WORDS + FALSE_WORDS:
            words = TRUE_WORDS if parse_bool(expected) else FALSE_WORDS
            tokens += ["'", launch_configuration(name), f"'.strip().lower() in {words!r}"]
        else:
            tokens += ["'", launch_configuration(name), f"' == {expected!r}"]
    return tokens or ["True"]
