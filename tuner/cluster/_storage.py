"""Whether a folder is one storage on every node of the Ray cluster this process has joined.

verl's trainer writes a trial's metrics file and its checkpoints from its Ray actors, on whatever node
Ray puts them, at the trial folder's absolute path, while the trial reads the metrics on its own node.
On a cluster of more than one node that folder must be shared storage mounted at the same path on
every node (docs/cluster.md, "Shared storage"). `unshared_nodes(folder)` writes a token file there and
has one task on each alive node read it back: the nodes that read another file, or none, do not share
it. A node that does not answer within the timeout is not judged.
"""

from __future__ import annotations

import secrets
from pathlib import Path

__all__ = ["unshared_nodes"]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def unshared_nodes(folder: Path, timeout: float = 60.0) -> list[str]:
    """The alive nodes (as `IP (node id)`) that do not see what this process writes in `folder`,
    which must exist here. Ray is up (joined)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(8)
    probe = folder / f".shared-check-{token}"
    probe.write_text(token)
    try:
        read = ray.remote(num_cpus=0, max_retries=0)(_read)
        asks = {f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})": read.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(probe))
            for n in ray.nodes() if n.get("Alive")}
        ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=timeout)
        answered = set(ready)
        return [node for node, ask in asks.items() if ask in answered and ray.get(ask) != token]
    finally:
        probe.unlink(missing_ok=True)
