"""Run several irvs_ros nodes in one process on their own rclpy context and DDS domain (tests, bring-up).

    with InProcessGraph(domain_id=42) as g:
        interp = g.add(InterpolatorNode(**g.node_kwargs(use_sim_time=True)))
        ...

The graph owns one `rclpy.Context` (initialized with `domain_id`) and spins each node in its own executor
thread (`make_executor`); on exit every node's `close()` (when it has one) runs before the node is destroyed
and the context shut down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    SingleThreadedExecutor,
    TimeoutException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

N = TypeVar("N", bound=Node)


def overrides(**params: Any) -> list[Parameter]:
    """rclpy parameter overrides from keyword arguments; dotted names are written with "__" for ".".

    Example: overrides(use_sim_time=True, envelope__setpoint_timeout=0.1).
    """
    return [Parameter(k.replace("__", "."), value=v) for k, v in params.items()]


class PoolExecutor(MultiThreadedExecutor):
    """rclpy's MultiThreadedExecutor, except that each ready callback is handed to the thread pool once.

    This rclpy (9.1) keeps a callback it handed to its pool in its list of tasks in progress until a pool thread
    starts it, and its next wait yields that task again and submits it once more (ros2/rclpy#1452, fixed upstream
    after this release; test_pool_executor shows it). Spun that way, the policy node's decision timer on sim time
    sometimes did not run for over 2 s after the lockstep sim held its clock at the decision's time: the
    lockstep demo timed out 6 times in 300 decisions, and 43 times in one CI run of its 10 episodes; with this
    executor 0 times in 450 decisions on the same machine. Here a task leaves that list when it is handed over
    and comes back only if it ran and is still pending (a coroutine callback awaiting a future). An rclpy with
    the upstream fix (tasks queued as ready, no `_tasks` list) is left to spin as it does.
    """

    def __init__(self, num_threads: int | None = None, *, context: Context | None = None) -> None:
        super().__init__(num_threads, context=context)
        self.patched = isinstance(getattr(self, "_tasks", None), list) and not hasattr(self, "_pending_tasks")

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        if not self.patched:
            super()._spin_once_impl(timeout_sec, wait_condition)
            return
        try:
            task, entity, node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._tasks_lock:
            self._tasks = [t for t in self._tasks if t[0] is not task]
        self._executor.submit(self._run_task, task, entity, node)
        self._futures.append(task)
        for done in [f for f in self._futures if f.done()]:
            self._futures.remove(done)
            done.result()  # a callback's exception surfaces in the spinning thread, as in rclpy

    def _run_task(self, task: Any, entity: Any, node: Node | None) -> None:
        task()
        if not task.done():  # a coroutine awaiting something: back among the tasks the wait yields again
            with self._tasks_lock:
                self._tasks.append((task, entity, node))
            self.wake()


def make_executor(context: Context | None = None, events: bool = False, threads: int = 1) -> Executor:
    """A SingleThreadedExecutor; with threads > 1 a PoolExecutor (as the nodes' console scripts spin);
    with `events` rclpy's experimental EventsExecutor when this rclpy has it.

    The EventsExecutor dispatches from C++ (more messages per second) but, with these wheels, deadlocked in
    tests: creating entities on a node it spins from another thread, and a service call from another thread
    of the same process to a node it spins, both hung. Use it only for nodes whose entities all exist before
    `add` and that are not called in-process.
    """
    if threads > 1:
        if events:
            raise ValueError("make_executor: the EventsExecutor is single-threaded; pass events or threads > 1")
        return PoolExecutor(num_threads=threads, context=context)
    if not events:
        return SingleThreadedExecutor(context=context)
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return SingleThreadedExecutor(context=context)
    return EventsExecutor(context=context)


def _spin_until(executor: Executor, context: Context, stop: threading.Event, period: float = 0.05) -> None:
    """Spin `executor` until `stop` is set (checked at least every `period` s) or `context` shuts down."""
    while not stop.is_set() and context.ok():
        executor.spin_once(timeout_sec=period)


class InProcessGraph:
    """A private rclpy context + DDS domain; each node spins in its own executor thread (see module docstring)."""

    def __init__(self, domain_id: int | None = None) -> None:
        if domain_id is not None and not (0 <= int(domain_id) <= 232):
            raise ValueError(f"ROS domain id must be in [0, 232], got {domain_id}")
        self.domain_id = domain_id
        self.context: Context | None = None
        self.nodes: list[Node] = []
        self._spinners: dict[int, tuple[Executor, threading.Thread, threading.Event]] = {}

    def __enter__(self) -> InProcessGraph:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        return self

    def node_kwargs(self, **params: Any) -> dict[str, Any]:
        """Keyword arguments for a Node constructor on this graph's context, with parameter overrides."""
        return {"context": self.context, "parameter_overrides": overrides(**params)}

    def add(self, node: N, events: bool = False, threads: int = 1) -> N:
        """Spin `node` in its own executor thread (one node's slow callback never delays another node);
        events=True: with the EventsExecutor, threads > 1: a MultiThreadedExecutor (see `make_executor`)."""
        executor = make_executor(self.context, events, threads)
        executor.add_node(node)
        stop = threading.Event()
        thread = threading.Thread(target=_spin_until, args=(executor, self.context, stop),
                                  name=f"spin-{node.get_name()}", daemon=True)
        thread.start()
        self.nodes.append(node)
        self._spinners[id(node)] = (executor, thread, stop)
        return node

    def remove(self, node: Node) -> None:
        """Close, stop spinning and destroy one node (e.g. to restart it with other parameters)."""
        self._close(node)
        self.nodes.remove(node)

    def _close(self, node: Node) -> None:
        close = getattr(node, "close", None)
        if callable(close):
            close()
        executor, thread, stop = self._spinners.pop(id(node))
        # Stop the spin loop first and shut the executor down from here once it has returned: shutting it down
        # under a running spin() races with its wait set (rclpy raised from the spin thread on gc.trigger()).
        stop.set()
        thread.join(timeout=5.0)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()

    def __exit__(self, *exc: object) -> None:
        for node in reversed(list(self.nodes)):
            self._close(node)
        self.nodes.clear()
        if self.context is not None and self.context.ok():
            rclpy.shutdown(context=self.context)


class TopicLog:
    """Thread-safe list of (receive wall time, message) for one subscription, created on `node`."""

    def __init__(self, node: Node, msg_type: type, topic: str, qos: Any) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[float, Any]] = []
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg: Any) -> None:
        import time

        with self._lock:
            self._items.append((time.monotonic(), msg))

    @property
    def messages(self) -> list[Any]:
        with self._lock:
            return [m for _, m in self._items]

    @property
    def items(self) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until at least `count` messages arrived or `timeout` wall seconds passed."""
        import time

        deadline = time.monotonic() + timeout
        while len(self) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class ClockDriver:
    """Publishes /clock from the caller's thread: simulated time advanced in `step` increments at `rate`
    x real time (rate <= 0: as fast as possible). Time starts at `start` seconds."""

    def __init__(self, node: Node, step: float = 0.002, rate: float = 2.0, start: float = 1.0) -> None:
        from rosgraph_msgs.msg import Clock

        from irvs_ros.nodes.common import CLOCK_QOS

        self._msg_type = Clock
        self.pub = node.create_publisher(Clock, "/clock", CLOCK_QOS)
        self.step = float(step)
        self.rate = float(rate)
        self.time = float(start)

    def publish(self) -> None:
        from irvs_ros.nodes.common import stamp_of

        self.pub.publish(self._msg_type(clock=stamp_of(self.time)))

    def advance(self, duration: float, every: float | None = None, action: Any = None) -> None:
        """Advance the clock by `duration` s; call action(sim_time) first and then every `every` s of sim time."""
        import time

        end = self.time + duration
        next_action = self.time
        wall0, sim0 = time.monotonic(), self.time
        while self.time < end - 1e-12:
            if action is not None and self.time >= next_action - 1e-12:
                action(self.time)
                next_action += every if every else float("inf")
            self.time = min(end, self.time + self.step)
            self.publish()
            if self.rate > 0:
                delay = wall0 + (self.time - sim0) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


class ServiceCaller:
    """Calls services from the caller's thread through a private node that only spins while waiting for an answer."""

    def __init__(self, context: Context, name: str = "service_caller") -> None:
        self.node = Node(name, context=context, start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 10.0) -> Any:
        """The response of service `name`; TimeoutError when it is not available or does not answer in time."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} is not available after {timeout} s")
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=timeout)
            if not future.done():
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
