"""Teleoperated demonstration recording: teleop_node -> interpolator_node -> the xArm6 or the PyBullet cell, and
recorder_node writing one bag per episode.

    ros2 launch irvs_ros teleop_record.launch.py [use_sim:=true] [task:=push_insert] [output:=recordings]

Nodes, parameter files and argument -> parameter overrides come from irvs_ros.nodes.graph_description, which
`irvs bringup teleop_record` reads too. The teleop and recorder executables (and the real-robot driver and camera)
are still pending: a branch that needs one shuts the launch down with the reason.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from irvs_ros.nodes import graph_description as gd

GRAPH = "teleop_record"


def _condition(when):
    """IfCondition for the (argument, value) pairs that must all hold; None = always."""
    if not when:
        return None
    if len(when) == 1 and when[0][1] in gd.TRUE_WORDS + gd.FALSE_WORDS:
        arg, value = when[0]
        return (IfCondition if gd.parse_bool(value) else UnlessCondition)(LaunchConfiguration(arg))
    return IfCondition(PythonExpression(gd.condition_expression(when, LaunchConfiguration)))


def _node(entry):
    overrides = dict(entry.fixed)
    for ap in entry.from_args:
        overrides[ap.param] = ParameterValue(LaunchConfiguration(ap.arg), value_type=ap.kind)
    return Node(package=gd.PACKAGE, executable=entry.executable, name=entry.name, output="screen",
                parameters=[str(gd.param_file(f)) for f in entry.param_files] + [overrides],
                condition=_condition(entry.when))


def generate_launch_description():
    desc = gd.graph(GRAPH)
    actions = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                     **({"choices": list(a.choices)} if a.choices else {})) for a in desc.args]
    for refusal in desc.all_refusals():
        why = f"{GRAPH}.launch.py: {refusal.reason}"
        actions += [LogInfo(msg=why, condition=_condition(refusal.when)),
                    Shutdown(reason=why, condition=_condition(refusal.when))]
    for a in desc.args:
        if a.required:
            empty = IfCondition(PythonExpression(["'", LaunchConfiguration(a.name), "'.strip() == ''"]))
            why = f"{GRAPH}.launch.py: launch argument {a.name}:= is required ({a.description})"
            actions += [LogInfo(msg=why, condition=empty), Shutdown(reason=why, condition=empty)]
    actions += [_node(n) for n in desc.nodes if not n.pending]
    return LaunchDescription(actions)
