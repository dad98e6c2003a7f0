#!/usr/bin/env python3
"""3D benchmark: server-side volume rendering of a 512x512x300 CT, in process and over the WebSocket.

What it does (everything on loopback, embedded SQLite, no Redis):

1. makes (once) two 300-slice 512x512 CTs with the shared harness's
   ``make_series.py`` in ``$BENCH_HOME/data/ct300-vr1`` and ``ct300-vr2``;
2. prepares a fresh data dir, ingests both through ``archive.ingest`` and
   makes two readers;
3. in process, on the render thread the WebSocket uses:
   - first volume-rendered image (bone, 512x512), volume not decoded
     (caches emptied; decode + session + render), 3 runs;
   - the same with the volume already decoded for 2D, 3 runs;
   - 60 interactive frames while rotating (320 on the long side, JPEG at
     the starting link quality 70), server time p50/p95 and bytes;
   - 10 full-quality 512x512 frames (JPEG q90), server time p50;
4. in headless Chromium (Playwright) against uvicorn: one reader rotating
   with the mouse for ``--seconds``: frames per second received and bytes
   per interactive frame; then two readers rotating different studies at
   once: frames per second each.

Prints ``key=value`` lines; the figures, every run, the machine and its
load go to ``bench/results/volume.json`` (the README quotes it).

    BENCH_HOME=/tmp/bench-me .venv/bin/python bench/volume_bench.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", "/work/shared/bench"))
PASSWORD = "bench-reader-password"  # noqa: S105 - throw-away accounts in a throw-away database
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_home() -> Path:
    home = Path(os.environ.get("BENCH_HOME") or (REPO / "var" / "bench"))
    (home / "data").mkdir(parents=True, exist_ok=True)
    return home


def ensure_series(home: Path, name: str, patient: str) -> Path:
    folder = home / "data" / name
    if not (folder / "manifest.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(SHARED / "make_series.py"),
                str(folder),
                "--patient-id",
                patient,
                "--accession",
                patient[:16],
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return folder


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    home = bench_home()
    folders = [ensure_series(home, "ct300-vr1", "VRBENCH1"), ensure_series(home, "ct300-vr2", "VRBENCH2")]
    data_dir = home / "volume-pacs"
    shutil.rmtree(data_dir, ignore_errors=True)
    os.environ["PACS_DATA_DIR"] = str(data_dir)
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "pacs_cloud.settings"
    os.environ["PUSH_RELAY_URL"] = ""  # pushes stay in this process: no web server on port 8000 to relay to
    import django

    django.setup()
    from django.core.management import call_command
    from results import Figures, Run

    run = Run()
    call_command("migrate", verbosity=0)
    from archive.ingest import store_instance
    from archive.models import Series
    from pacs_cloud.models import Institution, Membership, Role, User

    inst = Institution.objects.create(
        slug="bench",
        name="Bench Hospital",
        accession_prefix="BEN",
        patient_id_issuer="BENCH",
        time_zone="Asia/Shanghai",
    )
    readers, series_list = [], []
    for index, folder in enumerate(folders):
        user = User.objects.create_user(f"reader{index + 1}@bench", password=PASSWORD)
        Membership.objects.create(user=user, institution=inst, role=Role.RADIOLOGIST)
        readers.append(user)
        manifest = json.loads((folder / "manifest.json").read_text())
        for entry in manifest["series"][0]["instances"]:
            store_instance(folder / entry["file"], institution=inst)
        series_list.append(Series.objects.get(series_instance_uid=manifest["series"][0]["uid"]))

    from viewer import caches, mpr
    from viewer.volume import sessions
    from viewer.volume.scene import encode_frame

    def render(session, size, interactive, quality, preview=False):
        def work():
            started = time.perf_counter()
            picture = session.render(*size, interactive=interactive, preview=preview, flat=preview)
            data = encode_frame(picture, "image/jpeg", quality)
            return (time.perf_counter() - started) * 1000, len(data)

        return session.run(work, full=not (interactive or preview)).result()

    runs: dict[str, list] = {
        "cold_ms": [],
        "cold_full_ms": [],
        "warm_ms": [],
        "warm_full_ms": [],
        "drag_ms": [],
        "drag_bytes": [],
        "release_ms": [],
    }
    with Figures() as figures:
        series = series_list[0]
        for _ in range(3):
            caches.clear_all()
            started = time.perf_counter()
            volume = mpr.series_volume(series)
            session = sessions.open_session(
                user=readers[0], study_id=series.study_id, series_id=series.pk, volume=volume
            )
            # The page's first picture: the preview scene's when the volume is large (as the WebSocket sends it).
            render(session, (512, 512), False, 90, preview=True)
            runs["cold_ms"].append((time.perf_counter() - started) * 1000)
            render(session, (512, 512), False, 90)
            runs["cold_full_ms"].append((time.perf_counter() - started) * 1000)
            sessions.close(session.id)
        for _ in range(3):
            started = time.perf_counter()
            volume = mpr.series_volume(series)
            session = sessions.open_session(
                user=readers[0], study_id=series.study_id, series_id=series.pk, volume=volume
            )
            # The page's first picture: the preview scene's when the volume is large (as the WebSocket sends it).
            render(session, (512, 512), False, 90, preview=True)
            runs["warm_ms"].append((time.perf_counter() - started) * 1000)
            render(session, (512, 512), False, 90)
            runs["warm_full_ms"].append((time.perf_counter() - started) * 1000)
            sessions.close(session.id)
        session = sessions.open_session(user=readers[0], study_id=series.study_id, series_id=series.pk, volume=volume)
        for _ in range(60):
            with session.lock:
                session.camera.rotate(3.0, 1.0)
            ms, size = render(session, (320, 320), True, 70)
            runs["drag_ms"].append(ms)
            runs["drag_bytes"].append(size)
        for _ in range(10):
            with session.lock:
                session.camera.rotate(7.0, 0.0)
            runs["release_ms"].append(render(session, (512, 512), False, 90)[0])
        sessions.close(session.id)
        print(f"volume.first_image_cold_ms={statistics.median(runs['cold_ms']):.0f}")
        print(f"volume.first_image_warm_ms={statistics.median(runs['warm_ms']):.0f}")
        print(f"volume.first_full_frame_cold_ms={statistics.median(runs['cold_full_ms']):.0f}")
        print(f"volume.first_full_frame_warm_ms={statistics.median(runs['warm_full_ms']):.0f}")
        print(f"volume.drag_frame_p50_ms={pct(runs['drag_ms'], 50):.1f}")
        print(f"volume.drag_frame_p95_ms={pct(runs['drag_ms'], 95):.1f}")
        print(f"volume.drag_frame_bytes_mean={statistics.mean(runs['drag_bytes']):.0f}")
        print(f"volume.release_frame_512_p50_ms={pct(runs['release_ms'], 50):.0f}")
        browser = browser_figures(readers, series_list, args.seconds)
        runs["browser"] = browser
    run.write("volume", {"figures": figures.values, "runs": runs, "series": "2 x make_series.py CT 512x512x300"})


def browser_figures(readers, series_list, seconds: float) -> dict:
    import uvicorn

    from pacs_cloud.asgi import application

    sock_port = 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        sock_port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=sock_port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock_port}"
    from playwright.sync_api import sync_playwright

    result: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        pages = []
        for user, series in zip(readers, series_list, strict=True):
            context = browser.new_context(viewport={"width": 1000, "height": 700})
            context.set_default_timeout(60_000)
            page = context.new_page()
            page.goto(f"{url}/login/")
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(f"{url}/viewer/series/{series.pk}/3d/")
            page.wait_for_function("() => window.pacsVolume.state.frames > 0", timeout=120_000)
            pages.append(page)

        def rotate(active, duration):
            boxes = [p.locator("#v3d-canvas").bounding_box() for p in active]
            before = [
                p.evaluate("[window.pacsVolume.state.interactiveFrames, window.pacsVolume.state.interactiveBytes]")
                for p in active
            ]
            for page, box in zip(active, boxes, strict=True):
                page.mouse.move(box["x"] + 100, box["y"] + box["height"] / 2)
                page.mouse.down()
            started = time.monotonic()
            step = 0
            while time.monotonic() - started < duration:
                step += 1
                for page, box in zip(active, boxes, strict=True):
                    page.mouse.move(box["x"] + 100 + (step * 6) % 500, box["y"] + box["height"] / 2)
                pages[0].wait_for_timeout(16)
            elapsed = time.monotonic() - started
            after = [
                p.evaluate("[window.pacsVolume.state.interactiveFrames, window.pacsVolume.state.interactiveBytes]")
                for p in active
            ]
            for page in active:
                page.mouse.up()
            out = []
            for (f0, b0), (f1, b1) in zip(before, after, strict=True):
                frames = f1 - f0
                out.append({"fps": frames / elapsed, "bytes_per_frame": (b1 - b0) / max(frames, 1), "frames": frames})
            return out

        single = rotate(pages[:1], seconds)[0]
        print(f"volume.ws_fps_one_user={single['fps']:.1f}")
        print(f"volume.ws_bytes_per_interactive_frame={single['bytes_per_frame']:.0f}")
        header = pages[0].evaluate("window.pacsVolume.state.lastHeader")
        print(f"volume.ws_interactive_size={header['width']}x{header['height']}")
        pages[0].wait_for_timeout(1500)
        both = rotate(pages, seconds)
        print(f"volume.ws_fps_two_users={both[0]['fps']:.1f},{both[1]['fps']:.1f}")
        result = {"one_user": single, "two_users": both}
        browser.close()
    server.should_exit = True
    return result


if __name__ == "__main__":
    main()
