"""The push-insert skill: policy_node (5 Hz) -> interpolator_node (100 Hz) -> the xArm6, or the PyBullet cell.

    ros2 launch irvs_ros push_insert.launch.py use_sim:=true model:=models/push_insert.onnx [eta_inv:=1.0] \
        [argmin_samples:=4096]
    ros2 launch irvs_ros push_insert.launch.py model:=... robot_ip:=192.168.1.185 camera:=realsense

The graph (arguments, nodes, parameter files, overrides, refusals) is irvs_ros.nodes.graph_description's
"push_insert", which `irvs bringup push_insert` (the same graph without `ros2 launch`) reads too.
"""

from irvs_ros.nodes.launch_builder import generate_launch_description_for


def generate_launch_description():
    return generate_launch_description_for("push_insert")
