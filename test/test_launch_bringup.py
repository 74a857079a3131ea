"""Launch files and `irvs bringup` read one graph description and agree.

Each launch/*.launch.py is one call of nodes.launch_builder.generate_launch_description_for(<its graph>) (checked
with `ast`); the builder imports only the Jazzy launch API and graph_description, which imports no launch.
Without ROS `launch` installed: each launch file is imported with small stand-in `launch` / `launch_ros` modules
that record what it builds; every executable it names is an installed console script of irvs_ros (or a pending
one, which the launch refuses), every parameter file exists, and for every combination of argument choices the
nodes it would start, their parameter files and their overrides equal what graph_description.resolve (the
bring-up) gives. Then `irvs bringup push_insert --sim --model tiny.onnx` runs as a
subprocess and a probe node sees real DDS traffic on /joint_states, /irvs/joint_command and /irvs/setpoint.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from irvs_ros.nodes import graph_description as gd
from irvs_ros.nodes import launch_builder

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / "launch"
BUILDER = Path(launch_builder.__file__)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN = 220 + os.getpid() % 13  # apart from the node tests' domains (10-99, 100-219)
LAUNCH_API = {  # module -> names a Jazzy launch file may import from it (all exist in ROS 2 Jazzy)
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "LogInfo", "Shutdown"},
    "launch.conditions": {"IfCondition", "UnlessCondition"},
    "launch.substitutions": {"LaunchConfiguration", "PythonExpression"},
    "launch_ros.actions": {"Node"},
    "launch_ros.parameter_descriptions": {"ParameterValue"},
}


# ------------------------------------------------------------------------------------ stand-in launch modules


class _Recorded:
    """Keeps its constructor arguments (what the launch file asked for)."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(_Recorded):
    def value(self, values: dict[str, str]) -> str:
        return values[self.args[0]]


def _text(sub, values: dict[str, str]) -> str:
    if isinstance(sub, list):
        return "".join(_text(s, values) for s in sub)
    return sub.value(values) if isinstance(sub, LaunchConfiguration) else str(sub)


class PythonExpression(_Recorded):
    def value(self, values: dict[str, str]) -> str:
        return str(eval(_text(self.args[0], values)))  # as launch's PythonExpression does


class IfCondition(_Recorded):
    def holds(self, values: dict[str, str]) -> bool:
        sub = self.args[0]
        return gd.parse_bool(sub.value(values))  # launch accepts true/false/1/0 (any case)


class UnlessCondition(IfCondition):
    def holds(self, values: dict[str, str]) -> bool:
        return not super().holds(values)


class ParameterValue(_Recorded):
    def value(self, values: dict[str, str]):
        return gd.convert(self.args[0].value(values), self.kwargs["value_type"])


def _fake_modules() -> dict[str, types.ModuleType]:
    classes = {"LaunchDescription": _Recorded, "DeclareLaunchArgument": _Recorded, "LogInfo": _Recorded,
               "Shutdown": _Recorded, "IfCondition": IfCondition, "UnlessCondition": UnlessCondition,
               "LaunchConfiguration": LaunchConfiguration, "PythonExpression": PythonExpression,
               "Node": _Recorded, "ParameterValue": ParameterValue}
    mods = {}
    for name in ("launch", "launch_ros", *LAUNCH_API):
        mod = types.ModuleType(name)
        for cls_name in LAUNCH_API.get(name, ()):
            setattr(mod, cls_name, type(cls_name, (classes[cls_name],), {}))
        mods[name] = mod
    return mods


def _load(path: Path, monkeypatch) -> dict[str, list[_Recorded]]:
    """Import the launch file with the stand-ins; its actions grouped by kind."""
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(f"launch_file_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    assert type(ld).__name__ == "LaunchDescription"
    out: dict[str, list[_Recorded]] = {}
    for action in ld.args[0]:
        out.setdefault(type(action).__name__, []).append(action)
    return out


def _active(action: _Recorded, values: dict[str, str]) -> bool:
    cond = action.kwargs.get("condition")
    return cond is None or cond.holds(values)


def _combinations(desc: gd.GraphDescription) -> list[dict[str, str]]:
    """Every combination of the choices of the arguments that have them, others at a sample value."""
    samples = {a.name: list(a.choices) or ([a.default, "models/x.onnx"] if a.required else [a.default])
               for a in desc.args}
    names = list(samples)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*samples.values())]


LAUNCH_FILES = sorted(LAUNCH_DIR.glob("*.launch.py"))


