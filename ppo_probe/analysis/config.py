"""Thresholds of the analysis: defaults, then ``[tool.ppo_probe]`` of the nearest pyproject.toml,
then arguments, each overriding the one before."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Thresholds:
    """Health bands (DESIGN section 3) and the knobs of each diagnostic."""

    target_kl: float = 0.02
    clip_band: tuple[float, float] = (0.05, 0.30)
    min_paired_fraction: float = 0.9
    clip_coef: float | None = None  # None: inferred from where the clipped branch is active
    adv_std_band: tuple[float, float] = (0.2, 5.0)
    adv_mean_max: float = 1.0
    misaligned_max_consistency: float = 0.3
    small_kl_fraction: float = 0.2  # update-too-small below this x target
    large_kl_multiple: float = 2.0  # update-too-large above this x target
    zero_lr: float = 1e-8
    severities: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **changes)


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` (default: the working directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_table(pyproject: Path | None) -> dict[str, Any]:
    """``[tool.ppo_probe]`` of ``pyproject`` ({} when absent); a malformed file is a clear error."""
    if pyproject is None:
        return {}
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"ppo_probe: cannot read {pyproject}: {exc}") from None
    table = data.get("tool", {}).get("ppo_probe", {})
    if not isinstance(table, dict):
        raise ValueError(f"ppo_probe: [tool.ppo_probe] in {pyproject} must be a table")
    return table


_KNOWN = {f.name for f in dataclasses.fields(Thresholds)}


_NUMBERS = {"target_kl", "min_paired_fraction", "clip_coef", "adv_mean_max",
            "misaligned_max_consistency", "small_kl_fraction", "large_kl_multiple", "zero_lr"}
_BANDS = {"clip_band", "adv_std_band"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_type(key: str, value: Any, source: str) -> None:
    """A clear error for a setting of the wrong type (a string "0.02", a band of one number)."""
    if key in _NUMBERS and not _number(value):
        raise ValueError(f"ppo_probe: {key} must be a finite number, got {value!r} in {source}")
    if key in _BANDS and not (isinstance(value, tuple) and len(value) == 2 and all(map(_number, value))
                              and value[0] < value[1]):
        raise ValueError(f"ppo_probe: {key} must be two numbers [low, high] with low < high, got "
                         f"{value!r} in {source}")
    if key == "ignore" and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"ppo_probe: ignore must be a list of diagnostic ids, got {value!r} in {source}")
    if key == "severities" and not isinstance(value, dict):
        raise ValueError(f"ppo_probe: severities must be a table of id = severity, got {value!r} in {source}")


def build_thresholds(table: dict[str, Any], overrides: dict[str, Any], known_ids: set[str]) -> Thresholds:
    """Defaults <- ``table`` (from pyproject) <- ``overrides`` (arguments that are not None)."""
    merged: dict[str, Any] = {}
    for source, values in (("[tool.ppo_probe]", table), ("arguments", overrides)):
        for key, value in values.items():
            if value is None:
                continue
            key = key.replace("-", "_")
            if key in ("fail_on",):  # reserved for `ppo-probe check`, not an analysis threshold
                continue
            if key not in _KNOWN:
                raise ValueError(f"ppo_probe: unknown setting {key!r} in {source}; known: {sorted(_KNOWN)}")
            if key == "ignore" and isinstance(value, str):
                value = [value]  # one id
            merged[key] = tuple(value) if isinstance(value, list) else value
            _check_type(key, merged[key], source)
    thresholds = Thresholds(**merged)
    unknown = (set(thresholds.ignore) | set(thresholds.severities)) - known_ids
    if unknown:
        raise ValueError(f"ppo_probe: unknown diagnostic ids {sorted(unknown)}; known: {sorted(known_ids)}")
    bad = {k: v for k, v in thresholds.severities.items() if v not in SEVERITIES}
    if bad:
        raise ValueError(f"ppo_probe: severities must be one of {SEVERITIES}, got {bad}")
    if not thresholds.target_kl > 0:
        raise ValueError(f"ppo_probe: target_kl must be > 0, got {thresholds.target_kl}")
    if thresholds.clip_coef is not None and not thresholds.clip_coef > 0:
        raise ValueError(f"ppo_probe: clip_coef must be > 0, got {thresholds.clip_coef}")
    return thresholds
