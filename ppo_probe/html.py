"""A self-contained HTML report: :func:`render_html` and :func:`write_html` (``Report.to_html``).

One file with no JavaScript and no external resource: the plots are PNGs drawn on matplotlib's
Agg canvas (``Figure`` + ``FigureCanvasAgg``; pyplot is never imported, so the user's backend and
global state are left alone) and embedded as base64 ``data:`` URIs. Every string that comes from
the run (path, actor and parameter names, diagnostic evidence, rationale...) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .analysis.report import schedule_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .analysis.report import Report

#: The per-cycle KL band shaded in the KL plot, as multiples of the target KL (rl_games' rule).
KL_BAND = (0.5, 2.0)
MATPLOTLIB_HINT = "ppo_probe's HTML report needs matplotlib: pip install 'ppo_probe[html]'"
_SEVERITIES = ("error", "warning", "info")
_DPI = 100
_NA = "–"

#: A plot: the figure, or None with the reason it was skipped; plus a note shown under it.
PlotResult = tuple["Figure | None", str]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document (plots embedded as base64 PNGs).

    Raises:
        ImportError: matplotlib is not installed.
    """
    _require_matplotlib()
    path = _e(report.run.path)
    body = "\n".join(
        [
            _header(report),
            _verdict(report),
            _settings(report),
            _diagnostics(report),
            _recommendation(report),
            _rank_table(report),
            *(_plot_section(report, *spec) for spec in _PLOTS),
            _cycle_table(report),
            _actor_params(report),
            _footer(),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request: nothing is fetched at all
        f"<title>ppo_probe report: {path}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _footer() -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"<footer>ppo_probe {_e(_version())}, generated {_e(stamp)}</footer>"


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_html` of ``report`` to ``path`` (UTF-8) and return the path."""
    target = Path(path)
    target.write_text(render_html(report), encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------
# Text sections
# --------------------------------------------------------------------------------------------


def _header(report: Report) -> str:
    """Title, run path and what the run holds."""
    meta = report.run.meta
    pairs = report.run.pairs
    n_paired = int(_bool(pairs["paired"]).sum()) if "paired" in pairs else 0
    paired = f"{n_paired} ({report.paired_fraction:.1%})" if len(pairs) else _NA
    actors = meta.get("actors") or {}
    optimizers = [
        str(o.get("class", "?")) for o in meta.get("optimizers") or [] if isinstance(o, dict)
    ]
    items = [
        ("status", meta.get("status")),
        (
            "actors",
            ", ".join(f"{k} ({v})" for k, v in actors.items())
            if isinstance(actors, dict)
            else actors,
        ),
        ("optimizers", ", ".join(optimizers)),
        ("ranks", meta.get("world_size")),
        ("cycles", schedule_text(meta) or len(report.per_cycle)),
        ("optimizer steps", len(report.per_step)),
        ("update rows", len(pairs)),
        ("paired rows", paired),
        ("torch", meta.get("torch_version")),
    ]
    return (
        "<header><h1>ppo_probe report</h1>"
        f'<p class="path">run <code>{_e(report.run.path)}</code></p>'
        f"{_dl(items)}</header>"
    )


def _verdict(report: Report) -> str:
    """OK / errors, with the count of findings per severity."""
    counts = report.diagnostics["severity"].value_counts()
    parts = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in _SEVERITIES)
    if report.ok:
        word, cls = ("OK: no error" if len(report.diagnostics) else "OK: no finding"), "ok"
    else:
        word, cls = "NOT OK: errors found", "bad"
    return (
        f'<section id="verdict" class="verdict {cls}">'
        f"<strong>{word}</strong> <span>({parts})</span></section>"
    )


def _settings(report: Report) -> str:
    """The thresholds the analysis ran with."""
    s = report.settings
    target = _float(s.get("target_kl"))
    lo, hi = KL_BAND
    band = (
        f"{_num(lo * target)} – {_num(hi * target)} ({lo:g}–{hi:g} × target)"
        if np.isfinite(target)
        else _NA
    )
    clip_band = _band(s.get("clip_band"))
    items = [
        ("target KL", _num(target)),
        ("KL band (plot)", band),
        ("clip coef (eps)", f"{_num(s.get('clip_coef'))} ({s.get('clip_coef_source', '?')})"),
        (
            "clip fraction band",
            f"{_num(clip_band[0])} – {_num(clip_band[1])}" if clip_band else _NA,
        ),
        ("min paired fraction", _num(s.get("min_paired_fraction"))),
        ("ignored ids", ", ".join(map(str, s.get("ignore") or ())) or _NA),
        (
            "severity overrides",
            ", ".join(f"{k}: {v}" for k, v in (s.get("severities") or {}).items()) or _NA,
        ),
        ("pyproject", s.get("pyproject") or _NA),
    ]
    return f'<section id="settings"><h2>Settings</h2>{_dl(items)}</section>'


def _diagnostics(report: Report) -> str:
    """One table per severity: id, title, evidence, fix, first step, cycles."""
    d = report.diagnostics
    if d.empty:
        return '<section id="diagnostics"><h2>Diagnostics</h2><p>No finding.</p></section>'
    parts = ['<section id="diagnostics"><h2>Diagnostics</h2>']
    severities = [*_SEVERITIES, *sorted(set(map(str, d["severity"])) - set(_SEVERITIES))]
    for severity in severities:
        rows = d[d["severity"].astype(str) == severity]
        if rows.empty:
            continue
        parts.append(f'<h3 class="sev-{_e(severity)}">{_e(severity)} ({len(rows)})</h3>')
        body = "".join(
            f'<tr class="sev-{_e(severity)}"><td><code>{_e(r.id)}</code></td><td>{_e(r.title)}</td>'
            f"<td>{_e(r.evidence)}</td><td>{_e(r.fix)}</td><td>{_int_or_na(r.first_step)}</td>"
            f"<td>{_e(_ranges(r.cycles))}</td></tr>"
            for r in rows.itertuples()
        )
        parts.append(
            '<table class="diag"><thead><tr><th>id</th><th>title</th><th>evidence</th><th>fix</th>'
            f"<th>first step</th><th>cycles</th></tr></thead><tbody>{body}</tbody></table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _recommendation(report: Report) -> str:
    """lr, lr multiplier, advantage scale and the rationale."""
    r = report.recommendation
    if not r:
        note = "No recommendation: no cycle with paired update rows and a positive KL."
        return f'<section id="recommendation"><h2>Recommendation</h2><p>{note}</p></section>'
    items = [
        ("lr", _num(r.get("lr"))),
        ("lr multiplier", f"× {_num(r.get('lr_multiplier'))}"),
        ("advantage scale", f"× {_num(r.get('adv_scale'))}"),
        ("median per-cycle KL", _num(r.get("kl_per_cycle_median"))),
        ("optimizer", r.get("optimizer") or _NA),
    ]
    rationale = f'<p class="rationale">{_e(r.get("rationale", ""))}</p>'
    return f'<section id="recommendation"><h2>Recommendation</h2>{_dl(items)}{rationale}</section>'


def _rank_table(report: Report) -> str:
    """Each rank's steps, cycles, paired fraction and KL, for runs of several ranks (else empty)."""
    ranks = report.per_rank
    if len(ranks) < 2:
        return ""
    table = ranks.to_html(
        index=False, escape=True, na_rep=_NA, border=0, classes="metrics",
        float_format=lambda x: f"{x:.4g}",
    )  # fmt: skip
    return f'<section id="per-rank"><h2>Per-rank summary</h2><div class="scroll">{table}</div></section>'


def _cycle_table(report: Report) -> str:
    """Every per-cycle metric (escaped by pandas)."""
    pc = report.per_cycle
    if pc.empty:
        table = '<p class="nodata">no data: no optimizer step saw update rows</p>'
    else:
        table = pc.to_html(
            index=False, escape=True, na_rep=_NA, border=0, classes="metrics",
            float_format=lambda x: f"{x:.4g}",
        )  # fmt: skip
        table = f'<div class="scroll">{table}</div>'
    return f'<section id="per-cycle"><h2>Per-cycle metrics</h2>{table}</section>'


def _actor_params(report: Report) -> str:
    """The actor parameters recorded in meta.json, folded (``<details>``: no script needed)."""
    params = [p for p in report.run.meta.get("actor_params") or [] if isinstance(p, dict)]
    columns = [
        "name",
        "shape",
        "numel",
        "optimizer",
        "group",
        "lr",
        "in_optimizer",
        "requires_grad",
        "feeds_logits",
    ]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(p.get(c)))}</td>" for c in columns) + "</tr>"
        for p in params
    )
    return (
        f'<section id="actor-params"><details><summary>Actor parameters ({len(params)})</summary>'
        f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></details></section>"
    )


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _plot_section(
    report: Report, key: str, title: str, caption: str, draw: Callable[[Report], PlotResult]
) -> str:
    """A plot as an embedded PNG, or a short "no data" note when there is nothing to draw."""
    fig, note = draw(report)
    if fig is None:
        content = f'<p class="nodata">no data: {_e(note)}</p>'
    else:
        alt = _e(title)
        content = f'<img alt="{alt}" src="data:image/png;base64,{_png(fig)}">'
        if note:
            content += f'<p class="note">{_e(note)}</p>'
    return (
        f'<section class="plot" id="plot-{key}"><h2>{_e(title)}</h2>'
        f'<p class="caption">{_e(caption)}</p>{content}</section>'
    )


def _plot_kl(report: Report) -> PlotResult:
    """k1, k3 and exact KL per cycle on a log axis, with the target and its band."""
    pc = report.per_cycle
    columns = {
        "kl_k3": "k3 (last epoch, SB3 approx_kl)",
        "kl_k1_end": "k1 (last epoch)",
        "kl_exact_end": "exact (last epoch)",
    }
    raw = {label: _cycle_series(pc, column) for column, label in columns.items()}
    series = {label: s[s > 0] for label, s in raw.items()}
    if not any(len(s) for s in series.values()):
        return None, "no positive per-cycle KL (no paired update rows?)"
    fig, ax = _figure()
    target = _float(report.settings.get("target_kl"))
    if np.isfinite(target) and target > 0:
        lo, hi = KL_BAND
        band = f"{lo:g}–{hi:g} × target"
        ax.axhspan(lo * target, hi * target, color="#2ca02c", alpha=0.12, label=band)
        ax.axhline(target, color="#2ca02c", linestyle="--", linewidth=1, label=f"target {target:g}")
    styles: list[dict[str, Any]] = [
        {"marker": "o", "color": "#1f77b4", "linewidth": 2.2},
        {"marker": "^", "color": "#ff7f0e"},
        {"marker": "s", "color": "#7b3294", "linestyle": "--", "markersize": 4},
    ]
    for (label, s), style in zip(series.items(), styles):
        if len(s):
            ax.plot(s.index, s.to_numpy(), label=label, **style)
    ax.set_yscale("log")
    _finish(ax, "KL", pc)
    dropped = sum(len(raw[k]) - len(series[k]) for k in raw)
    note = f"{dropped} non-positive value(s) left off the log axis" if dropped else ""
    return fig, note


def _plot_clip(report: Report) -> PlotResult:
    """Clip fraction per cycle, by ratio and by gradient, with the configured band."""
    pc = report.per_cycle
    series = {
        "|r − 1| > eps (SB3 clip_fraction)": _cycle_series(pc, "clip_fraction"),
        "clipped branch active (no gradient)": _cycle_series(pc, "clip_fraction_grad_mean"),
    }
    if not any(len(s) for s in series.values()):
        return None, "no per-cycle clip fraction"
    fig, ax = _figure()
    band = _band(report.settings.get("clip_band"))
    if band:
        lo, hi = band
        ax.axhspan(lo, hi, color="#2ca02c", alpha=0.12, label=f"band {lo:g}–{hi:g}")
    styles: list[dict[str, Any]] = [
        {"marker": "o", "color": "#1f77b4", "linewidth": 2.2},
        {"marker": "s", "color": "#ff7f0e", "linestyle": "--", "markersize": 4},
    ]
    for (label, s), style in zip(series.items(), styles):
        if len(s):
            ax.plot(s.index, s.to_numpy(), label=label, **style)
    ax.set_ylim(bottom=0)
    _finish(ax, "clip fraction", pc)
    return fig, ""


def _plot_entropy(report: Report) -> PlotResult:
    """Normalized entropy H / log K per cycle."""
    s = _cycle_series(report.per_cycle, "entropy_norm_mean")
    if s.empty:
        return None, "no entropy recorded for update-phase distributions"
    fig, ax = _figure()
    ax.plot(s.index, s.to_numpy(), marker="o", label="entropy / log K (mean over steps)")
    ax.set_ylim(0, 1.05)
    _finish(ax, "entropy / log K", report.per_cycle)
    return fig, ""


def _plot_paired(report: Report) -> PlotResult:
    """Fraction of update rows paired to a sampled (input, action), per cycle."""
    s = _cycle_series(report.per_cycle, "match_rate")
    if s.empty:
        return None, "no update rows"
    fig, ax = _figure()
    floor = _float(report.settings.get("min_paired_fraction"))
    if np.isfinite(floor):
        ax.axhline(floor, color="#d62728", linestyle="--", linewidth=1, label=f"minimum {floor:g}")
    ax.plot(s.index, s.to_numpy(), marker="o", label="paired fraction")
    ax.set_ylim(0, 1.05)
    _finish(ax, "paired fraction", report.per_cycle)
    return fig, ""


def _plot_histograms(report: Report) -> PlotResult:
    """Histograms of the ratio and of adv_eff over the paired update rows."""
    pairs = report.run.pairs
    paired = pairs[_bool(pairs["paired"])] if "paired" in pairs else pairs.iloc[0:0]
    ratio, adv = _finite(paired, "ratio"), _finite(paired, "adv_eff")
    if not len(ratio) and not len(adv):
        return None, "no paired update rows"
    fig, (left, right) = _figure(11.5, 3.6, ncols=2)
    eps = _float(report.settings.get("clip_coef"))
    notes = [
        _histogram(left, ratio, "ratio", "ratio new / old", "#1f77b4"),
        _histogram(right, adv, "adv_eff", "adv_eff (−dLoss/dlogp × rows)", "#ff7f0e"),
    ]
    if len(ratio) and np.isfinite(eps):
        for x in (1 - eps, 1 + eps):
            left.axvline(x, color="#d62728", linestyle="--", linewidth=1)
        left.legend([left.lines[0]], [f"1 ± eps ({eps:g})"], fontsize=8, loc="upper right")
    return fig, "; ".join(n for n in notes if n)


def _histogram(ax: Axes, values: np.ndarray, name: str, label: str, color: str) -> str:
    """One histogram over a robust range of ``values``; returns a note on what was left out."""
    ax.set_xlabel(label)
    ax.set_ylabel("rows")
    if not len(values):
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return ""
    lo, hi = _robust_range(values)
    if not hi > lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-6), hi + 0.5 * max(abs(hi), 1e-6)
    inside = values[(values >= lo) & (values <= hi)]
    ax.hist(inside, bins=min(80, max(10, int(np.sqrt(len(inside))))), range=(lo, hi), color=color)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    outside = len(values) - len(inside)
    ax.set_title(f"{name}: {len(values)} rows", fontsize=10)
    return f"{name}: {outside} of {len(values)} rows outside the shown range" if outside else ""


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """[min, max] of ``values``, narrowed to the central 99% widened by half its width when a few
    outliers lie further out (so one exploded ratio does not squash the histogram)."""
    lo, hi = float(values.min()), float(values.max())
    if len(values) < 200:
        return lo, hi
    p_lo, p_hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    pad = 0.5 * (p_hi - p_lo)
    return max(lo, p_lo - pad), min(hi, p_hi + pad)


def _plot_layers(report: Report) -> PlotResult:
    """Heatmaps of per-parameter grad norm and delta norm (parameter x optimizer step)."""
    layers = report.run.layers
    if layers.empty or not {"name", "step"} <= set(layers.columns):
        return None, "no per-parameter rows recorded"
    grad = _layer_matrix(layers, "grad_norm")
    delta = _layer_matrix(layers, "delta_norm")
    if not _has_positive(grad) and not _has_positive(delta):
        return None, "no positive grad or delta norm"
    n = len(grad.index)
    height = min(30.0, max(3.0, 0.22 * n + 1.4))
    fig, axes = _figure(11.5, height, ncols=2)
    for ax, matrix, title in zip(
        axes, (grad, delta), ("grad norm", "delta norm (change per step)")
    ):
        _heatmap(fig, ax, matrix, title)
    axes[1].set_yticklabels([])
    ranks = int(layers["rank"].nunique()) if "rank" in layers else 1
    note = f"mean over {ranks} ranks" if ranks > 1 else ""
    return fig, note


def _layer_matrix(layers: pd.DataFrame, column: str) -> pd.DataFrame:
    """parameter name x step (mean over ranks), names in recording order; no gradient = NaN."""
    values = pd.to_numeric(layers[column], errors="coerce").astype("float64")
    if column == "grad_norm" and "grad_is_none" in layers:
        values = values.where(~_bool(layers["grad_is_none"]))
    frame = pd.DataFrame({"name": layers["name"].astype(str), "step": layers["step"], "v": values})
    frame = frame.dropna(subset=["step"]).astype({"step": "int64"})
    matrix = frame.groupby(["name", "step"])["v"].mean().unstack("step")
    return matrix.reindex(pd.unique(frame["name"]))


def _heatmap(fig: Figure, ax: Axes, matrix: pd.DataFrame, title: str) -> None:
    """Log-colour heatmap of ``matrix``; zero, missing and non-finite cells in grey."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    data = matrix.to_numpy(dtype="float64")
    positive = data[np.isfinite(data) & (data > 0)]
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step")
    n = data.shape[0]
    every = max(1, math.ceil(n / 100))
    ax.set_yticks(range(0, n, every))
    ax.set_yticklabels(list(matrix.index[::every]), fontsize=8 if n <= 40 else 6)
    if not len(positive):
        ax.set_ylim(n - 0.5, -0.5)
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    masked = np.ma.masked_where(~(np.isfinite(data) & (data > 0)), data)
    vmin, vmax = float(positive.min()), float(positive.max())
    norm = LogNorm(vmin=vmin, vmax=vmax if vmax > vmin else vmin * 10)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(masked, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    steps = list(matrix.columns)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: str(steps[int(x)]) if 0 <= int(x) < len(steps) else "")
    )


#: key, title, caption, draw: the plot sections in order.
_PLOTS: list[tuple[str, str, str, Callable[[Report], PlotResult]]] = [
    (
        "kl",
        "KL per cycle",
        (
            "k1, k3 and the exact KL over the last epoch's steps, log axis; "
            "shaded: the band around the target."
        ),
        _plot_kl,
    ),
    (
        "clip",
        "Clip fraction per cycle",
        (
            "Share of paired rows with |r − 1| > eps, "
            "and share whose clipped branch blocked the gradient."
        ),
        _plot_clip,
    ),
    (
        "entropy",
        "Normalized entropy per cycle",
        "Mean entropy / log K of the update-phase distributions: 1 = uniform, 0 = deterministic.",
        _plot_entropy,
    ),
    (
        "hist",
        "Ratio and effective advantage",
        (
            "Over all paired update rows; log count axis. "
            "adv_eff is the advantage the loss really applied."
        ),
        _plot_histograms,
    ),
    (
        "layers",
        "Per-parameter gradient and update norms",
        (
            "One row per parameter tensor, one column per optimizer step; "
            "log colour; grey = zero or no gradient."
        ),
        _plot_layers,
    ),
    (
        "paired",
        "Paired fraction per cycle",
        (
            "Share of update rows matched to a sampled (input, action): "
            "below the line the metrics are partial."
        ),
        _plot_paired,
    ),
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _require_matplotlib() -> None:
    """Import matplotlib's Agg canvas or raise ImportError with the install hint."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise ImportError(MATPLOTLIB_HINT) from exc


def _figure(width: float = 9.5, height: float = 3.4, ncols: int = 1) -> tuple[Figure, Any]:
    """A Figure on its own Agg canvas (pyplot and the user's backend are not involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _finish(ax: Axes, ylabel: str, per_cycle: pd.DataFrame) -> None:
    """Cycle axis with integer ticks, y label, grid and legend."""
    from matplotlib.ticker import MaxNLocator

    label = "cycle" + (" (mean over ranks)" if _n_ranks(per_cycle) > 1 else "")
    cycles = pd.to_numeric(per_cycle.get("cycle", pd.Series(dtype="float64")), errors="coerce").dropna().unique()
    if len(cycles) > 1 and cycles.max() - cycles.min() + 1 > len(cycles):
        # the watch's schedule skipped cycles: lines join recorded cycles across the gaps
        label += f"; {len(cycles)} recorded cycles (markers), lines cross the skipped ones"
    ax.set_xlabel(label)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _png(fig: Figure) -> str:
    """The figure as base64 PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cycle_series(per_cycle: pd.DataFrame, column: str) -> pd.Series:
    """``column`` per cycle (mean over ranks), finite values only, indexed by cycle."""
    if per_cycle.empty or column not in per_cycle or "cycle" not in per_cycle:
        return pd.Series(dtype="float64")
    values = pd.to_numeric(per_cycle[column], errors="coerce").astype("float64")
    cycles = pd.to_numeric(per_cycle["cycle"], errors="coerce")
    frame = pd.DataFrame({"cycle": cycles, "v": values}).dropna()
    series = frame.groupby(frame["cycle"].astype("int64"))["v"].mean()
    return series[np.isfinite(series.to_numpy())]


def _n_ranks(frame: pd.DataFrame) -> int:
    return int(frame["rank"].nunique()) if "rank" in frame and len(frame) else 1


def _finite(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Finite float values of ``column`` (empty when absent)."""
    if column not in frame:
        return np.empty(0)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    return values[np.isfinite(values)]


def _bool(series: pd.Series) -> pd.Series:
    """A nullable boolean column as plain bool (missing = False)."""
    return series.astype("boolean").fillna(False).astype(bool)


def _has_positive(matrix: pd.DataFrame) -> bool:
    data = matrix.to_numpy(dtype="float64")
    return bool((np.isfinite(data) & (data > 0)).any())


def _band(value: Any) -> tuple[float, float] | None:
    """``value`` as a (low, high) pair of finite numbers, or None when it is not one."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    lo, hi = _float(value[0]), _float(value[1])
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None


def _float(value: Any) -> float:
    """``value`` as float; NaN when it is None or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _num(value: Any) -> str:
    """4 significant digits, or a dash for None / NaN."""
    x = _float(value)
    return f"{x:.4g}" if np.isfinite(x) else _NA


def _int_or_na(value: Any) -> str:
    x = _float(value)
    return str(int(x)) if np.isfinite(x) else _NA


def _ranges(values: Any) -> str:
    """Cycles as compact ranges: [0, 1, 2, 5] -> '0–2, 5' (anything not a list of ints: '')."""
    if not isinstance(values, Iterable) or isinstance(values, str):
        return ""
    runs: list[list[int]] = []
    for n in sorted({int(v) for v in values}):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _cell(value: Any) -> str:
    if value is None:
        return _NA
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "×".join(map(str, value))
    return str(value)


def _dl(items: Sequence[tuple[str, Any]]) -> str:
    """A definition list; every value escaped."""
    rows = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(_NA if v is None or v == '' else v)}</dd>" for k, v in items
    )
    return f"<dl>{rows}</dl>"


def _e(value: Any) -> str:
    """HTML-escaped ``str(value)`` (quotes included)."""
    return html.escape(str(value), quote=True)


def _version() -> str:
    from . import __version__

    return __version__


_CSS = """
:root { --fg: #1d2430; --muted: #5b6676; --line: #d8dde5; --bg: #ffffff; --panel: #f6f8fa;
        --error: #c62828; --warning: #b26a00; --info: #1565c0; --ok: #2e7d32; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); max-width: 1240px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; padding-bottom: 3px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 14px 0 4px; text-transform: uppercase; letter-spacing: .04em; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       overflow-wrap: anywhere; }
table.diag td:first-child code { white-space: nowrap; }
.path { margin: 0 0 8px; color: var(--muted); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 6px 0; }
dt { color: var(--muted); } dd { margin: 0; }
.verdict { margin: 16px 0; padding: 10px 14px; border-radius: 6px; font-size: 16px; }
.verdict.ok { background: #e8f5e9; border-left: 6px solid var(--ok); }
.verdict.bad { background: #fdecea; border-left: 6px solid var(--error); }
.verdict span { color: var(--muted); font-size: 14px; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 10px; }
th, td { border: 1px solid var(--line); padding: 4px 7px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
table.diag td:nth-child(3), table.diag td:nth-child(4) { min-width: 260px; }
table.metrics { font-size: 12px; width: auto; }
table.metrics td { text-align: right; white-space: nowrap; }
.scroll { overflow-x: auto; }
h3.sev-error, tr.sev-error td:first-child { color: var(--error); }
h3.sev-warning, tr.sev-warning td:first-child { color: var(--warning); }
h3.sev-info, tr.sev-info td:first-child { color: var(--info); }
.rationale { background: var(--panel); padding: 8px 12px; border-radius: 4px; }
.caption, .note { color: var(--muted); margin: 2px 0 6px; }
.nodata { color: var(--muted); font-style: italic; padding: 10px; background: var(--panel); }
.plot img { max-width: 100%; height: auto; display: block; }
details summary { cursor: pointer; font-weight: 600; margin: 24px 0 6px; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
"""

__all__ = ["KL_BAND", "render_html", "write_html"]