def test_every_graph_has_a_launch_file():
    assert {p.name.removesuffix(".launch.py") for p in LAUNCH_FILES} == set(gd.GRAPHS)


def _imports(path: Path) -> dict[str, set[str]]:
    """module -> names of every `from module import names` anywhere in the file (functions included)."""
    imported: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            imported.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                imported.setdefault(a.name, set())
    return imported


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_the_builder_called_with_its_graph_name(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert ast.get_docstring(tree) and "ros2 launch irvs_ros " + path.name in ast.get_docstring(tree)
    assert _imports(path) == {"irvs_ros.nodes.launch_builder": {"generate_launch_description_for"}}
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in functions] == ["generate_launch_description"]
    (body,) = functions[0].body
    assert isinstance(body, ast.Return) and isinstance(body.value, ast.Call)
    assert ast.unparse(body.value) == f"generate_launch_description_for({path.name.removesuffix('.launch.py')!r})"


def test_builder_uses_only_the_jazzy_launch_api_and_the_description_none():
    imported = _imports(BUILDER)
    assert imported.pop("irvs_ros.nodes", None) == {"graph_description"}, "the node list must come from the description"
    imported.pop("__future__", None)
    imported.pop("typing", None)
    assert set(imported) == set(LAUNCH_API), f"launch_builder imports {sorted(imported)}"
    for module, names in imported.items():
        assert names <= LAUNCH_API[module], f"launch_builder: {module} {names} is not launch API used here"
    # graph_description is read where there is no ROS launch (bring-up, tests): it must not import it.
    described = _imports(Path(gd.__file__))
    assert not {m for m in described if m.split(".")[0] in ("launch", "launch_ros", "rclpy")}, sorted(described)


def test_builder_imports_without_ros_launch_and_rejects_unknown_graphs(monkeypatch):
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    with pytest.raises(gd.GraphDescriptionError, match="unknown graph 'dance'"):
        launch_builder.generate_launch_description_for("dance")
    monkeypatch.setitem(sys.modules, "launch_ros.actions", None)  # as on a machine without launch_ros
    with pytest.raises(ImportError, match="launch_ros"):
        launch_builder.generate_launch_description_for("sim")


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_agrees_with_the_description(path, monkeypatch):
    name = path.name.removesuffix(".launch.py")
    desc = gd.graph(name)
    for var in gd.DDS_PROFILE_VARS:
        monkeypatch.delenv(var, raising=False)
    actions = _load(path, monkeypatch)
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions["DeclareLaunchArgument"]}
    assert declared == {a.name: a.default for a in desc.args}

    installed = {ep.name for ep in importlib.metadata.distribution("irvs_ros").entry_points
                 if ep.group == "console_scripts"}
    nodes = actions["Node"]
    for node in nodes:
        assert node.kwargs["package"] == "irvs_ros"
        assert node.kwargs["executable"] in installed, f"{node.kwargs['executable']} is no console script"
        for f in node.kwargs["parameters"][:-1]:
            assert Path(f).is_file(), f
        # Every node gets the project's Fast DDS profile (camera frames fit its transports).
        profile = Path(node.kwargs["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"])
        assert profile.name == "fastdds.xml" and profile.is_file()
    pending = gd.executables(name, pending=True)
    assert not pending & installed, f"{pending & installed} are installed now: drop their pending marker"
    assert {n.kwargs["executable"] for n in nodes} | pending == gd.executables(name)

    refusals = actions.get("Shutdown", [])
    for values in _combinations(desc):
        refused = any(_active(s, values) for s in refusals)
        assert refused == (gd.refusal(desc, values) is not None), values
        if refused:
            with pytest.raises(gd.GraphDescriptionError, match="cannot run"):
                gd.resolve(name, values)
            continue
        launched = [n for n in nodes if _active(n, values)]
        resolved = gd.resolve(name, values)
        assert [n.kwargs["executable"] for n in launched] == [r.executable for r in resolved], values
        for n, r in zip(launched, resolved, strict=True):
            assert n.kwargs["name"] == r.name
            files, overrides = n.kwargs["parameters"][:-1], n.kwargs["parameters"][-1]
            assert [Path(f) for f in files] == list(r.param_files)
            got = {k: (v.value(values) if isinstance(v, ParameterValue) else v) for k, v in overrides.items()}
            assert got == r.overrides, values


