"""Screenshots of the MLflow UI over a medti store, for the docs: what a user sees of medti's runs and models.

Starts ``mlflow server`` on 127.0.0.1 (a free port) over ``STORE/mlflow.db`` (artifacts: each experiment's own
location, ``file://.../mlartifacts/...`` as medti writes it; new ones under ``STORE/mlartifacts``), finds the pages
through the REST API (MlflowClient against that server), and photographs them with headless Chromium driven over
the DevTools protocol (the UI is a single-page app: each page is waited for until what it must show is there):

- ``runs.png``           the experiment's runs list, the pipeline's parent run expanded to its nested child runs
- ``run.png``            the parent run's page (overview: metrics, params, tags)
- ``run_table.png``      the parent run's ``table.md`` in the artifact viewer (when it has one)
- ``metric.png``         a training child run's metric chart (``loss``, else the first metric with 2+ points)
- ``run_metrics.png``    that run's page, Model metrics tab (a chart per metric)
- ``artifact_image.png`` an image artifact (``roc.png``, else a sample grid, else any PNG) in the artifact viewer
- ``artifact_grid.png``  a sample grid (``*samples*.png``, ``*grid*.png``) too, when the image above is not one
- ``models.png``         the registered models list
- ``model.png``          a registered model's page: its versions and their aliases
- ``model_version.png``  a model version's page (the champion's when there is one): aliases and tags

    python experiments/mlflow_ui_screenshots.py --store DIR --out DIR [--experiment NAME]

Prints each PNG's path and its URL, and why a page was left out (no table.md, no metric with two or more points,
no PNG artifact, no registered model). Exits non-zero (naming the page, with the text the page showed) when a page did not render
what it must, or a screenshot is blank. Needs a Chromium binary (``apt-get install chromium``; or set
``MEDTI_CHROMIUM``). The server and the browser are stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
# the test suite's helpers: servers.py (how the tests run mlflow), browser.py (headless Chromium over DevTools)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import Browser, BrowserError, find_chromium  # noqa: E402
from servers import free_port, running  # noqa: E402

WIDTH, HEIGHT, MAX_HEIGHT = 1600, 1000, 2400
# set in the page's localStorage before the UI loads: the classic-ML view of the UI (not the GenAI one), the
# MLflow Assistant's side panel closed (it opens itself on a first visit and takes a third of the width), and the
# Models page's "new Model Registry UI" promotion dismissed (a modal over the list on a first visit)
UI_PRESETS = {
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
    "_mlflow_model_registry_promo_modal_dismissed_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


class ScreenshotError(BrowserError):
    """A page did not render what it must, or its screenshot is blank (the browser's own errors are
    :class:`BrowserError`, which this is one of)."""


# ----------------------------------------------------------------------------- the server
@contextlib.contextmanager
def mlflow_server(store: Path, log_path: Path, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` over ``store/mlflow.db`` on 127.0.0.1; yields its URL once /health answers; stops it (its
    whole process group: mlflow runs uvicorn in a child)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{(store / 'mlflow.db').resolve()}",
            "--default-artifact-root", (store / "mlartifacts").resolve().as_uri()]
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner workers: nothing here uses them
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with contextlib.ExitStack() as stack:
        try:  # the test suite's server runner: PATH for uvicorn, one OpenMP thread, /health, whole-group stop
            stack.enter_context(running(args, f"{url}/health", log_path, env, timeout))
        except RuntimeError as e:
            raise ScreenshotError(str(e)) from None
        yield url


# ----------------------------------------------------------------------------- what to photograph
@dataclass
class Targets:
    experiment_id: str
    parent: object  # mlflow Run
    children: list = field(default_factory=list)
    table_md: str | None = None
    table_word: str | None = None  # a word of table.md, for its page to show
    train_run: object | None = None
    metric: str | None = None
    image_run: object | None = None
    image_path: str | None = None
    grid_run: object | None = None  # a sample grid, when the image above is not one
    grid_path: str | None = None
    model: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # why pages are left out


def _name(run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName", run.info.run_id)


def _artifacts(client, run_id: str, path: str | None = None, depth: int = 3) -> list[str]:
    """File paths among the run's artifacts, ``depth`` folders down."""
    out = []
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            if depth > 0:
                out += _artifacts(client, run_id, f.path, depth - 1)
        else:
            out.append(f.path)
    return out


