"""Thin rclpy shells over the library layers."""
