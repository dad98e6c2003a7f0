#!/usr/bin/env python3
"""Rendering benchmark: Cloud PACS beside Orthanc's /instances/{id}/rendered, in one run.

What it does (everything on loopback):

1. makes (once) a 300-slice 512x512 CT with the shared harness's
   ``make_series.py`` in ``$BENCH_HOME/data/ct300``;
2. starts a throw-away Orthanc (shared ``orthanc_up.sh``; ports from
   ``ORTHANC_HTTP_PORT``/``ORTHANC_DICOM_PORT``) and uploads the series;
3. prepares a fresh Cloud PACS data dir (SQLite unless ``DATABASE_URL`` is
   set), ingests the series through ``archive.ingest.store_instance``,
   creates a reader with a bearer token, and starts uvicorn;
4. measures, serially over keep-alive HTTP (Accept-Encoding: identity):
   - cold render of 100 distinct slices to JPEG q90 at the file's window:
     Orthanc ``/instances/{id}/rendered?quality=90`` and ours
     (``/dicomweb/.../frames/1/rendered?quality=90``) alternating slice by
     slice, ours on a just-started server with empty caches, ``--rounds``
     times; the p50 ratio ours/Orthanc over all rounds and per round;
   - bytes: our JPEG q90 mean over the raw instance mean;
   - first sagittal MPR image on a just-started server (3 restarts, median)
     and warm sagittal images (other positions, volume cached);
   - warm frame renders (series volume decoded, new window so no rendered
     image is cached) and rendered-cache hits;
   - browser scrolling in headless Chromium (Playwright): the viewer page
     with the series loaded, one wheel step per animation frame through all
     300 slices, frames drawn per second; and the same right after opening,
     before the series has finished loading.

Prints ``key=value`` lines and writes them to
``$BENCH_HOME/results/render-<time>.txt``; the figures, every run's timings,
the machine, its load average and the versions go to
``bench/results/render_bench.json`` (committed; the README quotes it). An
already-rendered frame's server time is read from our ``Server-Timing``
header (arrival in the application to the response head).

    BENCH_HOME=/tmp/bench-me ORTHANC_HTTP_PORT=18242 ORTHANC_DICOM_PORT=12242 \\
        .venv/bin/python bench/render_bench.py [--port 18300] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", "/work/shared/bench"))
PY = sys.executable
USERNAME = "bench-reader"
PASSWORD = "bench-reader-password"  # noqa: S105 - a throw-away account in a throw-away database
LINES: list[str] = []
RESULTS: dict = {"figures": {}, "runs": {}}


def out(key: str, value: object) -> None:
    RESULTS["figures"][key] = round(value, 3) if isinstance(value, float) else value
    if isinstance(value, float):
        value = f"{value:.3f}"
    line = f"{key}={value}"
    LINES.append(line)
    print(line, flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(prefix: str, ms: list[float]) -> float:
    RESULTS["runs"][prefix] = [round(v, 3) for v in ms]
    out(f"{prefix}.n", len(ms))
    out(f"{prefix}.median_ms", statistics.median(ms))
    out(f"{prefix}.p95_ms", pct(ms, 95))
    out(f"{prefix}.min_ms", min(ms))
    return statistics.median(ms)


def timed_get(session: requests.Session, url: str, **kwargs) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = session.get(url, **kwargs)
    _ = response.content
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response


def server_time(response: requests.Response) -> float | None:
    """Our ``Server-Timing: app;dur=<ms>``: arrival in the application to the response head."""
    timing = response.headers.get("Server-Timing", "")
    return float(timing.split("dur=")[1].split(";")[0].split(",")[0]) if "dur=" in timing else None


# Set-up -------------------------------------------------------------------------


def bench_home() -> Path:
    home = Path(os.environ.get("BENCH_HOME") or (Path.home() / ".cache" / "pacs-bench"))
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "results").mkdir(parents=True, exist_ok=True)
    return home


def ensure_series(home: Path) -> dict:
    folder = home / "data" / "ct300"
    manifest = folder / "manifest.json"
    if not manifest.exists():
        subprocess.run(
            [PY, str(SHARED / "make_series.py"), str(folder), "--patient-id", "RENDERBENCH", "--accession", "RB0001"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return json.loads(manifest.read_text())


def orthanc_env(home: Path) -> dict:
    env = dict(os.environ)
    env["BENCH_HOME"] = str(home)
    env["STATE"] = str(home / "data" / "orthanc-render.env")
    env.setdefault("ORTHANC_TCP_NODELAY", "1")
    return env


def start_orthanc(home: Path) -> str:
    subprocess.run([str(SHARED / "orthanc_up.sh")], check=True, env=orthanc_env(home), stdout=subprocess.DEVNULL)
    state = dict(
        line.split("=", 1) for line in (home / "data" / "orthanc-render.env").read_text().splitlines() if "=" in line
    )
    return state["ORTHANC_HTTP"]


def stop_orthanc(home: Path) -> None:
    subprocess.run([str(SHARED / "orthanc_down.sh")], env=orthanc_env(home), stdout=subprocess.DEVNULL, check=False)


def upload_to_orthanc(base: str, folder: Path, manifest: dict) -> dict[str, str]:
    session = requests.Session()
    ids = {}
    for entry in manifest["series"][0]["instances"]:
        data = (folder / entry["file"]).read_bytes()
        response = session.post(f"{base}/instances", data=data, headers={"Content-Type": "application/dicom"})
        response.raise_for_status()
        ids[entry["sop"]] = response.json()["ID"]
    return ids


def our_env(home: Path) -> dict:
    env = dict(os.environ)
    env["PACS_DATA_DIR"] = str(home / "pacs")
    env.pop("REDIS_URL", None)  # each start begins with an empty (per-process) render cache
    env["DJANGO_SETTINGS_MODULE"] = "pacs_cloud.settings"
    return env


PREPARE = """
import json, sys
from pathlib import Path
import django
django.setup()
from archive.ingest import store_instance
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import Institution, Membership, Role, User
folder, username, password = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
manifest = json.loads((folder / "manifest.json").read_text())
inst, _ = Institution.objects.get_or_create(slug="bench", defaults=dict(
    name="Bench Hospital", accession_prefix="BEN", patient_id_issuer="BENCH"))
