"""GPU admission on a cluster: a verl or OpenRLHF trial starts its trainer only once the trainer's
placement groups can be placed.

On a cluster such a trial holds no GPU in Ray Tune: its trainer joins the cluster and reserves its
GPUs itself, and verl fails at once when too few are free (`_check_resource_available`), or waits in
`pg.ready()` with no timeout on fragmented nodes. So, before the launch, the trial:

1. refuses a shape the cluster's nodes can never hold (`NotPlaceable`, not retried);
2. takes the cluster's admission lease (a key in Ray's KV store): one trial, of any sweep, is admitted
   at a time, first come first served, so that two trials never count the same free GPUs;
3. creates placement groups of the trainer's shape (`Placement`: verl's STRICT_PACK groups, one per
   node) and waits for Ray to place them, saying in the trial's log, at once and then every minute,
   what it waits for and what is free. The wait has no deadline: it ends when the groups are placed,
   when the sweep or Ray Tune stops the trial, or when the nodes can no longer hold the shape;
4. removes its groups right before the trainer starts, and keeps the lease until the trainer's own
   placement groups are placed (or it reports, or exits, or trial.report_timeout passes): between the removal
   and the trainer's reservation, seconds to minutes of its start-up, no other admitted trial takes
   those GPUs. A Ray job outside ppo-tuner can still take them in that window.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.engines import Placement, TrainerError, fits
from tuner.engines import engine as engine_named
from tuner.trial._task import TrialTask

__all__ = ["LEASE_KEY", "Admission", "free_gpus", "trial_admission"]

LEASE_KEY = b"ppo_tuner:gpu_admission"  # in Ray's KV store: {"holder": ..., "until": unix time}
_LEASE_SECONDS = 30.0  # a lease its holder stopped refreshing (it died) is free after this
_POLL = 0.5  # s between looks at the lease and the placement groups
_NOTICE = 60.0  # s between the lines a waiting trial writes to its log
_FIRST_NOTICE = 2.0  # s of waiting before the first line: Ray places free GPUs within this
_PREFIX = "ppo-tuner-admission"  # the name of our placement groups


def free_gpus() -> list[float]:
    """The GPUs free now on each live node of the cluster (as verl reads them)."""
    import ray

    per_node = ray._private.state.available_resources_per_node()
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    return [resources.get("GPU", 0.0) for node, resources in per_node.items() if node in alive]


def _all_gpus() -> list[float]:
    import ray

    return [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]]


def _counts(gpus: list[float]) -> str:
    return ", ".join(f"{g:g}" for g in sorted(gpus, reverse=True)) or "no nodes"


def trial_admission(task: TrialTask, log: Path, stop_requested: Callable[[], bool]) -> Admission | None:
    """The admission of `task` on a cluster, whose lines go to the trial's log `log`; None where there is
    none: a local sweep, an engine without a Ray of its own, or GPU counts trial.command does not give as
    numbers."""
    ext = task.external
    placement = engine_named(task.engine_kind).placement(ext.get("command", []))
    if ext.get("ray") != "cluster" or placement is None:
        return None
    parts = Path(task.folder).parts
    who = f"trial {task.number} of sweep {parts[-3]}" if len(parts) >= 3 else f"trial {task.number}"

    def say(line: str) -> None:
        with log.open("a") as out:
            out.write(f"[ppo-tuner {time.strftime('%H:%M:%S')}] {line}\n")

    return Admission(placement, who, say, stop_requested, float(ext.get("report_timeout", 600.0)))


class Admission:
    """One trial's admission (module docstring): `wait()` before the launch, `launched()` right after,
    `close()` at the trainer's first report and when the trial ends. `say` writes a line to the trial's
    log; `stop_requested` is polled; `handover`: trial.report_timeout, s."""

    def __init__(self, placement: Placement, who: str, say: Callable[[str], None],
                 stop_requested: Callable[[], bool], handover: float):
        self.placement, self.who, self.say = placement, who, say
        self.stop_requested, self.handover = stop_requested, handover
        self._held, self._closed = False, threading.Event()
        self._before: set[str] = set()  # the placement groups that existed when the trainer started

    def wait(self) -> bool:
        """True once the trainer may start; False when the trial was stopped while it waited. Raises
        TrainerError (not retried) for a shape the cluster's nodes cannot hold."""
        self._check_fits()
        started = time.monotonic()
        said = started - _NOTICE + _FIRST_NOTICE  # the first line after _FIRST_NOTICE s
        while not self._take_lease():
            if self.stop_requested():
                return False
            if time.monotonic() - said >= _NOTICE:
                holder = self._lease().get("holder", "another trial")
                self.say(f"waiting for GPUs: {holder} is being admitted first; this trial needs "
                         f"{self.placement.describe()}; GPUs free per node: {_counts(free_gpus())}")
                said = time.monotonic()
                self._check_fits()
            time.sleep(_POLL)
        try:
            return self._place(started, said)
        except BaseException:
            self._release_lease()
            raise

    def _place(self, started: float, said: float) -> bool:
        from ray.util.placement_group import placement_group, remove_placement_group

        groups = [placement_group(bundles, strategy=self.placement.strategy, name=f"{_PREFIX}:{self.who}:{i}")
                  for i, bundles in enumerate(self.placement.bundles())]
        try:
            while not all(group.wait(_POLL / len(groups)) for group in groups):
                self._refresh_lease()
                if self.stop_requested():
                    self._release_lease()
                    return False
                if time.monotonic() - said >= _NOTICE:
                    self.say(f"waiting for GPUs: this trial needs {self.placement.describe()}; GPUs free per "
                             f"node: {_counts(free_gpus())} (waited {time.monotonic() - started:.0f} s)")
                    said = time.monotonic()
                    self._check_fits()
        finally:
            for group in groups:
                remove_placement_group(group)
        if time.monotonic() - started >= _FIRST_NOTICE:
            self.say(f"admitted after {time.monotonic() - started:.0f} s: {self.placement.describe()} placed")
        self._before = set(_table())
        return True

    def launched(self, running: Callable[[], bool]) -> None:
        """The trainer started: a thread keeps the lease until the trainer's own placement groups hold its
        GPUs, and until its first report (`close`), its exit (`running()` false) or the trial's end says in
        the trial's log which of its placement groups Ray has not placed, if any, every minute (every half
        trial.report_timeout, where that is shorter), so that a trainer stuck in `pg.ready()` shows."""
        threading.Thread(target=self._hand_over, args=(running,), name=f"admission-{self.who}",
                         daemon=True).start()

    def _hand_over(self, running: Callable[[], bool]) -> None:
        every = min(_NOTICE, self.handover / 2)
        said = time.monotonic()
        try:
            while not self._closed.wait(_POLL) and running():
                if self._held and self._trainer_gpus("CREATED") >= self.placement.gpus:
                    self._release_lease()
                self._refresh_lease()
                if time.monotonic() - said >= every:
                    said = time.monotonic()
                    waiting = self.waiting_for()
                    if waiting:
                        self.say(f"no report yet. {waiting}")
        finally:
            self._release_lease()

    def waiting_for(self) -> str:
        """The trainer's placement groups still pending and the GPUs free per node, as a sentence; empty
        when none is pending."""
        try:
            pending = [g for g in self._trainer_groups() if g["state"] == "PENDING"]
            free, every = (_counts(free_gpus()), _counts(_all_gpus())) if pending else ("", "")
        except Exception:  # Ray is gone: the trial's own error says enough
            return ""
        if not pending:
            return ""
        groups = "; ".join(f"{g['name'] or g['placement_group_id']} ({len(g['bundles'])} bundles of "
                           f"{_bundle(g)}, {g['strategy']})" for g in pending)
        return (f"The trainer waits for Ray to place its placement groups: {groups}. GPUs free per node: "
                f"{free}; all GPUs per node: {every}.")

    def close(self) -> None:
        """The trial ended, or its trainer reported (its GPUs are placed): the lease is released."""
        self._closed.set()
        self._release_lease()

    # -- the trainer's own placement groups ------------------------------------------------------
    def _trainer_groups(self) -> list[dict[str, Any]]:
        return [g for pid, g in _table().items()
                if pid not in self._before and not str(g["name"]).startswith(_PREFIX)
                and any(b.get("GPU", 0) for b in g["bundles"].values())]

    def _trainer_gpus(self, state: str) -> float:
        return sum(b.get("GPU", 0.0) for g in self._trainer_groups() if g["state"] == state
                   for b in g["bundles"].values())

    def _check_fits(self) -> None:
        gpus = _all_gpus()
        if not fits(self.placement, gpus):
            raise TrainerError(f"NotPlaceable: the trainer needs {self.placement.describe()}; the cluster's GPUs "
                               f"per node: {_counts(gpus)}. Lower them in trial.command or add larger nodes")

    # -- the lease ---------------------------------------------------------------------------------
    def _lease(self) -> dict[str, Any]:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(LEASE_KEY)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def _value(self) -> bytes:
        return json.dumps({"holder": self.who, "until": time.time() + _LEASE_SECONDS}).encode()

    def _take_lease(self) -> bool:
        from ray.experimental import internal_kv

        lease = self._lease()
        if lease and lease.get("until", 0) < time.time():  # its holder died
            internal_kv._internal_kv_del(LEASE_KEY)
        self._held = not internal_kv._internal_kv_put(LEASE_KEY, self._value(), overwrite=False)
        return self._held

    def _refresh_lease(self) -> None:
        from ray.experimental import internal_kv

        if self._held and self._lease().get("holder") == self.who:
            internal_kv._internal_kv_put(LEASE_KEY, self._value(), overwrite=True)

    def _release_lease(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            from ray.experimental import internal_kv

            if self._lease().get("holder") == self.who:
                internal_kv._internal_kv_del(LEASE_KEY)
        except Exception:  # Ray is gone: the lease went with it, or expires
            pass


def _table() -> dict[str, dict[str, Any]]:
    from ray.util.placement_group import placement_group_table

    return placement_group_table()


def _bundle(group: dict[str, Any]) -> str:
    first = next(iter(group["bundles"].values()), {})
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(first.items())) + "}"