def find_targets(client, experiment: str | None) -> Targets:
    """The experiment (by name, else the one whose latest run has children), its latest parent run (the pipeline's
    when medti tagged one), a training run with a metric history, an image artifact, and a registered model."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ScreenshotError(f"no experiment named {experiment!r} in this store")
        experiments = [exp]
    else:
        experiments = client.search_experiments()
    best = None
    for exp in experiments:
        runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
        candidates = [r for r in runs if r.info.run_id in parents]
        if not candidates:
            continue
        pipeline = [r for r in candidates if r.data.tags.get("medti.step") == "pipeline"]
        parent = (pipeline or candidates)[0]
        if best is None or parent.info.start_time > best[1].info.start_time:
            best = (exp, parent, runs)
    if best is None:
        raise ScreenshotError(f"no run with nested child runs in {experiment or 'any experiment'}")
    exp, parent, runs = best
    t = Targets(exp.experiment_id, parent)

    by_parent: dict[str, list] = {}
    for r in runs:
        by_parent.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    t.children = by_parent.get(parent.info.run_id, [])
    descendants, todo = [], list(t.children)
    while todo:
        r = todo.pop(0)
        descendants.append(r)
        todo += by_parent.get(r.info.run_id, [])

    t.table_md = next((p for p in _artifacts(client, parent.info.run_id) if Path(p).name == "table.md"), None)
    if t.table_md:  # read as the UI reads it
        query = urllib.parse.urlencode({"path": t.table_md, "run_uuid": parent.info.run_id})
        with urllib.request.urlopen(f"{client.tracking_uri}/get-artifact?{query}", timeout=60) as r:
            text = r.read().decode(errors="replace")
        word = re.search(r"[A-Za-z][A-Za-z0-9_.-]{2,}", text)
        t.table_word = word.group(0) if word else None

    def training_first(r) -> tuple[int, int]:
        name = _name(r).lower() + " " + r.data.tags.get("medti.step", "").lower()
        return (0 if "train" in name else 1, 0 if "embedding" in name else 1)

    for r in sorted(descendants, key=training_first):
        keys = sorted(r.data.metrics, key=lambda k: (k != "loss", k))
        for key in keys:
            if len(client.get_metric_history(r.info.run_id, key)) >= 2:
                t.train_run, t.metric = r, key
                break
        if t.train_run is not None:
            break

    def image_rank(path: str) -> int:
        name = Path(path).name.lower()
        return 0 if name == "roc.png" else 1 if ("grid" in name or "sample" in name) else 2

    images = []
    for r in [parent, *descendants]:
        images += [(image_rank(p), i, r, p) for i, p in enumerate(_artifacts(client, r.info.run_id))
                   if p.lower().endswith(".png")]
    if images:
        _, _, t.image_run, t.image_path = min(images, key=lambda x: (x[0], x[1]))
        grids = [x for x in images if x[0] == 1]
        if grids and image_rank(t.image_path) != 1:
            _, _, t.grid_run, t.grid_path = min(grids, key=lambda x: x[1])

    if t.table_md is None:
        t.missing.append(f"run_table.png: run {_name(parent)} has no table.md artifact")
    if t.train_run is None:
        t.missing.append("metric.png, run_metrics.png: no child run has a metric with two or more points (medti "
                         "reports the embedding loss every 25 steps)")
    if t.image_run is None:
        t.missing.append("artifact_image.png: no PNG artifact in the parent run or its children")
    models = client.search_registered_models()
    if models:  # the one whose versions carry the most aliases (champion and challenger), first by name on a tie
        m = min(models, key=lambda m: (-len(m.aliases or {}), m.name))
        t.model = m.name
        aliases = dict(m.aliases or {})
        if "champion" in aliases:
            t.version = str(aliases["champion"])
        elif aliases:
            t.version = str(next(iter(aliases.values())))
        else:
            versions = client.search_model_versions(f"name='{m.name}'")
            t.version = str(max(int(v.version) for v in versions)) if versions else None
        t.aliases = sorted(a for a, v in aliases.items() if str(v) == t.version)
    else:
        t.missing.append("models.png, model.png, model_version.png: no registered model")
    return t


# ----------------------------------------------------------------------------- the pages
def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _js(s: str) -> str:
    return json.dumps(s)


def _shows(*texts: str) -> str:
    """A predicate: the page's text holds every one of ``texts``."""
    body = "(document.body ? document.body.innerText : '')"
    return " && ".join(f"{body}.includes({_js(t)})" for t in texts) or "true"


def is_blank(path: Path) -> str | None:
    """Why the PNG at ``path`` looks blank (one colour, or next to nothing on it); None when it does not."""
    from PIL import Image, ImageStat

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 16)
        if colours is not None and len(colours) < 8:
            return f"{len(colours)} colour(s)"
        gray = rgb.convert("L")
        if ImageStat.Stat(gray).stddev[0] < 2.0:
            return f"almost uniform (luminance stddev {ImageStat.Stat(gray).stddev[0]:.2f})"
        background = max(colours, key=lambda c: c[0])[0] if colours else 0
        if colours is not None and background > 0.995 * rgb.width * rgb.height:
            return "over 99.5 % one colour"
    return None


