"""Builds the `ros2 launch` description of one irvs_ros graph from nodes.graph_description (launch/*.launch.py).

Each launch file is one line around `generate_launch_description_for(graph_name)`, so the three files cannot
drift apart and every graph detail (arguments, nodes, parameter files, argument -> parameter overrides,
conditions, refusals) lives only in graph_description, which `irvs bringup` reads too.

What the description becomes, with the ROS 2 Jazzy launch API only:
- each launch argument -> DeclareLaunchArgument (default, description, choices);
- each refusal (and each node whose executable is pending) -> LogInfo + Shutdown with the reason, under the
  refusal's condition; each required argument left empty -> LogInfo + Shutdown;
- each ready node -> launch_ros Node (package irvs_ros, its parameter files as absolute paths, then one dict
  of overrides: fixed values and ParameterValue(LaunchConfiguration(arg), value_type=kind); config/fastdds.xml
  as its Fast DDS profile unless the environment names one), under its condition (IfCondition /
  UnlessCondition on a boolean argument, else an IfCondition(PythonExpression)).

`launch` and `launch_ros` exist only on a ROS 2 machine; they are imported when a description is built, so
this module itself imports anywhere (graph_description stays free of them).
"""

from __future__ import annotations

from typing import Any

from irvs_ros.nodes import graph_description as gd


def _condition(when: tuple[tuple[str, str], ...], api: dict[str, Any]) -> Any:
    """The launch condition that holds when every (argument, value) pair of `when` holds; None = always."""
    if not when:
        return None
    if len(when) == 1 and when[0][1] in gd.TRUE_WORDS + gd.FALSE_WORDS:
        arg, value = when[0]
        cls = api["IfCondition"] if gd.parse_bool(value) else api["UnlessCondition"]
        return cls(api["LaunchConfiguration"](arg))
    tokens = gd.condition_expression(when, api["LaunchConfiguration"])
    return api["IfCondition"](api["PythonExpression"](tokens))


def _node(entry: gd.NodeEntry, api: dict[str, Any]) -> Any:
    overrides: dict[str, Any] = dict(entry.fixed)
    for ap in entry.from_args:
        overrides[ap.param] = api["ParameterValue"](api["LaunchConfiguration"](ap.arg), value_type=ap.kind)
    return api["Node"](package=gd.PACKAGE, executable=entry.executable, name=entry.name, output="screen",
                       parameters=[str(gd.param_file(f)) for f in entry.param_files] + [overrides],
                       additional_env=gd.dds_profile_env(), condition=_condition(entry.when, api))


def _launch_api() -> dict[str, Any]:
    """The launch / launch_ros classes this module uses, by name (imported now: only a ROS 2 machine has them)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, LogInfo, Shutdown
    from launch.conditions import IfCondition, UnlessCondition
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    return {"LaunchDescription": LaunchDescription, "DeclareLaunchArgument": DeclareLaunchArgument,
            "LogInfo": LogInfo, "Shutdown": Shutdown, "IfCondition": IfCondition, "UnlessCondition": UnlessCondition,
            "LaunchConfiguration": LaunchConfiguration, "PythonExpression": PythonExpression, "Node": Node,
            "ParameterValue": ParameterValue}


def generate_launch_description_for(graph_name: str) -> Any:
    """The launch.LaunchDescription of graph `graph_name` (a key of graph_description.GRAPHS; see the module
    docstring). Raises graph_description.GraphDescriptionError for an unknown graph."""
    desc = gd.graph(graph_name)
    api = _launch_api()
    source = f"{graph_name}.launch.py"
    actions: list[Any] = [
        api["DeclareLaunchArgument"](a.name, default_value=a.default, description=a.description,
                                     **({"choices": list(a.choices)} if a.choices else {}))
        for a in desc.args]
    for refusal in desc.all_refusals():
        why = f"{source}: {refusal.reason}"
        actions += [api["LogInfo"](msg=why, condition=_condition(refusal.when, api)),
                    api["Shutdown"](reason=why, condition=_condition(refusal.when, api))]
    for a in desc.args:
        if a.required:
            empty = api["IfCondition"](api["PythonExpression"](["'", api["LaunchConfiguration"](a.name),
                                                                "'.strip() == ''"]))
            why = f"{source}: launch argument {a.name}:= is required ({a.description})"
            actions += [api["LogInfo"](msg=why, condition=empty), api["Shutdown"](reason=why, condition=empty)]
    actions += [_node(n, api) for n in desc.nodes if not n.pending]
    return api["LaunchDescription"](actions)
