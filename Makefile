# Two commands on a fresh Linux machine with Python 3.11+:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# With a ROS 2 distro sourced, use its rclpy (system site packages); otherwise the PyPI wheels.
ROS_WHEELS := 'ros-rclpy[fastrtps]' ros-sensor-msgs ros-geometry-msgs ros-std-msgs ros-std-srvs ros-diagnostic-msgs ros-rosgraph-msgs

.PHONY: setup test lint demo bench clean

$(STAMP): requirements.txt setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	@# pyrealsense2's wheel needs libusb-1.0 from the system (Debian: libusb-1.0-0).
	@ldconfig -p | grep -q libusb-1.0 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0; } || \
	  { echo "install libusb-1.0-0 (sudo apt-get install libusb-1.0-0)"; exit 1; }
	@# The teleop page test drives the system Chromium through Playwright (no browser download).
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  { echo "install chromium (sudo apt-get install chromium)"; exit 1; }
	$(PYTHON) -m venv $(if $(ROS_DISTRO),--system-site-packages) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(if $(ROS_DISTRO),,$(PY) -m pip install -q $(ROS_WHEELS))
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q

# The push_insert graph in simulation on models/push_insert.onnx; e.g. make demo DEMO_ARGS="--episodes 10".
demo: $(STAMP)
	$(VENV)/bin/irvs demo $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV)/bin/irvs bench particle

clean:
	rm -rf $(VENV) build install log *.egg-info