@dataclass
class Page:
    file: str
    url: str
    ready: str  # JS predicate: the page shows what it must
    what: str
    action: Callable[[Browser, float], None] | None = None  # run once ready (e.g. expand a row)
    fit: bool = False  # grow the viewport (up to MAX_HEIGHT) until the page's scrolled content fits


def pages(base: str, t: Targets) -> list[Page]:
    e, pid = t.experiment_id, t.parent.info.run_id
    parent_name = _name(t.parent)
    out = []
    loaded_image = ("[...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0 && "
                    "(i.src.includes('artifact') || i.src.startsWith('blob:')))")
    child_names = [_name(c) for c in t.children][:3]
    out.append(Page("runs.png", f"{base}/#/experiments/{e}/runs", _shows(parent_name) + " && "
                    "document.querySelectorAll('[role=row]').length > 1", "the runs list with the parent run",
                    lambda b, timeout: expand_parent(b, pid, child_names, timeout)))
    metric_names = sorted(t.parent.data.metrics)[:3]
    out.append(Page("run.png", f"{base}/#/experiments/{e}/runs/{pid}", _shows(parent_name, *metric_names),
                    "the parent run's page with its metrics", fit=True))
    if t.table_md:
        out.append(Page("run_table.png", f"{base}/#/experiments/{e}/runs/{pid}/artifacts/{t.table_md}",
                        _shows(parent_name, Path(t.table_md).name, *([t.table_word] if t.table_word else [])),
                        "table.md in the artifact viewer"))
    if t.train_run is not None:
        rid = t.train_run.info.run_id
        runs, exps = json.dumps([rid]), json.dumps([e])
        metric = json.dumps(t.metric)
        query = (f"?runs={_q(runs)}&metric={_q(metric)}&experiments={_q(exps)}"
                 f"&plot_metric_keys={_q(json.dumps([t.metric]))}&plot_layout={_q('{}')}&x_axis=step"
                 "&y_axis_scale=linear&line_smoothness=1&show_point=true&deselected_curves=%5B%5D"
                 "&last_linear_y_axis_range=%5B%5D")
        out.append(Page("metric.png", f"{base}/#/metric{query}",
                        _shows(t.metric) + " && document.querySelectorAll('.js-plotly-plot, canvas, svg').length > 0",
                        f"the {t.metric} chart of {_name(t.train_run)}"))
        out.append(Page("run_metrics.png", f"{base}/#/experiments/{e}/runs/{rid}/model-metrics",
                        _shows(t.metric) + " && document.querySelectorAll('.js-plotly-plot, canvas, svg').length > 0",
                        f"the model metrics tab of {_name(t.train_run)}"))
    if t.image_run is not None:
        rid = t.image_run.info.run_id
        out.append(Page("artifact_image.png", f"{base}/#/experiments/{e}/runs/{rid}/artifacts/{t.image_path}",
                        loaded_image,
                        f"{t.image_path} of {_name(t.image_run)} in the artifact viewer"))
    if t.grid_run is not None:
        rid = t.grid_run.info.run_id
        out.append(Page("artifact_grid.png", f"{base}/#/experiments/{e}/runs/{rid}/artifacts/{t.grid_path}",
                        loaded_image, f"{t.grid_path} of {_name(t.grid_run)} in the artifact viewer"))
    if t.model:
        out.append(Page("models.png", f"{base}/#/models", _shows(t.model), "the registered models list"))
        out.append(Page("model.png", f"{base}/#/models/{_q(t.model)}", _shows(t.model, *t.aliases),
                        f"registered model {t.model}", fit=True))
        if t.version:
            out.append(Page("model_version.png", f"{base}/#/models/{_q(t.model)}/versions/{t.version}",
                            _shows(t.model, f"Version {t.version}", *t.aliases),
                            f"{t.model} version {t.version}"))
    return out


