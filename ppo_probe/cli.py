"""The ``ppo-probe`` command line.

``report RUN [--html FILE]``   the terminal summary (and a self-contained HTML report)
``check RUN``                  exit 0 healthy, 1 findings at or above ``--fail-on``, 2 unreadable input
                               or nothing to check (no update-phase log-prob row recorded)
``run SCRIPT|-m MODULE ...``   run an unchanged training script under an automatic watch, then check it

Settings come from ``[tool.ppo_probe]`` of the nearest pyproject.toml (target_kl, bands, fail_on,
ignore, ...); flags override them.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .analysis.config import SEVERITIES, find_pyproject, read_table
from .analysis.report import Report, analyze, schedule_text
from .errors import RunFormatError
from .watch import LR_SWEEP_MAX, watch

EXIT_OK, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2
_RANK = {severity: rank for rank, severity in enumerate(reversed(SEVERITIES))}  # info 0 < warning 1 < error 2


class UsageError(Exception):
    """A bad flag or setting: one line on stderr, exit 2."""


class StopTraining(BaseException):
    """Raised from an optimizer step hook to end a script after ``--max-steps`` steps. A
    BaseException so that a trainer's ``except Exception`` does not swallow it."""


# ------------------------------------------------------------------------------------ parser


def _analysis_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-kl", type=float, default=None,
                        help="per-cycle KL to aim at (default: [tool.ppo_probe] target_kl, else 0.02)")
    parser.add_argument("--clip-coef", type=float, default=None,
                        help="PPO's eps (default: [tool.ppo_probe] clip_coef, else inferred from the run)")
    parser.add_argument("--ignore", action="append", default=None, metavar="ID",
                        help="a diagnostic id not to report; repeat for more (replaces [tool.ppo_probe] ignore)")
    parser.add_argument("--previous", default=None, metavar="RUN",
                        help="an earlier run of the same trainer at another lr: the lr recommendation "
                             "reads the KL's slope in the lr from the two runs")


def _gate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fail-on", choices=("error", "warning", "info"), default=None,
                        help="lowest severity that fails (default: [tool.ppo_probe] fail_on, else error)")
    parser.add_argument("--format", choices=("text", "json"), default="text", dest="fmt",
                        help="text for people, json for tools")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppo-probe", description="Find what is silently wrong in a PPO training run."
    )
    parser.add_argument("--version", action="version", version=f"ppo-probe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{report,check,run}")

    report = commands.add_parser("report", help="diagnostics, per-cycle metrics and the recommendation")
    report.add_argument("run", help="run directory written by ppo_probe.watch")
    report.add_argument("--html", type=Path, default=None, metavar="FILE",
                        help="also write a self-contained HTML report with plots")
    _analysis_flags(report)

    check = commands.add_parser("check", help="exit 1 when the run has findings at or above --fail-on")
    check.add_argument("run", help="run directory written by ppo_probe.watch")
    _analysis_flags(check)
    _gate_flags(check)

    run = commands.add_parser(
        "run", help="run a training script under the probe, then check the run",
        description="Run an unchanged training script in this process under an automatic "
        "ppo_probe.watch (every Categorical and optimizer), stop it after --max-steps optimizer "
        "steps when asked, then check the run and exit as `check` does.",
    )
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (default: a temporary one, removed when the check passes)")
    run.add_argument("--max-steps", type=int, default=None, metavar="N",
                     help="stop the script cleanly after N optimizer steps (any optimizer)")
    run.add_argument("--every", type=int, default=20, metavar="N",
                     help="record cycles 0-7, then every N-th (default 20; 1 records every cycle)")
    run.add_argument("--lr-sweep", type=float, default=None, metavar="F",
                     help="an lr range test: each cycle's lr is F x the one before (1.7 spans 300x "
                     "over 12 cycles); every cycle is recorded and the lr where the KL crosses the "
                     "target is printed. Changes the training on purpose")
    _analysis_flags(run)
    _gate_flags(run)
    run.add_argument("-m", dest="module", nargs=argparse.REMAINDER, default=None, metavar="MODULE ARGS",
                     help="run a module as python -m does, with its arguments (last on the line)")
    run.add_argument("script", nargs=argparse.REMAINDER, metavar="SCRIPT ARGS",
                     help="the training script and its arguments (last on the line)")
    return parser


# ------------------------------------------------------------------------------------ shared


def _settings_table() -> dict[str, Any]:
    return read_table(find_pyproject())


def _fail_on(args: argparse.Namespace, table: dict[str, Any]) -> str:
    value = args.fail_on or table.get("fail_on", "error")
    if value not in SEVERITIES:
        raise UsageError(f"fail_on must be one of {', '.join(SEVERITIES)}, got {value!r} ([tool.ppo_probe])")
    return value


def _analyze(path: str | os.PathLike[str], args: argparse.Namespace) -> Report:
    with _status(f"analyzing {path}"):
        return analyze(path, target_kl=args.target_kl, clip_coef=args.clip_coef, ignore=args.ignore,
                       previous=args.previous)