user = User.objects.filter(username=username).first() or User.objects.create_user(username, password=password)
Membership.objects.get_or_create(user=user, institution=inst, role=Role.RADIOLOGIST)
for entry in manifest["series"][0]["instances"]:
    store_instance(folder / entry["file"], institution=inst)
from archive.models import Study
study = Study.objects.get(institution=inst, study_instance_uid=manifest["study_uid"])
series = study.series.get(series_instance_uid=manifest["series"][0]["uid"])
_, key = issue_token(user, name="bench", ttl_hours=6)
print(json.dumps({"token": key, "study": str(study.pk), "series": str(series.pk)}))
"""


def prepare_ours(home: Path, folder: Path) -> dict:
    data_dir = home / "pacs"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    env = our_env(home)
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
    result = subprocess.run(
        [PY, "-c", PREPARE, str(folder), USERNAME, PASSWORD],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


class OurServer:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "uvicorn"),
                "pacs_cloud.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=our_env(self.home),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code in (200, 503):
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("our server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


# Measurements ---------------------------------------------------------------------


def frame_url(base: str, manifest: dict, sop: str, query: str) -> str:
    series = manifest["series"][0]["uid"]
    return f"{base}/dicomweb/studies/{manifest['study_uid']}/series/{series}/instances/{sop}/frames/1/rendered?{query}"


def measure_http(args, home: Path, manifest: dict, orthanc: str, ids: dict, ours: OurServer, ctx: dict) -> None:
    instances = manifest["series"][0]["instances"]
    step = max(1, len(instances) // args.n)
    pick = instances[::step][: args.n]
    raw_mean = statistics.mean(e["size"] for e in pick)
    out("render.method", "serial keep-alive GETs, Accept-Encoding identity; distinct slices; full response time")
    out("render.slices", len(pick))
    out("render.raw_instance_bytes_mean", raw_mean)

    orthanc_session = requests.Session()
    orthanc_session.headers.update({"Accept": "image/jpeg", "Accept-Encoding": "identity"})
    session = requests.Session()
    session.headers.update(
        {"Accept": "image/jpeg", "Accept-Encoding": "identity", "Authorization": f"Bearer {ctx['token']}"}
    )

    # Warm both servers' code paths (imports, codecs, JIT of nothing) on a slice not measured.
    spare = instances[1]["sop"]
    timed_get(orthanc_session, f"{orthanc}/instances/{ids[spare]}/rendered?quality=90")
    timed_get(session, frame_url(ours.base, manifest, spare, "quality=90&window=10,10"))

    # Cold: Orthanc and ours alternate slice by slice, so both see the same
    # moment of a shared machine's load; each round starts our server afresh.
    orthanc_ms, ours_ms, sizes, rounds, cold_server = [], [], [], [], []
    for number in range(args.rounds):
        if number:
            ours.restart()
            timed_get(session, frame_url(ours.base, manifest, spare, "quality=90&window=10,10"))
        round_orthanc, round_ours = [], []
        for e in pick:
            ms_orthanc, _ = timed_get(orthanc_session, f"{orthanc}/instances/{ids[e['sop']]}/rendered?quality=90")
            ms, response = timed_get(session, frame_url(ours.base, manifest, e["sop"], "quality=90"))
            assert response.headers["Content-Type"] == "image/jpeg"
            round_orthanc.append(ms_orthanc)
            round_ours.append(ms)
            cold_server.append(server_time(response))
            sizes.append(len(response.content))
        orthanc_ms += round_orthanc
        ours_ms += round_ours
        rounds.append(statistics.median(round_ours) / statistics.median(round_orthanc))
    out("render.cold_rounds", args.rounds)
    out("render.cold_p50_ratio_per_round", ",".join(f"{r:.2f}" for r in rounds))
    orthanc_p50 = summary("render.orthanc_cold_jpeg_q90", orthanc_ms)
    ours_p50 = summary("render.ours_cold_jpeg_q90", ours_ms)
    out("render.cold_p50_ratio_ours_over_orthanc", ours_p50 / orthanc_p50)
    summary("render.ours_cold_server", [v for v in cold_server if v is not None])
    out("render.ours_jpeg_q90_bytes_mean", statistics.mean(sizes))
    out("render.ours_jpeg_q90_bytes_ratio_vs_raw", statistics.mean(sizes) / raw_mean)

    # Rendered-image cache hits: the same URLs again; the server's own time from Server-Timing.
    hits, server_ms = [], []
    for e in pick:
        ms, response = timed_get(session, frame_url(ours.base, manifest, e["sop"], "quality=90"))
        hits.append(ms)
        spent = server_time(response)
        if spent is not None:
            server_ms.append(spent)
    summary("render.ours_cached_image", hits)
    if server_ms:
        summary("render.ours_cached_image_server", server_ms)
    orthanc_again = [
        timed_get(orthanc_session, f"{orthanc}/instances/{ids[e['sop']]}/rendered?quality=90")[0] for e in pick
    ]
    summary("render.orthanc_again_jpeg_q90", orthanc_again)

    # MPR: the first sagittal image on a just-started server, three times.
    mpr = f"{ours.base}/api/v1/viewer/series/{ctx['series']}/mpr/sagittal/{{index}}/?quality=90"
    firsts = []
    for _ in range(3):
        ours.restart()
        ms, response = timed_get(session, mpr.format(index=256))
        firsts.append(ms)
    out("mpr.first_sagittal_cold_ms_runs", ",".join(f"{v:.0f}" for v in firsts))
    out("mpr.first_sagittal_cold_median_ms", statistics.median(firsts))
    warm = [timed_get(session, mpr.format(index=index))[0] for index in range(100, 420, 16)]
    summary("mpr.sagittal_warm", warm)
    coronal = [
        timed_get(session, mpr.format(index=index).replace("sagittal", "coronal"))[0] for index in range(100, 420, 16)
    ]
    summary("mpr.coronal_warm", coronal)
    slab = [timed_get(session, mpr.format(index=index) + "&slab=10&mode=mip")[0] for index in range(100, 420, 32)]
    summary("mpr.sagittal_mip10mm_warm", slab)

    # Warm frames: the volume is decoded in this worker; a new window misses the image cache.
    warm_frames = [
        timed_get(session, frame_url(ours.base, manifest, e["sop"], "quality=90&window=-600,1500"))[0] for e in pick
    ]
    summary("render.ours_warm_volume_jpeg_q90", warm_frames)


SCROLL = """async ([steps]) => {
  const vp = window.pacsViewer.state.viewports[0];
  const draws = window.pacsViewer.stats.draws;
  const before = draws.length;
  const shown = new Set();
  const start = performance.now();
  for (let i = 0; i < steps; i += 1) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    vp.el.dispatchEvent(new WheelEvent('wheel', {deltaY: 50, bubbles: true, cancelable: true}));
    if (vp.drawn) shown.add(vp.drawn.index);
  }
  await new Promise((resolve) => requestAnimationFrame(resolve));
  const elapsed = (performance.now() - start) / 1000;
  return {elapsed, draws: draws.length - before, distinct: shown.size, index: vp.index};
}"""

RAF_RATE = """async () => {
  const t = []; for (let i = 0; i < 61; i += 1) { await new Promise((r) => requestAnimationFrame(r)); t.push(performance.now()); }
  return 60000 / (t[60] - t[0]);
}"""


def measure_browser(ours: OurServer, ctx: dict, count: int) -> None:
    from playwright.sync_api import sync_playwright

    out(
        "browser.method",
        "headless Chromium 1280x800; one wheel step per animation frame through the series; "
        "fps = distinct images drawn / elapsed",
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{ours.base}/login/")
        page.fill("input[name=username]", USERNAME)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        out("browser.animation_frame_rate_hz", page.evaluate(RAF_RATE))

        # Right after opening: scroll while the series is still arriving.
        started = time.perf_counter()
        page.goto(f"{ours.base}/viewer/studies/{ctx['study']}/")
        page.wait_for_function("() => document.querySelector('#viewer').dataset.ready === 'true'")
        page.wait_for_function("() => window.pacsViewer.state.viewports[0].drawn !== null")
        out("browser.first_image_ms", (time.perf_counter() - started) * 1000)
        page.evaluate("() => window.pacsViewer.state.viewports[0].show(0)")
        early = page.evaluate(SCROLL, [count - 1])
        out("browser.scroll_while_loading_fps", early["distinct"] / early["elapsed"])
        page.wait_for_function(
            "([n]) => Number(document.querySelector('#stack-viewport').dataset.loaded) >= n",
            arg=[count],
            timeout=120_000,
        )
        out("browser.series_loaded_ms", (time.perf_counter() - started) * 1000)

        # Loaded: scroll the whole series top to bottom, twice.
        rates = []
        for _ in range(2):
            page.evaluate("() => window.pacsViewer.state.viewports[0].show(0)")
            result = page.evaluate(SCROLL, [count - 1])
            assert result["index"] == count - 1, result
            rates.append(result["distinct"] / result["elapsed"])
        out("browser.scroll_loaded_fps_runs", ",".join(f"{r:.1f}" for r in rates))
        out("browser.scroll_loaded_fps", min(rates))
        browser.close()


def machine() -> dict:
    import platform

    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("Django", "uvicorn", "pillow", "numpy", "pydicom", "djangorestframework"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_results(path: Path) -> None:
    RESULTS["load_average_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULTS, indent=1) + "\n")
    print(f"# written to {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PACS_BENCH_PORT", "18300")))
    parser.add_argument("--n", type=int, default=100, help="distinct slices per render pass")
    parser.add_argument("--rounds", type=int, default=3, help="cold passes, each on a just-started server")
    parser.add_argument("--only", default="http,browser", help="comma-separated parts: http, browser")
    parser.add_argument(
        "--json", type=Path, default=REPO / "bench" / "results" / "render_bench.json", help="results file"
    )
    args = parser.parse_args()
    RESULTS.update(
        bench="render",
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine(),
        load_average_start=os.getloadavg(),
        versions=versions(),
    )

    home = bench_home()
    manifest = ensure_series(home)
    folder = home / "data" / "ct300"
    out("bench.started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    out("bench.series", f"{len(manifest['series'][0]['instances'])} slices 512x512 int16 (make_series.py)")
    ours = OurServer(home, args.port)
    stop_orthanc(home)
    try:
        orthanc = start_orthanc(home)
        ids = upload_to_orthanc(orthanc, folder, manifest)
        version = requests.get(f"{orthanc}/system", timeout=5).json().get("Version")
        out("orthanc.version", version)
        RESULTS["versions"]["Orthanc"] = version
        ctx = prepare_ours(home, folder)
        out("ours.database", os.environ.get("DATABASE_URL", "sqlite (fresh)").split("@")[-1])
        ours.start()
        if "http" in args.only:
            measure_http(args, home, manifest, orthanc, ids, ours, ctx)
        if "browser" in args.only:
            ours.restart()
            measure_browser(ours, ctx, len(manifest["series"][0]["instances"]))
    finally:
        ours.stop()
        stop_orthanc(home)
    result = home / "results" / f"render-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    result.write_text("\n".join(LINES) + "\n")
    print(f"# written to {result}", file=sys.stderr)
    write_results(args.json)


if __name__ == "__main__":
    main()