def expand_parent(browser: Browser, pid: str, child_names: list[str], timeout: float) -> None:
    """On the runs list: click the parent run's expander (the button in the name cell of the row that links to its
    page), wait for its children to show, and widen the Run Name column so that their names are not cut."""
    clicked = browser.eval(
        "(() => {const a = [...document.querySelectorAll('a')].find(x => (x.getAttribute('href') || '')"
        f".endsWith('/runs/{pid}'));"
        " const row = a && a.closest('[role=row]'); const b = row && row.querySelector('button');"
        " if (!b) return false; b.click(); return true;})()")
    if not clicked:
        raise ScreenshotError(f"the runs list has no expander on the row of run {pid}; the page showed:\n"
                              f"{browser.text()[:1500]}")
    browser.wait_for(_shows(*child_names), timeout, "the parent run's child runs under it")
    widest = browser.eval(  # how much the longest run name is cut by
        "Math.max(0, ...[...document.querySelectorAll('[col-id=\"attributes.`Run Name`\"] a span')]"
        ".map(x => x.scrollWidth - x.clientWidth))") or 0
    # the column's resize handle, at a point where it is on top (its right half lies under the next header)
    handle = browser.eval(
        "(() => {const h = [...document.querySelectorAll('.ag-header-cell')].find(x => "
        "(x.getAttribute('col-id') || '').includes('Run Name'));"
        " const r = h && h.querySelector('.ag-header-cell-resize'); if (!r) return null;"
        " const b = r.getBoundingClientRect(); const x = b.x + Math.min(1.5, b.width / 4), y = b.y + b.height / 2;"
        " return document.elementFromPoint(x, y) === r ? [x, y] : null;})()")
    if widest > 0 and handle:  # cosmetic: without it the names are cut, the page is still right
        browser.drag(handle[0], handle[1], min(float(widest) + 24, 400.0))


# how far below the bottom of the app's main scrolling boxes (those over half the window high) the lowest visible
# leaf element that shows text or a picture lies: by that much the window must grow to show it all (a box's scrollHeight counts padding too)
FIT_JS = """(() => {
  let hidden = 0;
  for (const box of document.querySelectorAll('*')) {
    if (!/(auto|scroll)/.test(getComputedStyle(box).overflowY) || box.clientHeight <= innerHeight / 2
        || box.scrollHeight <= box.clientHeight) continue;
    const limit = box.getBoundingClientRect().bottom;
    for (const el of box.querySelectorAll('*')) {
      if (el.children.length || !(el.textContent.trim() || /^(img|canvas|input|textarea|path|rect|circle)$/i
          .test(el.tagName))) continue;  // leaves that show something (not the spacers some pages end with)
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden')
        hidden = Math.max(hidden, r.bottom - limit);
    }
  }
  return hidden;
})()"""


def shoot(browser: Browser, page: Page, out: Path, timeout: float, settle: float) -> Path:
    path = out / page.file
    browser.resize(WIDTH, HEIGHT)
    browser.goto(page.url)
    try:
        browser.wait_for(page.ready, timeout, page.what)
        if page.action:
            page.action(browser, timeout)
        if page.fit:
            time.sleep(settle)  # late sections first
            hidden = browser.eval(FIT_JS) or 0
            if hidden > 0:
                browser.resize(WIDTH, min(HEIGHT + int(hidden) + 24, MAX_HEIGHT))
        time.sleep(settle)  # charts animate, images decode, late requests land
    except BrowserError:
        browser.screenshot(out / f"FAILED-{page.file}")
        raise
    browser.screenshot(path)
    why = is_blank(path)
    if why:
        raise ScreenshotError(f"{path} ({page.what}) is blank: {why}")
    return path


def take(store: Path, out: Path, experiment: str | None = None, *, chromium: str | None = None,
         timeout: float = 90.0, settle: float = 2.0, log=print) -> list[Path]:
    """Photograph the UI pages over ``store`` into ``out``; returns the PNGs' paths."""
    from mlflow import MlflowClient

    store, out = Path(store).resolve(), Path(out).resolve()
    if not (store / "mlflow.db").is_file():
        raise ScreenshotError(f"no mlflow.db in {store}")
    binary = chromium or find_chromium()
    if binary is None:
        raise ScreenshotError("no Chromium binary found (apt-get install chromium, or set MEDTI_CHROMIUM)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("FAILED-*.png"):
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="medti-ui-") as tmp, \
            mlflow_server(store, Path(tmp) / "mlflow-server.log") as url:  # its log's tail is in any start error
        targets = find_targets(MlflowClient(tracking_uri=url, registry_uri=url), experiment)
        for why in targets.missing:
            log(f"left out: {why}")
        browser = Browser(binary, Path(tmp), WIDTH, HEIGHT, local_storage=UI_PRESETS)
        try:
            shots = []
            for page in pages(url, targets):
                shots.append(shoot(browser, page, out, timeout, settle))
                log(f"{shots[-1]}  {page.url.replace(url, '')}")
            return shots
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="the dir holding mlflow.db (and mlartifacts/)")
    ap.add_argument("--out", type=Path, required=True, help="where the PNGs go")
    ap.add_argument("--experiment", default=None, help="experiment name (default: the one with the latest "
                                                       "parent run)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds a page may take to render")
    args = ap.parse_args(argv)
    return take(args.store, args.out, args.experiment, timeout=args.timeout)


if __name__ == "__main__":
    try:
        main()
    except BrowserError as exc:
        sys.exit(f"mlflow_ui_screenshots: {exc}")
