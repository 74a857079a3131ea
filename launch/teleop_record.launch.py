"""Teleoperated demonstration recording: teleop_node -> interpolator_node -> the xArm6 or the PyBullet cell, and
recorder_node writing one bag per episode.

    ros2 launch irvs_ros teleop_record.launch.py [use_sim:=true] [task:=push_insert] [output:=recordings]

The graph is irvs_ros.nodes.graph_description's "teleop_record", which `irvs bringup teleop_record` reads too.
"""

from irvs_ros.nodes.launch_builder import generate_launch_description_for


def generate_launch_description():
    return generate_launch_description_for("teleop_record")
