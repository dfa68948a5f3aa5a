"""Finding a sweep by name, folder or spec file (its resolved spec is kept in
<sweep dir>/spec.yaml), and a trial's own folder in it."""

from __future__ import annotations

from pathlib import Path

import yaml

from trials import ConfigError, Problem
from tuner.spec import SPEC_FILE, CompiledSpec, load_spec

__all__ = ["TRIALS_DIR", "find_sweep", "list_sweeps", "trial_folder"]

TRIALS_DIR = "trials"  # sweeps/NAME/trials/N: search trial N's own folder


def find_sweep(ref: str, workdir: str = "sweeps") -> CompiledSpec:
    """SWEEP may be a sweep name (under workdir), a sweep folder, or the spec file it was run from."""
    path = Path(ref)
    candidates = [path / SPEC_FILE, Path(workdir) / ref / SPEC_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return load_spec(candidate)
    if path.is_file():
        try:
            spec = load_spec(path)
        except ConfigError:
            saved = _saved_copy(path)  # a sweep run with --address (tuner submit) was checked for that cluster
            if saved is None:
                raise
            return load_spec(saved)
        saved = spec.spec_file()
        return load_spec(saved) if saved.is_file() else spec
    known = ", ".join(s.name for s in list_sweeps(workdir)) or "none yet"
    raise ConfigError([Problem("SWEEP", ref, f"is no sweep name under {workdir}/, sweep folder or spec file",
                               f"give one of: {known}")])


def _saved_copy(path: Path) -> Path | None:
    """The resolved copy of spec file `path` in its sweep's folder (<workdir>/<name>/spec.yaml), if it ran."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    saved = Path(str(raw.get("workdir") or "sweeps")) / raw["name"] / SPEC_FILE
    return saved if saved.is_file() else None


def list_sweeps(workdir: str = "sweeps") -> list[CompiledSpec]:
    root = Path(workdir)
    if not root.is_dir():
        return []
    return [load_spec(p) for p in sorted(root.glob(f"*/{SPEC_FILE}"))]


def trial_folder(spec: CompiledSpec, number: int, stage: str = TRIALS_DIR) -> Path:
    """Trial `number`'s own folder, absolute (a Ray worker runs elsewhere): sweeps/NAME/trials/N
    for a search trial; sweeps/NAME/promotion/N for a promotion run (`stage` PROMOTION, N its
    number in the promotion study)."""
    return (spec.sweep_dir() / stage / str(number)).resolve()