def _failing(report: Report, fail_on: str) -> list[str]:
    d = report.diagnostics
    return [i for i, s in zip(d["id"], d["severity"]) if _RANK[s] >= _RANK[fail_on]]


def _tty() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _status(message: str) -> Iterator[None]:
    """A spinner on stderr when it is a terminal; nothing otherwise."""
    if not _tty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def _console() -> Any:
    from rich.console import Console

    # piped output is not squeezed to rich's default 80 columns
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


# ------------------------------------------------------------------------------------ report


_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_CYCLE_COLUMNS = ["cycle", "n_steps", "paired_rows", "match_rate", "kl_k3", "kl_exact_end", "clip_fraction",
                  "entropy_norm_mean", "adv_eff_std_mean", "lr"]  # fmt: skip


def print_report(report: Report) -> None:
    """The terminal summary: verdict, findings by severity with evidence and fix, per-cycle
    metrics, the recommendation."""
    from rich.table import Table
    from rich.text import Text

    console = _console()
    run = report.run
    verdict = Text()
    verdict.append(f"{run.path}\n", style="bold")
    empty = report.nothing_to_check
    paired = f"paired {report.paired_fraction:.1%} of {len(run.pairs)} update rows" if len(run.pairs) else "no update rows"
    verdict.append(f"{paired}; "
                   f"{len(report.per_cycle)} cycles, {len(report.per_step)} optimizer steps"
                   + (f" over {len(report.per_rank)} ranks" if len(report.per_rank) > 1 else "") + "; "
                   f"target KL {report.settings['target_kl']}, clip eps {report.settings['clip_coef']:g} "
                   f"({report.settings['clip_coef_source']})\n")
    schedule = schedule_text(run.meta)
    if schedule:
        verdict.append(schedule + "\n")
    counts = report.diagnostics["severity"].value_counts()
    if empty:
        verdict.append(f"nothing to check: {empty}\n", style="bold yellow")
    if report.diagnostics.empty:
        verdict.append("no findings", style="bold" if empty else "bold green")
    else:
        verdict.append(", ".join(f"{counts[s]} {s}{'s' if counts[s] > 1 else ''}"
                                 for s in SEVERITIES if s in counts), style="bold")
    console.print(verdict)
    for severity in SEVERITIES:
        rows = report.diagnostics[report.diagnostics["severity"] == severity]
        for _, d in rows.iterrows():
            console.print(Text.assemble((f"\n{severity:<8}", _STYLE[severity]), (d["id"], "bold"),
                                        f"  {d['title']}"))
            console.print(Text(f"  evidence: {d['evidence']}"), soft_wrap=True)
            console.print(Text(f"  fix:      {d['fix']}"), soft_wrap=True)
    ranks = report.per_rank
    several = len(ranks) > 1
    if several:  # torch.distributed: a rank that pairs nothing or drifts stands out here
        table = Table(title="per rank", title_justify="left", box=None, pad_edge=False)
        for column in ranks.columns:
            table.add_column(column, justify="right")
        for _, row in ranks.iterrows():
            table.add_row(*(_cell(row[c]) for c in ranks.columns))
        console.print()
        console.print(table)
    pc = report.per_cycle
    if len(pc):
        table = Table(title="per cycle", title_justify="left", box=None, pad_edge=False)
        columns = (["rank"] if several else []) + [c for c in _CYCLE_COLUMNS if c in pc.columns]
        for column in columns:
            table.add_column(column, justify="right")
        for _, row in pc.iterrows():
            table.add_row(*(_cell(row[c]) for c in columns))
        console.print()
        console.print(table)
    rec = report.recommendation
    if rec:
        console.print()
        console.print(Text.assemble(("recommendation: ", "bold"),
                                    f"lr {_cell(rec['lr'])} (x {rec['lr_multiplier']:.3g}), "
                                    f"advantage scale x {_cell(rec['adv_scale'])}"))
        console.print(Text(rec["rationale"]), soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.4g}"
    return str(value)


# ------------------------------------------------------------------------------------ check