def test_description_maps_arguments_to_typed_parameters():
    nodes = {n.name: n for n in gd.resolve("push_insert", {"use_sim": "True", "model": "p.onnx", "eta_inv": "2"})}
    assert list(nodes) == ["sim_node", "interpolator_node", "policy_node"]
    assert nodes["policy_node"].overrides == {"use_sim_time": True, "model": "p.onnx", "eta_inv": 2.0,
                                              "argmin_samples": 0}  # the default: the file's
    given = {"use_sim": "true", "model": "p.onnx", "argmin_samples": "4096"}
    assert {n.name: n for n in gd.resolve("push_insert", given)}["policy_node"].overrides["argmin_samples"] == 4096
    with pytest.raises(gd.GraphDescriptionError):
        gd.resolve("push_insert", {**given, "argmin_samples": "many"})
    assert nodes["sim_node"].overrides == {"task": "push_insert"}
    assert nodes["interpolator_node"].param_files == (ROOT / "config" / "interpolator_node.yaml",)
    with pytest.raises(gd.GraphDescriptionError, match="expected a number"):
        gd.resolve("push_insert", {"use_sim": "true", "model": "p.onnx", "eta_inv": "high"})
    with pytest.raises(gd.GraphDescriptionError, match="not one of"):
        gd.resolve("push_insert", {"use_sim": "maybe", "model": "p.onnx"})
    with pytest.raises(gd.GraphDescriptionError, match="no launch argument 'robot'"):
        gd.resolve("push_insert", {"robot": "1.2.3.4"})
    with pytest.raises(gd.GraphDescriptionError, match="unknown graph"):
        gd.graph("dance")


# ------------------------------------------------------------------------------------------------ bring-up

BRINGUP = ("import argparse, sys\nfrom irvs_ros.commands import bringup as b\n"
           "p = argparse.ArgumentParser(prog='irvs bringup'); b.add_arguments(p)\n"
           "sys.exit(b.run(p.parse_args(sys.argv[1:])))\n")


def _bringup_cmd(*argv: str) -> list[str]:
    from irvs_ros import cli

    if "bringup" in cli.COMMANDS:
        return [sys.executable, "-m", "irvs_ros.cli", "bringup", *argv]
    return [sys.executable, "-c", BRINGUP, *argv]  # until the subcommand is registered in cli.COMMANDS


