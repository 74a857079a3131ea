"""irvs_ros: implicit (energy-based) visuomotor policies for ROS 2, trained offline, run in real time."""

__version__ = "0.1.0"
