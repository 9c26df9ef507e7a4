"""Preemption requests reaching a training rank, by mark file or by signal, kept until served.

Two ways a stop is asked for under SLURM:
- the batch shell's trap (USR1 from `--signal=B:USR1@120` or an operator, TERM to the shell only)
  creates the mark file `LPASRN_PREEMPT_FILE`;
- the scheduler itself (PreemptMode=REQUEUE, `scontrol requeue`, the time limit) sends SIGTERM to
  every process of the job, the ranks included, and SIGKILL after KillWait seconds.

Without a handler a rank dies of SIGTERM (or of SIGUSR1) mid-step and the work since the last
checkpoint is lost. Here the handler only records the request: Python runs it between bytecodes, so
a signal that arrives during validation, hard-example scoring or a checkpoint save never interrupts
that work, and the record stays until the runner's next safe point (its next poll) serves it.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import socket
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[str] = []  # names of the stop signals received and not yet served, in order
_atexit_registered = False


def _record(signum: int, _frame) -> None:
    # Only a list append: safe at any point of the interrupted code (no I/O, no locks).
    _received.append(signal.Signals(signum).name)


def install_signal_handlers() -> dict:
    """Turn SIGTERM and SIGUSR1 into a preemption request served at the next safe point; returns the
    previous handlers for restore_signal_handlers (an in-process caller, e.g. a test, gets its own back).

    # NOTE: call on every rank, early (before the first collective): a rank without the handler dies
    # of the signal and its peers then hang in the next collective until the launcher kills them.
    DataLoader workers need worker_ignores_stop_signals as well.
    """
    global _atexit_registered
    if not _atexit_registered:
        # Registered after multiprocessing's own exit hook, so it runs first (atexit is LIFO).
        atexit.register(kill_stray_workers)
        _atexit_registered = True
    return {sig: signal.signal(sig, _record) for sig in STOP_SIGNALS}


def kill_stray_workers() -> None:
    """At exit, SIGKILL daemonic children (DataLoader workers) still alive. multiprocessing would
    end them with SIGTERM and wait, which workers that ignore it (worker_ignores_stop_signals) never
    obey: a rank leaving by an exception with an unfinished loader would hang at exit (measured)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


def restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def worker_ignores_stop_signals(_worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader of a training rank. The scheduler's SIGTERM reaches every
    process of the job, DataLoader workers included, and PyTorch's worker handler dies of it; the
    rank then fails with "DataLoader worker ... exited unexpectedly" instead of saving (measured).
    The rank serves the request and shuts its workers down itself (end-of-data sentinel; a worker
    also leaves when its parent is gone)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def signals_received() -> list[str]:
    return list(_received)


def preemption_requested(mark: Path | None) -> bool:
    """This rank's view: a stop signal was received, or the mark file exists. The runner combines
    the views of all ranks (accelerate's set_trigger/check_trigger, an all-reduce)."""
    return bool(_received) or (mark is not None and mark.exists())


def clear_preemption_request(mark: Path | None, remove_mark: bool) -> None:
    """The request is served (a checkpoint is saved): a resumed run must not stop again for it."""
    _received.clear()
    if remove_mark and mark is not None:
        mark.unlink(missing_ok=True)


def describe_rank(accelerator) -> str:
    """One line per rank for job logs: where it runs (SLURM node, node rank), its place in the
    process group and the CPUs it may use, so a multi-node layout can be checked from the log."""
    env = os.environ
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    return (f"lpasrn-rank: rank {accelerator.process_index}/{accelerator.num_processes} "
            f"node {node} machine_rank {env.get('GROUP_RANK', env.get('SLURM_NODEID', '0'))} "
            f"local_rank {accelerator.local_process_index} {accelerator.distributed_type} "
            f"cpus {len(os.sched_getaffinity(0))} slurm_cpus_per_task {env.get('SLURM_CPUS_PER_TASK', '-')}")