def _run_bringup(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(_bringup_cmd(*argv), capture_output=True, text=True, timeout=timeout)


def test_bringup_refuses_pending_branches_and_bad_arguments():
    # The real-robot branch is runnable now (xarm_driver_node and camera_node are installed): a dry run lists them.
    real = _run_bringup("push_insert", "--model", "p.onnx", "--dry-run")
    assert real.returncode == 0, real.stderr
    assert "xarm_driver_node" in real.stdout and "camera_node" in real.stdout and "sim_node" not in real.stdout
    # teleop_record is runnable now too (teleop_node is installed): a dry run lists its nodes.
    teleop = _run_bringup("teleop_record", "--sim", "--dry-run")
    assert teleop.returncode == 0, teleop.stderr
    assert [line.split()[0].rsplit("/", 1)[-1] for line in teleop.stdout.strip().splitlines()] == [
        "sim_node", "interpolator_node", "teleop_node", "recorder_node"]
    no_model = _run_bringup("push_insert", "--sim")
    assert no_model.returncode == 2 and "model:= is required" in no_model.stderr
    wrong = _run_bringup("sim", "--model", "p.onnx")
    assert wrong.returncode == 2 and "no launch argument 'model'" in wrong.stderr


def test_bringup_dry_run_prints_the_node_commands():
    out = _run_bringup("push_insert", "--sim", "--model", "/tmp/p 1.onnx", "--eta-inv", "0.5", "--argmin-samples",
                       "4096", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines] == ["sim_node", "interpolator_node", "policy_node"]
    policy = lines[2]
    assert f"--params-file {ROOT / 'config' / 'policy_node.yaml'}" in policy
    assert '-p model:="/tmp/p 1.onnx"' in policy and "-p eta_inv:=0.5" in policy and "use_sim_time:=true" in policy
    assert "-p argmin_samples:=4096" in policy
    assert '-p task:="push_insert"' in lines[0]
    sim = _run_bringup("sim", "--arg", "task:=push_insert", "--real-time-factor", "0", "--dry-run")
    assert sim.returncode == 0, sim.stderr
    assert '-p task:="push_insert" -p real_time_factor:=0.0' in sim.stdout and "policy_node" not in sim.stdout
    bad = _run_bringup("sim", "--arg", "real_time_factor:=fast", "--dry-run")
    assert bad.returncode == 2 and "real_time_factor: expected a number, got 'fast'" in bad.stderr


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> str:
    """An untrained IRvS image policy (DFO argmin, deltas within +-0.02 m) exported to ONNX."""
    import torch

    from irvs_ros.learn.algorithms import make_algorithm
    from irvs_ros.learn.export import export_policy
    from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec

    torch.manual_seed(0)
    torch.set_num_threads(1)
    stats = NormStats((), (), (-0.02, -0.02), (0.02, 0.02), 0.0, 1.0)
    spec = PolicySpec(ObsSpec(0, (18, 24, 3), ()), 2, stats, (-0.022, -0.022), (0.022, 0.022), 5.0)
    algo = make_algorithm("irvs", spec, {"width": 16, "depth": 2, "method": "dfo", "num_counter_examples": 8,
                                         "dfo_samples": 64})
    return str(export_policy(algo, tmp_path_factory.mktemp("policy") / "tiny_irvs.onnx"))


def _observe(argv: list[str], needed: dict[str, int], sigint: bool) -> tuple[dict[str, int], dict, str, int, bool]:
    """Run the bring-up with `argv` on DOMAIN while a probe node counts messages per topic until each topic of
    `needed` has its count (or 45 s); then SIGINT it (`sigint`) or let it end by itself. Returns the counts, the
    logs, its output, its status and whether it was still running when the counts were taken."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from irvs_ros.nodes.graph import InProcessGraph, TopicLog

    types_ = {"/joint_states": JointState, "/irvs/joint_command": JointState, "/irvs/setpoint": PoseStamped}
    qos = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
    with InProcessGraph(domain_id=DOMAIN) as g:
        probe = g.add(Node("bringup_probe", context=g.context))
        logs = {t: TopicLog(probe, types_[t], t, qos) for t in needed}
        proc = subprocess.Popen(_bringup_cmd(*argv, "--domain-id", str(DOMAIN)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and proc.poll() is None:
                if all(len(logs[t]) >= n for t, n in needed.items()):
                    break
                time.sleep(0.1)
            counts = {t: len(log) for t, log in logs.items()}
            alive = proc.poll() is None
            if sigint:
                proc.send_signal(signal.SIGINT)  # as Ctrl-C: the bring-up stops its nodes and exits
            output, _ = proc.communicate(timeout=45)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return counts, logs, output, proc.returncode, alive


def test_bringup_sim_runs_for_its_duration_over_dds():
    t0 = time.monotonic()
    counts, logs, output, status, alive = _observe(["sim", "--duration", "10"],
                                                   {"/joint_states": 50, "/irvs/joint_command": 50}, sigint=False)
    assert alive, f"bring-up ended before the traffic came:\n{output}"
    assert counts["/joint_states"] >= 50 and counts["/irvs/joint_command"] >= 50, (counts, output)
    js, cmd = logs["/joint_states"].messages[-1], logs["/irvs/joint_command"].messages[-1]
    assert len(js.position) == 6 and list(cmd.name) == list(js.name)
    assert time.monotonic() - t0 >= 10, "--duration 10 ended early"
    for name in ("sim_node", "interpolator_node"):
        assert f"started {name} (pid" in output and f"stopped {name} (status 0)" in output, output
    assert "policy_node" not in output and status == 0, output


def test_bringup_push_insert_sim_runs_the_policy_graph_until_ctrl_c(tiny_policy):
    argv = ["push_insert", "--sim", "--model", tiny_policy, "--eta-inv", "1.0"]
    counts, logs, output, status, alive = _observe(
        argv, {"/joint_states": 50, "/irvs/joint_command": 50, "/irvs/setpoint": 3}, sigint=True)
    assert alive, f"bring-up ended early:\n{output}"
    assert counts["/joint_states"] >= 50 and counts["/irvs/joint_command"] >= 50, (counts, output)
    assert counts["/irvs/setpoint"] >= 3, (counts, output)
    for name in ("sim_node", "interpolator_node", "policy_node"):
        assert f"started {name} (pid" in output and f"stopped {name} (status 0)" in output, output
    assert "SIGINT: stopping the graph" in output and status == 0, output


def test_bringup_stops_the_graph_when_a_node_fails(tmp_path):
    missing = tmp_path / "missing.onnx"
    out = _run_bringup("push_insert", "--sim", "--model", str(missing), "--duration", "40", "--domain-id",
                       str(DOMAIN), timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "policy_node exited on its own with status 2" in out.stderr
    assert "stopped sim_node" in out.stdout and "stopped interpolator_node" in out.stdout
