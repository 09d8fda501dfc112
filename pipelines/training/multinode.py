"""Training on several nodes (``train.num_nodes`` > 1): Lightning's DDP across hosts.

Each node runs the same ``viops train`` with ``MASTER_ADDR`` and ``MASTER_PORT`` (node 0's address and a free port)
and its ``NODE_RANK``, as torchrun, a Kubeflow PyTorchJob or one Kubernetes pod per node set them; Lightning forms
the process group from those variables. Node 0 creates the MLflow run; the other nodes join it: node 0 publishes
the run id in a ``torch.distributed.TCPStore`` on ``MASTER_PORT + 1`` (torch's own rendezvous primitive, beside
the process group's), which the others read before they train.
"""

from __future__ import annotations

import os
from datetime import timedelta

__all__ = ["node_rank", "publish_run_id", "await_run_id", "RUN_ID_KEY"]

RUN_ID_KEY = "viops/run_id"


def node_rank() -> int:
    """This node's rank: ``NODE_RANK`` (Lightning, PyTorchJob) or torchrun's ``GROUP_RANK``; 0 when unset."""
    return int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or 0)


def _store(is_master: bool, timeout_s: float):
    from torch.distributed import TCPStore

    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1
    except KeyError as exc:
        raise RuntimeError(f"train.num_nodes > 1 needs {exc.args[0]} on every node (node 0's address and a free "
                           "port), as torchrun or a PyTorchJob set them") from None
    return TCPStore(host, port, is_master=is_master, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def publish_run_id(run_id: str, timeout_s: float = 600.0):
    """On node 0: serve the run id to the other nodes; keep the returned store alive until they have joined."""
    store = _store(True, timeout_s)
    store.set(RUN_ID_KEY, run_id)
    return store


def await_run_id(timeout_s: float = 600.0) -> str:
    """On the other nodes: the run id node 0 created (waits for it to publish)."""
    return _store(False, timeout_s).get(RUN_ID_KEY).decode()
