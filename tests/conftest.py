"""Fixtures shared by the whole suite.

The base fixture ``tenants`` gives three institutions with a user in every
role: ``a`` and ``b`` work together (referrals, shared reading), ``c`` is the
outsider who must get 404 everywhere. ``platform_admin`` is the service's
operator. Helpers: ``make_user`` (password ``PASSWORD``, hashed once per run),
``web_client(user)`` (a signed-in session), ``api_client(user)`` (a real bearer
token), ``free_port()``, ``browser_login(context, live_url, username)``.
Every route is also walked by the isolation harness in ``tests/isolation/``.
Tests that need dcmtk, Chromium or poppler are marked and skip without them
(``tests/tools.py``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.test import Client
from rest_framework.test import APIClient

from pacs_cloud import celery_app
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import Institution, Membership, Role, User
from tests.tools import CHROMIUM
from tests.tools import pytest_collection_modifyitems as pytest_collection_modifyitems
from tests.tools import pytest_sessionfinish as pytest_sessionfinish

PASSWORD = "test-password-123"

# Playwright's sync API keeps an event loop running in the test thread, which
# Django would otherwise take for an async context around every ORM call.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Test-run isolation, applied before anything connects:
# * the live server answers from a pool of threads; connections that outlive
#   their request would keep the test database open at teardown;
# * test runs (and pytest-xdist workers) may share one Redis: give each its own
#   key space, so a push or a cache entry of one never reaches another;
# * tasks a test enqueues stay in this process (tests that need a real worker
#   start one on a broker folder of their own).
settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
_RUN_PREFIX = f"{settings.REDIS_KEY_PREFIX}:test:{os.getpid()}"
if settings.REDIS_URL:
    settings.CACHES["default"]["KEY_PREFIX"] = _RUN_PREFIX
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{_RUN_PREFIX}:asgi"
settings.CELERY_BROKER_URL = "memory://"
# Nothing listens on the default relay address in tests; live_url points it at its server.
settings.PUSH_RELAY_URL = ""
settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
celery_app.conf.update(broker_url="memory://", broker_transport_options={})

requires_postgres = pytest.mark.skipif(
    not settings.USING_POSTGRES, reason="needs PostgreSQL: set DATABASE_URL to a PostgreSQL database"
)


@dataclass
class Tenant:
    institution: Institution
    users: dict[str, User] = field(default_factory=dict)

    def __getattr__(self, role: str) -> User:
        try:
            return self.__dict__["users"][role]
        except KeyError:
            raise AttributeError(role) from None


@dataclass
class Tenants:
    a: Tenant
    b: Tenant
    c: Tenant

    def __iter__(self):
        return iter((self.a, self.b, self.c))


_password_hash: str | None = None


def password_hash() -> str:
    """``PASSWORD`` hashed once per run: Argon2 is slow on purpose, fixtures need many users."""
    global _password_hash
    if _password_hash is None:
        _password_hash = make_password(PASSWORD)
    return _password_hash


def make_user(username: str, **fields) -> User:
    """A user whose password is ``PASSWORD``."""
    return User.objects.create(username=username, password=password_hash(), **fields)


def make_tenant(slug: str, name: str, prefix: str) -> Tenant:
    institution = Institution.objects.create(
        slug=slug, name=name, accession_prefix=prefix, patient_id_issuer=slug.upper(), time_zone="Asia/Shanghai"
    )
    tenant = Tenant(institution)
    for role in Role:
        user = make_user(f"{role.value}@{slug}", display_name=f"{role.label} of {name}")
        Membership.objects.create(user=user, institution=institution, role=role)
        tenant.users[role.value] = user
    return tenant


@pytest.fixture(autouse=True)
def _fresh_storage_locations():
    """Each test reads the storage locations of its own database (a flushed one lost the default's row)."""
    from archive.copies import locations

    locations.forget()


@pytest.fixture
def tenants(db) -> Tenants:
    return Tenants(
        a=make_tenant("alpha", "Alpha County Hospital", "ACH"),
        b=make_tenant("bravo", "Bravo City Hospital", "BCH"),
        c=make_tenant("charlie", "Charlie Outsider Hospital", "COH"),
    )


@pytest.fixture
def platform_admin(db) -> User:
    """The operator of the service: no membership, so no patient data."""
    return make_user("platform", is_platform_admin=True, is_staff=True, is_superuser=True)


def web_client(user: User | None = None, *, enforce_csrf: bool = False) -> Client:
    """A Django test client with a session signed in as ``user``.

    CSRF checks are off unless ``enforce_csrf`` (tests of CSRF itself use a
    real browser or turn it on).
    """
    client = Client(enforce_csrf_checks=enforce_csrf)
    if user is not None:
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def api_client(user: User) -> APIClient:
    """An API client authenticated with a real bearer token, as external callers are."""
    _, key = issue_token(user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The test database as a ``DATABASE_URL`` for a server the test runs as its own process (PostgreSQL only)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the server runs as its own process on a shared PostgreSQL database")
    user, host, port = db.get("USER") or "postgres", db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


# A live ASGI server and a real browser --------------------------------------


class _ServerThread:
    """uvicorn serving the ASGI app in a thread of the test process.

    Sharing the process means sharing the test database and the in-memory
    channel layer, so WebSocket pushes work as in the product.
    """

    def __init__(self) -> None:
        import threading

        import uvicorn

        from pacs_cloud.asgi import application

        self.port = free_port()
        config = uvicorn.Config(
            application, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def _asgi_server():
    server = _ServerThread()
    yield server
    server.stop()


@pytest.fixture
def live_url(_asgi_server, transactional_db, settings) -> str:
    """Base URL of a running ASGI server (HTTP and WebSockets) on the test database."""
    settings.CLOUD_URL = settings.PUSH_RELAY_URL = _asgi_server.url
    return _asgi_server.url


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Per module, not per session: Playwright's sync API keeps an event loop running
# in the main thread while it is open, and Django's test client cannot call an
# async view (async_to_sync) from a thread with a running loop.
@pytest.fixture(scope="module")
def _chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_context(_chromium):
    """A fresh browser context (own cookies) per use; call it for each user."""
    contexts = []

    def make(**options):
        context = _chromium.new_context(**options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def browser_login(context, live_url: str, username: str, password: str = PASSWORD):
    page = context.new_page()
    page.goto(f"{live_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page
