"""The self-contained HTML report (``Report.to_html``): built from real runs, every run string
escaped, and loaded in headless Chromium with no broken image and no console error."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Categorical

import ppo_probe
from ppo_probe.html import MATPLOTLIB_HINT, render_html
from zoo import MappoConfig, make_mappo_actors, run_case, train_mappo

PLOT_KEYS = ["kl", "clip", "entropy", "hist", "layers", "paired"]
HOSTILE_ACTOR = "<script>alert(1)</script>"
HOSTILE_DIR = "r<i>x&\"y'"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def no_config(tmp_path_factory):
    """An empty pyproject.toml: only the documented defaults are in force."""
    path = tmp_path_factory.mktemp("config") / "pyproject.toml"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def buggy(tmp_path_factory, no_config):
    """(report, html path) of the zoo's summed-loss trainer."""
    root = tmp_path_factory.mktemp("buggy")
    report = ppo_probe.analyze(run_case("sum_reduction", root / "run"), pyproject=no_config)
    return report, report.to_html(str(root / "report.html"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, no_config):
    """(report, html path) of a two-actor run whose directory and first actor carry markup; that
    actor is left out of the optimizer, so its parameter names reach a diagnostic's evidence."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = MappoConfig(cycles=2)
    actors = dict(zip([HOSTILE_ACTOR, "b&b"], make_mappo_actors(cfg).values()))
    optim = torch.optim.Adam(actors["b&b"].parameters(), lr=cfg.lr)
    with ppo_probe.watch(actors, optim, out=root / HOSTILE_DIR) as w:
        train_mappo(cfg, actors, optim)
    report = ppo_probe.analyze(w.path, pyproject=no_config)
    return report, report.to_html(root / "report.html")


def _sections(page: str) -> dict[str, str]:
    """Plot key -> the HTML of its section."""
    found = re.findall(r'<section class="plot" id="plot-([a-z]+)">(.*?)</section>', page, re.DOTALL)
    return dict(found)


def test_report_is_self_contained_with_every_plot(buggy):
    report, path = buggy
    assert isinstance(path, Path) and path.is_file()
    page = path.read_text(encoding="utf-8")
    sections = _sections(page)
    assert list(sections) == PLOT_KEYS
    for key, section in sections.items():
        images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', section)
        assert len(images) == 1, f"plot {key}: {section[:300]}"
        assert base64.b64decode(images[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert page.count("<img") == len(PLOT_KEYS)
    assert "loss-sum-reduction" in report.ids
    for row in report.diagnostics.itertuples():
        assert f"<code>{row.id}</code>" in page
        assert html.escape(row.evidence) in page
    assert html.escape(report.recommendation["rationale"]) in page
    assert "<script" not in page.lower()
    # nothing to fetch: every src / href is a data: URI
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    assert "per-cycle" in page and "kl_exact_end" in page


def test_report_without_update_rows_says_no_data(tmp_path, no_config):
    actor = nn.Linear(4, 3)
    optim = torch.optim.Adam(actor.parameters())
    # a rollout and no update at all
    with ppo_probe.watch(actor, optim, out=tmp_path / "run") as w, torch.no_grad():
        Categorical(logits=actor(torch.randn(16, 4))).sample()
    report = ppo_probe.analyze(w.path, pyproject=no_config)
    page = render_html(report)
    sections = _sections(page)
    assert list(sections) == PLOT_KEYS
    for key, section in sections.items():
        assert "<img" not in section and 'class="nodata"' in section, key
    assert "No recommendation" in page


def test_every_run_string_is_escaped(hostile):
    report, path = hostile
    page = path.read_text(encoding="utf-8")
    assert "actor-not-in-optimizer" in report.ids
    evidence = report.diagnostics.set_index("id").loc["actor-not-in-optimizer", "evidence"]
    assert HOSTILE_ACTOR in evidence  # the markup really is in the data...
    assert "<script" not in page.lower() and "<i>" not in page  # ...and never reaches the page raw
    assert html.escape(evidence) in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (Sequential)" in page  # the actors line
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.0.weight" in page  # the parameter table
    assert html.escape(str(report.run.path)) in page
    assert "r&lt;i&gt;x&amp;&quot;y&#x27;" in page


def test_missing_matplotlib_names_the_extra(buggy, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape(MATPLOTLIB_HINT)):
        render_html(buggy[0])


@pytest.mark.parametrize("case", ["buggy", "hostile"])
def test_report_renders_in_chromium(case, request):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is not installed")
    report, path = request.getfixturevalue(case)
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(path.resolve().as_uri())
        assert driver.title == f"ppo_probe report: {report.run.path}"
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth]);"
        )
        assert len(images) == len(PLOT_KEYS)
        assert all(complete and width > 0 for _, complete, width in images), images
        fetched = driver.execute_script("return performance.getEntriesByType('resource').length;")
        assert fetched == 0, "the report must not load anything"
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 - no script of the run's strings ran
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        shot = os.environ.get("PPO_PROBE_SCREENSHOT")
        if shot:
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(1400, height + 200)  # + the window frame
            target = Path(shot)
            target = target.with_name(f"{target.stem}-{case}{target.suffix or '.png'}")
            assert driver.save_screenshot(str(target))
    finally:
        driver.quit()


def test_plots_say_when_the_schedule_skipped_cycles():
    pytest.importorskip("matplotlib")
    import pandas as pd

    from ppo_probe import html as report_html

    labels = []
    for cycles in ([0, 1, 2], [0, 1, 20, 40]):
        _fig, ax = report_html._figure()
        ax.plot(cycles, [1.0] * len(cycles), label="x")
        report_html._finish(ax, "KL", pd.DataFrame({"cycle": cycles}))
        labels.append(ax.get_xlabel())
    assert labels[0] == "cycle"
    assert labels[1] == "cycle; 4 recorded cycles (markers), lines cross the skipped ones"
