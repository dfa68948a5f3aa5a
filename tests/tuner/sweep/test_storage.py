"""Controllers that start at once on a fresh PostgreSQL database: schema creation is serialised."""

from __future__ import annotations

import multiprocessing
import threading
import time

import optuna

from tuner.sweep.study import open_storage, schema_init_lock


def _open_and_create(url: str, name: str, start: float) -> str:
    while time.time() < start:  # line the processes up so their schema creation overlaps
        time.sleep(0.001)
    try:
        storage = open_storage(url)
        optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
        return "ok"
    except Exception as exc:  # reported to the test as text: the exception may not pickle
        return f"{type(exc).__name__}: {exc}"


def test_concurrent_first_opens_all_succeed(postgres):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.apply(time.sleep, (0,))  # workers up and importing before the clock starts
        for round_ in range(3):
            url = postgres.create_db(f"fresh_{round_}")
            start = time.time() + 1.5
            results = pool.starmap(_open_and_create, [(url, f"study-{i}", start) for i in range(4)])
            assert results == ["ok"] * 4, results
            names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}
            assert names == {f"study-{i}" for i in range(4)}


def test_open_waits_for_the_schema_lock(postgres):
    url = postgres.create_db("locked_fresh")
    opened = threading.Event()

    def opener() -> None:
        open_storage(url)
        opened.set()

    with schema_init_lock(url):
        thread = threading.Thread(target=opener, daemon=True)
        thread.start()
        assert not opened.wait(2.0), "open_storage created the schema while another process held the lock"
    assert opened.wait(60), "open_storage did not proceed once the lock was released"
    thread.join(5)


def test_sqlite_lock_is_a_file_beside_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with schema_init_lock(url):
        assert (tmp_path / "study.db.init.lock").exists()
    open_storage(url)
    assert (tmp_path / "study.db").exists()
