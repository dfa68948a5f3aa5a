"""The Optuna study of a sweep: storage, loading, trial outcomes, the best feasible trial.

Every trial that ran records on its Optuna trial: the constraint "kl" (max objective/kl minus the
KL limit, at least 1 for a trial the KL forecast stopped; > 0 means infeasible: `kl_constraint`), and
the user attributes below. A trial is feasible when it ran and its constraint is <= 0; only COMPLETE
feasible trials can be the best.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from trials import Problem, TunerError
from tuner.trial import STATES, Attr, State, StopReason, feasible, overoptimized, recorded_state

__all__ = ["ATTR", "PARENT_ATTR", "StorageError", "TrialRow", "best_feasible", "best_of",
           "count_states", "ranked_feasible", "ranked_of", "interrupted", "mark_interrupted",
           "requeue_interrupted", "is_connection_error", "open_storage", "ran_configs", "redact",
           "scrub", "schema_init_lock", "tell_duplicate", "trial_rows"]

# user attributes on each Optuna trial, by short name (ATTR["stop"] is Attr.STOP: "stop_reason")
ATTR: dict[str, Attr] = {attr.name.lower(): attr for attr in Attr}
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the sweep's MLflow parent run


def redact(url: str | None) -> str | None:
    """The URL with any password replaced by ***, for logs, MLflow params and messages."""
    if not url:
        return url
    return re.sub(r"(://[^:/@\s]+:)([^@\s]*)@", r"\1***@", url)


def open_storage(url: str, kind: type[optuna.storages.RDBStorage] = optuna.storages.RDBStorage
                 ) -> optuna.storages.RDBStorage:
    """An RDB storage that tolerates concurrent writers (SQLite: WAL and a long busy timeout); `kind`, a
    subclass of RDBStorage, changes how it reads (optuna-dashboard's view of a study, tuner/sweep/_dashboard.py).

    The one place where a database error becomes the project's own error, with the password redacted.
    """
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        with schema_init_lock(url):  # two controllers creating the tables of one database at once collide
            storage = kind(url, engine_kwargs=kwargs)
        if url.startswith("sqlite"):
            with storage.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, TimeoutError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise StorageError([Problem("storage", redact(url),
                                    f"cannot open the study database ({scrub(reason, url)})",
                                    "check that the database server is running and the URL, "
                                    "user and password are right")]) from None
    return storage


def schema_init_lock(url: str) -> Any:
    """An inter-process lock held while a database's tables are created or migrated.

    SQLite: a lock file beside the database. PostgreSQL: a session-level advisory lock, so two
    controllers starting at once on a fresh database do not both create Optuna's or MLflow's types
    (which fails with a duplicate key on pg_type). Other databases: no lock.
    """
    if url.startswith("postgresql"):
        return _pg_advisory_lock(url)
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return contextlib.nullcontext()
    from filelock import FileLock

    path = url.removeprefix("sqlite:///")
    return FileLock(f"{path}.init.lock", timeout=300)


_PG_LOCK_KEY = 0x7070_6F74_756E  # "ppotun": one key for every ppo-tuner schema initialisation


@contextlib.contextmanager
def _pg_advisory_lock(url: str, timeout: float = 300.0) -> Iterator[None]:
    import time

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout
            while not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_LOCK_KEY}).scalar():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held the schema lock for {timeout:.0f} s")
                conn.rollback()
                time.sleep(0.2)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


class StorageError(TunerError):
    """The study database cannot be reached or opened."""


def is_connection_error(exc: BaseException, chain: bool = True) -> bool:
    """Whether an error (or, with `chain`, one it was raised from: Optuna wraps SQLAlchemy's) means the
    database could not be reached or the connection dropped, so that the same call may pass later."""
    import sqlalchemy.exc

    try:
        import psycopg
        dropped: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    except ImportError:
        dropped = ()
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 10:
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DisconnectionError, *dropped)):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        if not chain:
            return False
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from a driver's message, wherever it appears."""
    match = re.search(r"://[^:/@\s]+:([^@\s]*)@", url)
    text = redact(text) or ""
    return text.replace(match.group(1), "***") if match and match.group(1) else text


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether the trial's constraints (kl, memory) are met (`tuner.trial.feasible`)."""
    return feasible(trial.constraints)


def state_of(trial: FrozenTrial) -> State:
    """COMPLETE, INFEASIBLE (passed the KL limit, or did not fit in memory), PRUNED, FAIL, RUNNING,
    WAITING, or DUPLICATE (a sampled config that an earlier trial ran: told that trial's outcome,
    not run): `tuner.trial.recorded_state` of what the study holds."""
    return recorded_state(trial.state.name, trial.constraints, Attr.DUPLICATE in trial.user_attrs)


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[state_of(trial)] += 1
    return counts


def ranked_of(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    """The COMPLETE trials within the KL limit that ran (no duplicate), best first by their first value;
    a trial ranks above a later one of the same value."""
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    candidates = [t for t in trials if t.state == TrialState.COMPLETE and is_feasible(t) and t.values
                  and math.isfinite(t.values[0]) and ATTR["duplicate"] not in t.user_attrs]
    return sorted(candidates, key=lambda t: (sign * t.values[0], t.number))


def ranked_feasible(study: optuna.Study) -> list[FrozenTrial]:
    """ranked_of the study's trials (first objective for multi-objective studies)."""
    return ranked_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study.directions[0])


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial within the KL limit (first objective for multi-objective studies)."""
    ranked = ranked_feasible(study)
    return ranked[0] if ranked else None


def best_of(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> FrozenTrial | None:
    """best_feasible over a list of trials (the dashboard's view of a study)."""
    ranked = ranked_of(trials, direction)
    return ranked[0] if ranked else None


@dataclass
class TrialRow:
    """One trial as the study holds it: what `tuner status` and the end of `tuner run` show."""

    number: int
    state: str
    value: float | None
    kl_max: float | None
    iterations: int | None
    params: dict[str, Any]
    stop_reason: str
    kl_final: float | None = None
    beta: float | None = None  # the trial's (initial) kl_coef
    reward: float | None = None  # the last iteration's objective/scores
    eval: float | None = None  # the last eval/scores
    gold: float | None = None  # the last eval/gold_scores (the held-out reward)
    overoptimized: bool = False  # its training reward rose while its held-out reward fell (see `overoptimized`)
    source: int | None = None  # a promotion run: the search trial it repeats
    seed: int | None = None  # a promotion run: its seed


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        engine = json.loads(t.user_attrs.get(ATTR["engine"], "{}"))
        rows.append(TrialRow(number=t.number, state=state_of(t), value=t.values[0] if t.values else None,
                             kl_max=t.user_attrs.get(ATTR["kl_max"]), iterations=t.user_attrs.get(ATTR["iterations"]),
                             params=dict(t.params), stop_reason=t.user_attrs.get(ATTR["stop"], ""),
                             kl_final=t.user_attrs.get(ATTR["kl_final"]), beta=engine.get("kl_coef"),
                             reward=t.user_attrs.get(ATTR["reward"]), eval=t.user_attrs.get(ATTR["eval"]),
                             source=t.user_attrs.get(ATTR["source"]), seed=t.user_attrs.get(ATTR["seed"]),
                             gold=t.user_attrs.get(ATTR["gold"]),
                             overoptimized=overoptimized(t.user_attrs.get(ATTR["evals"], []))))
    return rows


def interrupted(trial: FrozenTrial) -> bool:
    """Whether a trial was stopped by its controller (Ctrl-C, SIGTERM, a dead controller): it runs again."""
    return trial.user_attrs.get(ATTR["stop"]) == StopReason.INTERRUPTED


def mark_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage, keep: set[int] = frozenset()) -> int:
    """Trials left RUNNING or WAITING by a controller that died (or asked for when the database dropped
    the connection), except the numbers in `keep`: FAIL, stop reason 'interrupted', so a resume runs them
    again. `storage` is the study's (a finished trial's attributes are written through the storage's
    public API). Returns how many were marked."""
    study_id = storage.get_study_id_from_name(study.study_name)
    left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if t.number not in keep]
    for trial in left:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, ATTR["stop"], StopReason.INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
    return len(left)


def requeue_interrupted(study: optuna.Study, at_most: int) -> list[int]:
    """Queue (Optuna's enqueue_trial) the searched values of interrupted trials (see
    mark_interrupted) that no trial runs again yet, oldest first, `at_most` of them: the next trials
    asked run them again, with the same engine config and seed (the spec's, or a searched value).
    The queued trial has user attribute run_again_of; an interrupted trial counts for nothing toward
    the budget and its re-run counts once. A queued trial stopped before it ran is interrupted too,
    and is queued again. Returns the numbers of the interrupted trials whose values were queued."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs[ATTR["rerun"]] for t in trials if ATTR["rerun"] in t.user_attrs}
    queued: list[int] = []
    for trial in trials:
        params = trial.params or trial.system_attrs.get("fixed_params")  # queued, never asked: none
        if len(queued) >= at_most or not interrupted(trial) or trial.number in taken or not params:
            continue
        study.enqueue_trial(dict(params), user_attrs={ATTR["rerun"]: trial.number},
                            skip_if_exists=False)
        queued.append(trial.number)
    return queued


def engine_config_of(trial: FrozenTrial) -> dict[str, Any]:
    return json.loads(trial.user_attrs[ATTR["engine"]])


def ran_configs(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each engine config (its JSON, as the trial's user attribute holds it) that a trial ran or is
    running, with that trial. Failed trials are left out (their config may run again), and so are
    DUPLICATE trials (they never ran)."""
    out: dict[str, FrozenTrial] = {}
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for t in study.get_trials(deepcopy=False, states=states):
        if ATTR["engine"] in t.user_attrs and ATTR["duplicate"] not in t.user_attrs:
            out.setdefault(t.user_attrs[ATTR["engine"]], t)
    return out


def tell_duplicate(study: optuna.Study, trial: optuna.trial.Trial, earlier: FrozenTrial, multi: bool = False) -> None:
    """Tell `trial`, which repeats `earlier`'s engine config, `earlier`'s outcome (its intermediate
    values, KL constraint and state), with user attribute duplicate_of; it is not to be run. A sampler
    that keeps proposing a config it likes (discrete spaces) then learns at no cost instead of spending
    a run on a known result. While `earlier` runs, its outcome is not known: `trial` is told FAIL."""
    trial.set_user_attr(ATTR["duplicate"], earlier.number)
    if earlier.state in (TrialState.RUNNING, TrialState.WAITING):
        trial.set_user_attr(ATTR["stop"], f"same config as trial {earlier.number} (running)")
        study.tell(trial, state=TrialState.FAIL)
        return
    for key in ("kl_max", "kl_final", "iterations", "reward", "eval", "gold", "evals"):
        if ATTR[key] in earlier.user_attrs:
            trial.set_user_attr(ATTR[key], earlier.user_attrs[ATTR[key]])
    trial.set_user_attr(ATTR["stop"], f"same config as trial {earlier.number}: "
                                      f"{earlier.user_attrs.get(ATTR['stop'], '')}")
    for step, value in earlier.intermediate_values.items():
        trial.report(value, step=step)
    for name, value in (earlier.constraints or {}).items():
        trial.set_constraint(name, value)
    if earlier.state == TrialState.COMPLETE:
        study.tell(trial, earlier.values if multi else earlier.values[0])
    else:
        study.tell(trial, state=TrialState.PRUNED)
