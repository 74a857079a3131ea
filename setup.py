"""ament_python package set-up: works with `colcon build` on ROS 2 Jazzy and with plain `pip install -e .`."""

from glob import glob

from setuptools import find_packages, setup

package_name = "irvs_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    package_data={package_name: ["nodes/static/*", "nodes/teleop_page/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/models", glob("models/*.onnx") + glob("models/*.md")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="irvs_ros developers",
    maintainer_email="irvs-ros@example.com",
    description="Implicit (energy-based) visuomotor policies trained offline and run in real time on ROS 2.",
    license="Apache-2.0",
    tests_require=["pytest"],
    python_requires=">=3.11",
    entry_points={
        "console_scripts": [
            "irvs = irvs_ros.cli:main",
            "sim_node = irvs_ros.nodes.sim_node:main",
            "interpolator_node = irvs_ros.nodes.interpolator_node:main",
            "policy_node = irvs_ros.nodes.policy_node:main",
            "recorder_node = irvs_ros.nodes.recorder_node:main",
            "camera_node = irvs_ros.nodes.camera_node:main",
            "xarm_driver_node = irvs_ros.nodes.xarm_driver_node:main",
            "teleop_node = irvs_ros.nodes.teleop_node:main",
        ],
    },
)
