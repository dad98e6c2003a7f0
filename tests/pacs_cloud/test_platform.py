"""Health of each dependency, the production configuration check, the API schema and its docs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.conftest import api_client, requires_postgres, web_client

ROOT = Path(__file__).resolve().parents[2]
# What a production host would not have: the test run's servers and switches.
NOT_IN_PRODUCTION = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECURE_HTTPS", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_PRODUCTION}
    env.update(extra)
    return env


class TestHealth:
    def test_every_dependency_is_probed_and_healthy(self, db, tmp_path, settings):
        settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
        response = web_client().get("/healthz")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok" and body["role"] == "cloud"
        expected = {"database", "storage", "broker", "channel_layer"} | ({"redis"} if settings.REDIS_URL else set())
        assert set(body["checks"]) == expected
        assert all(check["status"] == "ok" for check in body["checks"].values())
        assert body["checks"]["database"]["vendor"] == ("postgresql" if settings.USING_POSTGRES else "sqlite")

    def test_the_embedded_broker_folder_is_probed(self, db, tmp_path, settings):
        folders = {name: str(tmp_path / name) for name in ("queue", "processed", "control")}
        settings.CELERY_BROKER_URL = "filesystem://"
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["queue"],
            "processed_folder": folders["processed"],
            "control_folder": folders["control"],
        }
        broker = web_client().get("/healthz").json()["checks"]["broker"]
        assert broker["status"] == "ok" and broker["transport"] == "filesystem"
        assert os.listdir(folders["queue"]) == []  # the probe cleans up after itself

    def test_a_broken_dependency_gives_503_and_says_which(self, db, tmp_path, settings):
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the storage folder should be")
        settings.STORAGE_URL = f"file://{blocker}"
        response = web_client().get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded"
        assert body["checks"]["storage"]["status"] == "error"
        assert body["checks"]["database"]["status"] == "ok"

    def test_an_unreachable_redis_is_reported(self, db, settings, tmp_path):
        from pacs_cloud import health

        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
        settings.STORAGE_URL = f"file://{tmp_path}"
        checks = health.run_checks()
        assert checks["redis"]["status"] == "error"
        assert "ConnectionError" in checks["redis"]["error"]

    def test_the_channel_layer_probe_leaves_other_sockets_subscribed(self, db, settings, tmp_path):
        from channels.layers import get_channel_layer

        from pacs_cloud.lib.asyncio_bridge import block_on

        settings.STORAGE_URL = f"file://{tmp_path}"
        layer = get_channel_layer()
        channel = block_on(layer.new_channel)
        block_on(layer.group_add, "user.health-test", channel)
        web_client().get("/healthz")
        block_on(layer.group_send, "user.health-test", {"type": "push.message", "topic": "t", "data": {}})
        assert block_on(layer.receive, channel)["topic"] == "t"


PRODUCTION_ENV = {
    "SECRET_KEY": "x" * 30 + "-a-long-random-production-secret-key-value",
    "ALLOWED_HOSTS": "pacs.example-hospital.org",
    "DATABASE_URL": "postgres://pacs@db.internal:5432/pacs",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "STORAGE_URL": "s3://pacs-archive",
    "S3_ENDPOINT_URL": "https://s3.internal",
    "CSRF_TRUSTED_ORIGINS": "https://pacs.example-hospital.org",
}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_variables(tmp_path):
    result = check_deploy(clean_env(**PRODUCTION_ENV, PACS_DATA_DIR=str(tmp_path), STATIC_ROOT=str(tmp_path / "st")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_production_hardening(tmp_path):
    result = check_deploy(clean_env(PACS_DATA_DIR=str(tmp_path), DEBUG="1"))
    assert result.returncode != 0
    assert "security.W018" in result.stderr + result.stdout  # DEBUG on


def test_production_settings_select_the_servers(tmp_path):
    env = clean_env(**PRODUCTION_ENV, PACS_DATA_DIR=str(tmp_path), STATIC_ROOT=str(tmp_path / "s"))
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps(["
        "s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'], s.CHANNEL_LAYERS['default']['BACKEND'],"
        "s.CELERY_BROKER_URL, s.SESSION_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.PASSWORD_HASHERS[0]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "pacs_cloud.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "django.db.backends.postgresql",
        "django.core.cache.backends.redis.RedisCache",
        "channels_redis.core.RedisChannelLayer",
        "redis://redis.internal:6379/0",
        True,
        31536000,
        "django.contrib.auth.hashers.Argon2PasswordHasher",
    ]


class TestApiSchema:
    def test_the_schema_is_valid_and_lists_the_platform_api(self, db):
        response = web_client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
        assert response.status_code == 200
        schema = json.loads(response.content)
        assert schema["info"]["title"] == "Cloud PACS API"
        for path in (
            "/api/v1/auth/token/",
            "/api/v1/auth/tokens/{id}/",
            "/api/v1/institutions/",
            "/api/v1/memberships/",
        ):
            assert path in schema["paths"]
        assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"

    def test_the_schema_generates_without_warnings(self, tmp_path):
        result = subprocess.run(
            [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s")],
            cwd=ROOT,
            env={**os.environ, "PACS_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    def test_the_api_answers_json_to_a_token_holder(self, tenants):
        response = api_client(tenants.a.radiologist).get("/api/v1/institutions/")
        assert response["Content-Type"] == "application/json"


@pytest.mark.browser
@pytest.mark.parametrize("page,marker", [("/api/docs/", ".swagger-ui .info .title"), ("/api/redoc/", "h1")])
def test_the_api_documentation_renders_under_the_csp(live_url, browser_context, page, marker):
    context = browser_context()
    tab = context.new_page()
    refused = []

    def on_console(msg):
        # Third-party resources (Redoc's "powered by" logo) are meant to be blocked.
        if "Content Security Policy" in msg.text and "https://" not in msg.text:
            refused.append(msg.text)

    tab.on("console", on_console)
    tab.goto(f"{live_url}{page}")
    # Redoc lays out the whole schema in the page before its title shows: seconds on a busy machine.
    tab.wait_for_selector(marker, timeout=30_000)
    assert "Cloud PACS API" in tab.inner_text(marker)
    assert not refused, refused


@requires_postgres
def test_the_test_database_is_postgresql():
    assert django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