def _emit_check(
    report: Report, fail_on: str, fmt: str, extra: dict[str, Any] | None = None, crashed: bool = False
) -> int:
    """Print the check's verdict; its exit code: 1 for findings at or above ``fail_on`` or a
    crashed script (``run``), else 2 when the run holds nothing to check, else 0."""
    failing = _failing(report, fail_on)
    empty = report.nothing_to_check
    code = EXIT_FINDINGS if failing or crashed else (EXIT_UNREADABLE if empty else EXIT_OK)
    if fmt == "json":
        doc = {"exit_code": code, "fail_on": fail_on, "failing": failing, **(extra or {}), **report.to_dict()}
        print(json.dumps(doc, default=str))
        return code
    d = report.diagnostics
    for _, row in d.iterrows():
        mark = "FAIL" if _RANK[row["severity"]] >= _RANK[fail_on] else "    "
        print(f"{mark} {row['severity']:<8} {row['id']}: {row['title']}")
        print(f"       evidence: {row['evidence']}")
        print(f"       fix: {row['fix']}")
    summary = f"{report.run.path}: {len(d)} finding{'s' if len(d) != 1 else ''}"
    if failing:
        summary += f", {len(failing)} at or above {fail_on}: {', '.join(failing)}"
    elif empty:
        summary += f", none at or above {fail_on}, but nothing to check"
    else:
        summary += f", none at or above {fail_on}: ok"
    print(summary)
    if empty and not failing:
        print(f"ppo-probe: nothing to check in {report.run.path}: {empty}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------ run


@contextmanager
def _script_context(argv0: str, argv: list[str], path0: str, env: dict[str, str]) -> Iterator[None]:
    """sys.argv, sys.path[0] and environment variables as ``python SCRIPT ARGS`` would have them,
    restored afterwards."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_env = {k: os.environ.get(k) for k in env}
    sys.argv = [argv0, *argv]
    sys.path.insert(0, path0)
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _step_limit(max_steps: int | None) -> Iterator[list[int]]:
    """Count every optimizer step (a global post-step hook); raise StopTraining after the last."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    count = [0]
    show = _tty()
    console = None
    if show:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        count[0] += 1
        if console is not None and (count[0] % 10 == 0 or count[0] == max_steps):
            total = f"/{max_steps}" if max_steps else ""
            console.print(f"ppo-probe: optimizer step {count[0]}{total}", end="\r")
        if max_steps is not None and count[0] >= max_steps:
            raise StopTraining(count[0])

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield count
    finally:
        handle.remove()
        if console is not None:
            console.print()


def _run(args: argparse.Namespace) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")
    if args.lr_sweep is not None and not 1.0 < args.lr_sweep <= LR_SWEEP_MAX:
        # checked here too: inside the script's context a ValueError would read as the script's
        raise UsageError(f"--lr-sweep must be in (1, {LR_SWEEP_MAX:g}], got {args.lr_sweep}")
    if bool(args.module) == bool(args.script):
        raise UsageError("run needs exactly one of SCRIPT [ARGS...] or -m MODULE [ARGS...]")
    module, script, script_args = None, None, []
    if args.module:
        module, *script_args = args.module
    else:
        script, *script_args = args.script
        script = Path(script)
        if not script.is_file():
            raise UsageError(f"no such script: {script}")
    table = _settings_table()
    fail_on = _fail_on(args, table)
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="ppo-probe-run-")) / "run" if temporary else args.out
    # Watches the script opens itself (nested) write beside ours, not into the user's tree.
    env = {"PPO_PROBE_DIR": str(out.parent / f"{out.name}-script-runs")}
    if module is not None:
        context = _script_context(module, script_args, os.getcwd(), env)
    else:
        assert script is not None  # exactly one of module and script (checked above)
        context = _script_context(str(script), script_args, str(script.resolve().parent), env)
    outcome = "completed"
    crashed = False
    steps = [0]
    with context:
        try:
            # the step limit's hook goes in after the watch's, so the last step is still recorded
            probe = watch(out=out, overwrite=True, every=args.every, lr_sweep=args.lr_sweep)
            with probe, _step_limit(args.max_steps) as steps:
                if module is not None:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(script), run_name="__main__")
        except StopTraining:
            outcome = f"stopped after {steps[0]} optimizer steps (--max-steps)"
        except SystemExit as exc:
            if exc.code not in (None, 0):
                crashed = True
                outcome = f"the script exited with status {exc.code}"
        except Exception:  # noqa: BLE001 - the user's own error: show it, then check what was written
            crashed = True
            traceback.print_exc()
            outcome = "the script raised (traceback above)"
    print(f"ppo-probe: {outcome}; run written to {out}", file=sys.stderr)
    report = _analyze(out, args)
    code = _emit_check(report, fail_on, args.fmt, {"script_outcome": outcome, "script_failed": crashed}, crashed)
    if args.lr_sweep is not None and args.fmt != "json":
        rec = report.recommendation
        if rec and rec.get("lr") is not None:
            print(f"lr sweep: recommended lr {rec['lr']:.3g}: {rec['rationale']}")
        else:
            print("lr sweep: no recommendation (no cycle with paired update rows and a positive KL)")
    if temporary and code == EXIT_OK:
        shutil.rmtree(out.parent, ignore_errors=True)
    elif temporary:
        print(f"ppo-probe: kept {out} for inspection (ppo-probe report {out})", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            report = _analyze(args.run, args)
            print_report(report)
            if args.html is not None:
                with _status(f"writing {args.html}"):
                    written = report.to_html(args.html)
                print(f"HTML report: {written}")
            return EXIT_OK
        if args.command == "check":
            fail_on = _fail_on(args, _settings_table())
            return _emit_check(_analyze(args.run, args), fail_on, args.fmt)
        if args.command == "run":
            return _run(args)
    except (RunFormatError, ValueError, UsageError, ImportError, OSError) as exc:
        print(f"ppo-probe: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
