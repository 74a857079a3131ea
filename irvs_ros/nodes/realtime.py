"""Real-time scheduling for a node's control thread on Linux (standard library only; no ROS).

A Python control loop shares the GIL with its process's other threads (ROS executor, timers). On a loaded machine
its two delays are the kernel scheduling it late (another process runs on the core) and a GIL holder of its own
process being preempted by another process. SCHED_FIFO for the loop thread removes the first; a low SCHED_FIFO
priority for the rest of the process keeps a GIL holder from being preempted by ordinary processes, so it hands
the GIL over within the interpreter's switch interval. The kernel's real-time throttling
(/proc/sys/kernel/sched_rt_runtime_us, 95% by default) keeps a runaway real-time thread from taking a whole core.

Both need permission (root, CAP_SYS_NICE or an RLIMIT_RTPRIO >= the priority); without it they raise
RealtimeError with the reason, and the caller runs on as an ordinary thread.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path


class RealtimeError(OSError):
    """Real-time scheduling is not available (platform, permission or priority range)."""


def fifo_priority_range() -> tuple[int, int]:
    """(min, max) SCHED_FIFO priority on this system."""
    if not hasattr(os, "SCHED_FIFO"):
        raise RealtimeError("SCHED_FIFO is not available on this platform")
    return os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)


def set_fifo(priority: int) -> str:
    """Run the calling thread under SCHED_FIFO at `priority` (Linux: pid 0 = the calling thread). Returns a
    description; RealtimeError (with the reason) when not permitted or out of range."""
    low, high = fifo_priority_range()
    if not low <= priority <= high:
        raise RealtimeError(f"SCHED_FIFO priority must be in [{low}, {high}], got {priority}")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as e:
        raise RealtimeError(f"SCHED_FIFO {priority} not permitted ({e.strerror}; needs root, CAP_SYS_NICE or "
                            f"`ulimit -r` >= {priority})") from e
    except OSError as e:
        raise RealtimeError(f"SCHED_FIFO {priority} failed: {e.strerror or e}") from e
    return f"SCHED_FIFO {priority}"


def set_process_fifo(priority: int) -> str:
    """Run every thread of this process that exists now under SCHED_FIFO at `priority` (threads started later by
    one of them inherit it): the ROS middleware's receive threads included, so message delivery to the executor is
    not held up by ordinary processes either. Linux only. Returns a description; RealtimeError as `set_fifo`."""
    set_fifo(priority)  # the calling thread first: checks range and permission
    tasks = Path("/proc/self/task")
    done = 1
    for entry in tasks.iterdir():
        tid = int(entry.name)
        if tid == threading.get_native_id():
            continue
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            done += 1
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as e:
            raise RealtimeError(f"SCHED_FIFO {priority} for thread {tid} failed: {e.strerror or e}") from e
    return f"SCHED_FIFO {priority} ({done} threads)"


def is_fifo() -> bool:
    """Whether the calling thread runs under SCHED_FIFO."""
    return hasattr(os, "SCHED_FIFO") and os.sched_getscheduler(0) == os.SCHED_FIFO


def freeze_gc() -> int:
    """Move every object alive now to the collector's permanent generation, so that later full collections (which
    hold the GIL while they run) scan only objects created after start-up. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
