"""The simulated xArm6 cell (sim_node, publishing /clock) and the 100 Hz interpolator_node on sim time, no policy:
a robot to drive with /irvs/setpoint.

    ros2 launch irvs_ros sim.launch.py [task:=push_insert] [real_time_factor:=1.0]

The graph is irvs_ros.nodes.graph_description's "sim", which `irvs bringup sim` reads too.
"""

from irvs_ros.nodes.launch_builder import generate_launch_description_for


def generate_launch_description():
    return generate_launch_description_for("sim")
