"""How a multi-process command ends: the process group is destroyed explicitly, on every rank, while
the interpreter is still fully alive.

Why: a gloo process group left for interpreter finalization still has worker threads holding work
objects (and their tensors); tearing those down during finalization aborts the process with SIGABRT
("terminate called without an active exception") AFTER it printed correct results. Measured before
this module: 2 of 12 two-process `lpasrn evaluate` runs, and the exit code is what a job script or
SLURM sees. Every entry point (`launch/run.py`, the `lpasrn` console script) ends through
`end_process_group`, so no command can forget it.
"""
from __future__ import annotations

import torch.distributed as dist


def end_process_group(success: bool) -> None:
    """Destroy the default process group if one is up.

    On success every rank first waits for the others, so no rank closes its connections while a
    peer still has a collective in flight with it. After a failure there is no barrier: the peers
    may be dead or stuck, and the launcher ends them when this rank exits non-zero.

    # NOTE: call on all ranks at the end of the command (after trackers are finished).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if success:
        dist.barrier()
    dist.destroy_process_group()
