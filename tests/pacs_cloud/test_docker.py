"""The production stack in docker/: one non-root image, every process, no secret in the files."""

from pathlib import Path

import yaml
from django.core.management import get_commands

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_image_runs_as_an_unprivileged_user():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and all(not u.startswith(("root", "0")) for u in users)
    assert lines.index(next(line for line in lines if line.startswith("USER "))) > lines.index("COPY . .")


def test_the_stack_has_every_process_of_the_product():
    services = compose()["services"]
    assert {"db", "redis", "migrate", "web", "worker", "beat", "dicom"} <= set(services)
    assert services["db"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    app = {name: s for name, s in services.items() if s.get("image") == "cloud-pacs:latest"}
    assert set(app) == {"migrate", "web", "worker", "beat", "dicom"}
    commands = {name: s.get("command") for name, s in app.items()}
    assert commands["web"] is None  # the image's default: uvicorn
    assert commands["worker"][:4] == ["celery", "-A", "pacs_cloud", "worker"]
    assert commands["beat"][:4] == ["celery", "-A", "pacs_cloud", "beat"]
    assert commands["dicom"][:2] == ["python", "manage.py"] and commands["dicom"][2] in get_commands()


def test_the_setup_step_migrates_then_merges_patients_recorded_twice_by_an_earlier_release():
    command = compose()["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    steps = [step.split() for step in command[2].split("&&")]
    assert all(step[:2] == ["python", "manage.py"] and step[2] in get_commands() for step in steps)
    assert [step[2] for step in steps] == ["migrate", "merge_duplicate_patients"]


def test_the_app_processes_use_the_production_servers_and_no_literal_secret():
    env = compose()["services"]["web"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and "@db:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]


def test_there_is_a_marked_place_for_the_s3_service():
    assert "S3 object storage" in (DOCKER / "compose.yaml").read_text()


def test_the_edge_stack_runs_the_gateway_in_the_edge_role_with_its_token_from_the_environment():
    edge = yaml.safe_load((DOCKER / "edge.yaml").read_text())["services"]["edge"]
    assert edge["image"] == "cloud-pacs:latest"
    assert edge["command"][:3] == ["python", "manage.py", "edge_gateway"] and "edge_gateway" in get_commands()
    assert edge["environment"]["PACS_ROLE"] == "edge"
    assert edge["environment"]["EDGE_TOKEN"].startswith("${EDGE_TOKEN:?")
    assert edge["environment"]["CLOUD_URL"].startswith("${CLOUD_URL:?")
    assert "11113:11113" in edge["ports"]
    assert not {"DATABASE_URL", "REDIS_URL"} & set(edge["environment"])  # the edge needs no server


def test_every_long_running_service_restarts_and_has_a_health_check():
    services = {**compose()["services"], **yaml.safe_load((DOCKER / "edge.yaml").read_text())["services"]}
    for name, service in services.items():
        if name == "migrate":  # a one-off step the others wait for
            assert service["restart"] == "no"
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck", {})
        assert not check.get("disable") and check.get("test", [None])[0] in ("CMD", "CMD-SHELL"), name


def test_the_probes_tell_healthy_from_not(tmp_path, monkeypatch):
    import http.server
    import os
    import socket
    import threading
    import time

    from pacs_cloud.lib import probe

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.headers["Host"], self.headers["X-Forwarded-Proto"]))
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setenv("ALLOWED_HOSTS", "pacs.example.cn,.example.cn")
    try:
        assert probe.main(["http", f"http://127.0.0.1:{port}/healthz"]) == 0
        assert seen == [("pacs.example.cn", "https")]
        assert probe.main(["http", f"http://127.0.0.1:{port}/other"]) == 1
        assert probe.main(["tcp", "127.0.0.1", str(port)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    assert probe.main(["http", f"http://127.0.0.1:{closed}/healthz"]) == 1
    assert probe.main(["tcp", "127.0.0.1", str(closed)]) == 1

    schedule = tmp_path / "celerybeat-schedule.dat"
    schedule.write_bytes(b"")
    assert probe.main(["fresh", str(tmp_path / "celerybeat-schedule*"), "600"]) == 0
    os.utime(schedule, (time.time() - 900, time.time() - 900))
    assert probe.main(["fresh", str(tmp_path / "celerybeat-schedule*"), "600"]) == 1
