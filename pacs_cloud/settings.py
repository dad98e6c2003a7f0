"""Cloud PACS settings.

One environment-driven module. Every default lets the product start from a
fresh checkout with no server (SQLite, filesystem storage, a filesystem Celery
broker, the in-memory channel layer); production selects PostgreSQL, Redis,
RabbitMQ and S3 only through the variables listed in the README.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

DATA_DIR = Path(env.str("PACS_DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

PACS_ROLE = env.str("PACS_ROLE", default="cloud")  # "cloud" or "edge"
PACS_VERSION = "0.1.0"


def _local_secret_key() -> str:
    """A per-checkout key for the embedded demo, kept out of the repository.

    Every process of one deployment must agree on it (relayed pushes are
    signed with it), and several start at once: the first creates the file
    exclusively, the others wait until it holds the key.
    """
    path = DATA_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    for _ in range(100):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.05)
    raise ImproperlyConfigured(f"{path} is empty: delete it, or set SECRET_KEY")


SECRET_KEY = env.str("SECRET_KEY", default="") or _local_secret_key()
# Hardening that needs HTTPS in front of the server; on by default whenever the
# deployment supplies its own SECRET_KEY (production), off for the local demo.
SECURE_HTTPS = env.bool("SECURE_HTTPS", default="SECRET_KEY" in os.environ)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A refused form shows the product's 403 page, not Django's.
CSRF_FAILURE_VIEW = "pacs_cloud.views.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "axes",
    "channels",
    "pacs_cloud",
    "archive",
    "worklist",
    "workflow",
    "viewer",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "pacs_cloud.middleware.refuse_nul_characters",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "pacs_cloud.middleware.time_zone",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "pacs_cloud.urls"
ASGI_APPLICATION = "pacs_cloud.asgi.application"
WSGI_APPLICATION = "pacs_cloud.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pacs_cloud.context_processors.tenancy",
            ],
        },
    },
]

# Database ---------------------------------------------------------------

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'pacs.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server, the DICOM service and the worker read while
        # one of them writes; IMMEDIATE avoids lock-upgrade deadlocks.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The planner's price of a random page read. PostgreSQL's default (4) is
    # for spinning disks; with the index in memory or on SSD it passes over
    # index joins (a name search's patients to their studies) for a scan of
    # every study. Sent at connection start: no round trip per request.
    random_page_cost = env.float("DB_RANDOM_PAGE_COST", default=1.1)
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", f"-c random_page_cost={random_page_cost}")
USING_POSTGRES = DATABASES["default"]["ENGINE"].startswith("django.db.backends.postg")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Users and authentication ---------------------------------------------------

AUTH_USER_MODEL = "pacs_cloud.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("LOGIN_COOLOFF_HOURS", default=0.25)
# Lock a username from one address: a hospital behind one NAT is not locked out
# as a whole, and a stranger cannot lock a user out from elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# JSON for the API, a page for the browser (both 429).
AXES_LOCKOUT_CALLABLE = "pacs_cloud.views.lockout_response"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous grants, ever

API_TOKEN_TTL_HOURS = env.int("API_TOKEN_TTL_HOURS", default=12)
# Longest validity a user may ask for (an edge gateway or an integration).
API_TOKEN_MAX_TTL_HOURS = env.int("API_TOKEN_MAX_TTL_HOURS", default=24 * 365)
# Seconds a web process reuses a token's and a user's memberships lookup
# (pacs_cloud.authcache); changes made elsewhere take effect within this time.
AUTH_CACHE_SECONDS = env.float("AUTH_CACHE_SECONDS", default=5.0)
# How long an invitation link (a new institution's first administrator, a new member) works.
INVITATION_TTL_HOURS = env.int("INVITATION_TTL_HOURS", default=72)

# Security headers --------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = SECURE_HTTPS
SECURE_HSTS_SECONDS = 31536000 if SECURE_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'", "ws:", "wss:"],
        "style-src": ["'self'"],
        "script-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

# Forwarding proxies -----------------------------------------------------------

# Addresses or networks of the reverse proxies in front of the web server:
# X-Forwarded-For is believed only from these (empty: from nobody, and the
# client is the peer). The lockout counter and the audit trail both ask
# pacs_cloud.lib.client_address; the web server itself runs with
# --no-proxy-headers.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
AXES_CLIENT_IP_CALLABLE = "pacs_cloud.lib.client_address.client_address"

# Browser clients on other origins ----------------------------------------------

# Origins (scheme://host[:port]) whose pages may call DICOMweb and the REST API
# with a token of their own, e.g. a viewer served elsewhere (pacs_cloud.cors).
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])

# Internationalisation -------------------------------------------------------

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `collectstatic` fills it for production; WhiteNoise serves from the app
# folders directly (WHITENOISE_USE_FINDERS) in the embedded setup.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
try:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only image: collectstatic made it at build time
    pass
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Object storage for DICOM and report objects ------------------------------

STORAGE_URL = env.str("STORAGE_URL", default=f"file://{DATA_DIR / 'storage'}")
S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="")
AWS_ACCESS_KEY_ID = env.str("AWS_ACCESS_KEY_ID", default="")
AWS_SECRET_ACCESS_KEY = env.str("AWS_SECRET_ACCESS_KEY", default="")
AWS_DEFAULT_REGION = env.str("AWS_DEFAULT_REGION", default="us-east-1")
# Dotted path of a callable probing the object store for /healthz; empty uses
# pacs_cloud.health.probe_storage. The archive's probe goes through its own
# storage layer (and, with s3://, writes to the bucket itself).
HEALTH_STORAGE_PROBE = "archive.storage.health_probe"
# With s3:// storage: the local cache objects are received into, the parallel
# uploads per copy task, the part size of multipart uploads, how long an
# object may stay only in the cache before the sweep copies it, and how long
# cached copies are kept for fast reads after they are in the object store.
STORAGE_CACHE_DIR = env.str("STORAGE_CACHE_DIR", default=str(DATA_DIR / "storage-cache"))
# Download archives of institutions' exports (reports.exit), kept until offboarding: as large as an archive.
EXIT_EXPORT_DIR = env.str("EXIT_EXPORT_DIR", default=str(DATA_DIR / "exports"))
STORAGE_COPY_WORKERS = env.int("STORAGE_COPY_WORKERS", default=4)
S3_MULTIPART_BYTES = env.int("S3_MULTIPART_BYTES", default=8 * 1024 * 1024)
STORAGE_COPY_GRACE_SECONDS = env.int("STORAGE_COPY_GRACE_SECONDS", default=60)
STORAGE_CACHE_RETENTION_HOURS = env.float("STORAGE_CACHE_RETENTION_HOURS", default=24)
# Copies of every object (archive.copies): the platform's default number of
# good copies and of sites they span (an institution's copy policy overrides
# them); how often the copier looks for objects short of copies; how long a
# location that failed a read is passed over by reads; the fixity cycle (every
# copy re-read within it), the scrubber's read rate and how often it runs.
ARCHIVE_COPIES = env.int("ARCHIVE_COPIES", default=1)
ARCHIVE_SITES = env.int("ARCHIVE_SITES", default=1)
REPLICATION_SWEEP_SECONDS = env.float("REPLICATION_SWEEP_SECONDS", default=20.0)
STORAGE_FAILOVER_SECONDS = env.float("STORAGE_FAILOVER_SECONDS", default=30.0)
FIXITY_CYCLE_DAYS = env.float("FIXITY_CYCLE_DAYS", default=90.0)
SCRUB_MB_PER_SECOND = env.float("SCRUB_MB_PER_SECOND", default=50.0)
SCRUB_SWEEP_SECONDS = env.float("SCRUB_SWEEP_SECONDS", default=60.0)
# Lifecycle: how often the rules move studies to cheaper tiers, and how long a
# study read from a nearline tier stays online again after it was recalled.
LIFECYCLE_SWEEP_SECONDS = env.float("LIFECYCLE_SWEEP_SECONDS", default=3600.0)
RECALL_KEEP_DAYS = env.float("RECALL_KEEP_DAYS", default=30.0)
# Archive tier (a store that restores before a read): how often restores are
# checked for completion, and how long a C-MOVE/C-GET of an archived study
# waits for its restore before it answers failure (0: at once, with the time to wait).
RESTORE_SWEEP_SECONDS = env.float("RESTORE_SWEEP_SECONDS", default=60.0)
RESTORE_RETRIEVE_WAIT_SECONDS = env.float("RESTORE_RETRIEVE_WAIT_SECONDS", default=0.0)

# Cache, channels, Celery ---------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
# Several deployments (or test runs) may share one Redis: every key we write
# starts with this prefix.
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="pacs")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_KEY_PREFIX}:asgi"},
        },
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Viewer: decoded pixels stay in a per-process LRU; rendered images go to a
# cache every web worker shares (Redis when configured; per process otherwise).
VIEWER_DECODED_CACHE_MB = env.int("VIEWER_DECODED_CACHE_MB", default=1024)
VIEWER_RENDER_CACHE = "render"
VIEWER_RENDER_CACHE_SECONDS = env.int("VIEWER_RENDER_CACHE_SECONDS", default=24 * 3600)
# A study opened by the same user again within this window is audited once.
VIEWER_AUDIT_WINDOW_SECONDS = env.int("VIEWER_AUDIT_WINDOW_SECONDS", default=1800)
# 3D render sessions: closed after this long without a gesture (their memory freed).
VIEWER_3D_IDLE_SECONDS = env.float("VIEWER_3D_IDLE_SECONDS", default=300.0)
# Volumes of at least this many voxels get a half-resolution preview scene for the first picture
# and the frames while dragging (a 512x512x300 CT has 78 million).
VIEWER_3D_PREVIEW_MIN_VOXELS = env.int("VIEWER_3D_PREVIEW_MIN_VOXELS", default=16_000_000)
if REDIS_URL:
    CACHES["render"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "render",
        "TIMEOUT": VIEWER_RENDER_CACHE_SECONDS,
    }
else:
    CACHES["render"] = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "rendered-images",
        "TIMEOUT": VIEWER_RENDER_CACHE_SECONDS,
        "OPTIONS": {"MAX_ENTRIES": env.int("VIEWER_RENDER_CACHE_ENTRIES", default=4000)},
    }

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _celery_dir = DATA_DIR / "celery"
    for _sub in ("queue", "processed", "control"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        # Broadcast (remote control) tables; kombu's default is ./control in
        # whatever directory the worker happens to start in.
        "control_folder": str(_celery_dir / "control"),
        "store_processed": False,
    }
    # kombu's filesystem transport with atomic message files (pacs_cloud/lib/fsbroker.py).
    CELERY_BROKER_TRANSPORT = "pacs_cloud.lib.fsbroker:Transport"
elif REDIS_URL and CELERY_BROKER_URL == REDIS_URL:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{REDIS_KEY_PREFIX}:celery:"}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE: dict = {
    "archive-complete-stable-studies": {
        "task": "archive.tasks.complete_stable_studies",
        "schedule": env.float("STUDY_SWEEP_SECONDS", default=5.0),
    },
    "archive-sweep-object-store-copies": {"task": "archive.tasks.sweep_object_store_copies", "schedule": 60.0},
    "archive-evict-cached-copies": {"task": "archive.tasks.evict_cached_copies", "schedule": 3600.0},
    "archive-discard-stale-staging": {"task": "archive.tasks.discard_stale_staging", "schedule": 3600.0},
    "archive-replicate-copies": {
        "task": "archive.copies.tasks.sweep_replication",
        "schedule": REPLICATION_SWEEP_SECONDS,
    },
    "archive-scrub-copies": {"task": "archive.copies.tasks.scrub_copies", "schedule": SCRUB_SWEEP_SECONDS},
    "archive-check-locations": {"task": "archive.copies.tasks.check_locations", "schedule": 60.0},
    "archive-finish-restores": {
        "task": "archive.copies.tasks.finish_restores",
        "schedule": RESTORE_SWEEP_SECONDS,
    },
    "archive-apply-lifecycle": {
        "task": "archive.copies.tasks.apply_lifecycle_rules",
        "schedule": LIFECYCLE_SWEEP_SECONDS,
    },
    # Usage metering: the bytes each institution stores, per tier and site (the day's latest wins).
    "archive-snapshot-storage-usage": {"task": "archive.copies.tasks.snapshot_storage_usage", "schedule": 21600.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"

# REST API ------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "pacs_cloud.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "pacs_cloud.restapi.Pagination",
    "PAGE_SIZE": 50,
    # A bad request is refused with its reason (pacs_cloud.restapi), never a 500.
    "DEFAULT_PARSER_CLASSES": [
        "pacs_cloud.parsers.ObjectJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "pacs_cloud.restapi.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cloud PACS API",
    "DESCRIPTION": "Orders, studies, reading tasks, reports and referrals across hospitals.",
    "VERSION": PACS_VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Swagger UI and Redoc from our own static files: no CDN, and the CSP
    # allows no third-party scripts.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "pacs_cloud.models.Role",
        "InstitutionKindEnum": "pacs_cloud.models.Institution.Kind",
        "StudyStateEnum": "archive.models.Study.State",
        "DceCurveModelEnum": "viewer.analysis.fitting.MODELS",
        "DceMapModelEnum": "viewer.analysis.maps.MAP_MODELS",
        "PatientConsentMethodEnum": "workflow.links.models.PatientConsent.Method",
        "PatientConsentScopeEnum": "workflow.links.models.PatientConsent.Scope",
        "StatisticsScopeEnum": "workflow.statistics.api.SCOPES",
    },
}

# DICOM -------------------------------------------------------------------

DICOM_AE_TITLE = env.str("DICOM_AE_TITLE", default="PACSCLOUD")
DICOM_PORT = env.int("DICOM_PORT", default=11112)
EDGE_AE_TITLE = env.str("EDGE_AE_TITLE", default="PACSEDGE")
EDGE_DICOM_PORT = env.int("EDGE_DICOM_PORT", default=11113)
CLOUD_URL = env.str("CLOUD_URL", default="http://127.0.0.1:8000")
EDGE_TOKEN = env.str("EDGE_TOKEN", default="")
# Edge gateway (PACS_ROLE=edge, archive.edge): its status page, the forwarder
# (instances per STOW-RS request, requests in flight, longest retry pause),
# how often it reports and syncs the worklist replica, and its online tier.
EDGE_STATUS_PORT = env.int("EDGE_STATUS_PORT", default=11180)
EDGE_FORWARD_BATCH = env.int("EDGE_FORWARD_BATCH", default=16)
EDGE_FORWARD_CONCURRENCY = env.int("EDGE_FORWARD_CONCURRENCY", default=4)
EDGE_RETRY_MAX_SECONDS = env.float("EDGE_RETRY_MAX_SECONDS", default=300.0)
EDGE_REFUSED_MAX_ATTEMPTS = env.int("EDGE_REFUSED_MAX_ATTEMPTS", default=20)
EDGE_HEARTBEAT_SECONDS = env.float("EDGE_HEARTBEAT_SECONDS", default=30.0)
EDGE_SYNC_SECONDS = env.float("EDGE_SYNC_SECONDS", default=30.0)
EDGE_ONLINE_MAX_AGE_DAYS = env.float("EDGE_ONLINE_MAX_AGE_DAYS", default=30.0)
EDGE_ONLINE_MAX_GB = env.float("EDGE_ONLINE_MAX_GB", default=200.0)
EDGE_READ_GUARD_MINUTES = env.float("EDGE_READ_GUARD_MINUTES", default=60.0)
EDGE_TIER_SWEEP_SECONDS = env.float("EDGE_TIER_SWEEP_SECONDS", default=60.0)
# Cloud side: an edge whose oldest unsent instance is older than this, or
# that has not reported for as long, is shown with an alert.
EDGE_BACKLOG_ALERT_MINUTES = env.float("EDGE_BACKLOG_ALERT_MINUTES", default=30.0)
# Apps adding services to the edge gateway (see archive.edge.gateway).
EDGE_EXTENSIONS: list[str] = ["worklist.edge.EdgeWorklist"]
# Where worker and DICOM processes relay WebSocket pushes when the channel
# layer is in-memory (the embedded setup): this host's own web server.
PUSH_RELAY_URL = env.str("PUSH_RELAY_URL", default="http://127.0.0.1:8000")
# Seconds without a new instance after which a study counts as complete.
STUDY_STABILITY_SECONDS = env.int("STUDY_STABILITY_SECONDS", default=120)
MAX_INSTANCE_BYTES = env.int("MAX_INSTANCE_BYTES", default=2 * 1024**3)
# Apps contributing DICOM services (see archive.dimse); C-ECHO is always served.
DIMSE_SERVICE_PROVIDERS: list[str] = [
    "archive.dimse.services",
    "worklist.dimse.services",
]
# pynetdicom polls its queues every millisecond; the DICOM services make its
# loops wait for events instead (archive.dimse.tune_pynetdicom).
DIMSE_EVENT_WAITS = env.bool("DIMSE_EVENT_WAITS", default=True)
# Limits of the DICOM services (cloud and edge) towards a peer that misbehaves
# (archive.dimse): the largest PDU accepted (and offered as our maximum), how
# long a peer may take to request an association, how long a connection may
# stay silent, and how many connections one address may hold at once.
# Processes of the cloud's DICOM service sharing its port (archive.dimse_processes):
# associations in different processes run on different cores.
DICOM_SERVICE_PROCESSES = env.int("DICOM_SERVICE_PROCESSES", default=min(os.cpu_count() or 1, 8))
DICOM_MAX_PDU_BYTES = env.int("DICOM_MAX_PDU_BYTES", default=16 * 1024 * 1024)
DICOM_ACSE_TIMEOUT_SECONDS = env.float("DICOM_ACSE_TIMEOUT_SECONDS", default=30.0)
DICOM_NETWORK_TIMEOUT_SECONDS = env.float("DICOM_NETWORK_TIMEOUT_SECONDS", default=60.0)
DICOM_MAX_ASSOCIATIONS_PER_PEER = env.int("DICOM_MAX_ASSOCIATIONS_PER_PEER", default=16)
# QIDO-RS and C-FIND answer at most this many matches per request (a QIDO
# "limit" may ask for fewer; more is refused with a warning).
QUERY_MAX_RESULTS = env.int("QUERY_MAX_RESULTS", default=1000)

# Home-page panels: each app appends its provider (see pacs_cloud.home).
# ASGI wrappers that answer bearer-token reads without the middleware chain,
# innermost first (pacs_cloud/asgi.py).
LEAN_HTTP_WRAPPERS = ["pacs_cloud.lean.bearer_reads", "viewer.lean.lean_http"]
# WebSocket URL patterns of the apps, added to pacs_cloud.routing's own.
WEBSOCKET_ROUTES = ["viewer.volume.routing.websocket_urlpatterns"]

HOME_PANELS = [
    "pacs_cloud.home.role_panels",
    "archive.home.study_panels",
    "archive.edge.pages.home_panels",
    "worklist.views.home_panels",
    "viewer.home.recent_panel",
    "workflow.home.reading_panels",
    "workflow.referrals.views.home_panels",
    "workflow.onboarding.views.home_panels",
]
# Columns of the platform administrator's table of institutions, each a
# function answering (title, {institution id: count}).
HOME_INSTITUTION_COUNTS = ["archive.home.studies_per_institution", "pacs_cloud.metering.statements.totals_this_month"]
# Reading workflow: minutes per priority when neither policy nor agreement says,
# the claims a reader may hold at once (pools set their own), how long an
# untouched claim lasts, and the SLA sweep.
WORKFLOW_DEFAULT_SLA_MINUTES = {
    "stat": env.int("WORKFLOW_SLA_STAT_MINUTES", default=60),
    "urgent": env.int("WORKFLOW_SLA_URGENT_MINUTES", default=240),
    "routine": env.int("WORKFLOW_SLA_ROUTINE_MINUTES", default=1440),
}
WORKFLOW_CLAIM_CAP = env.int("WORKFLOW_CLAIM_CAP", default=10)
WORKFLOW_CLAIM_IDLE_MINUTES = env.int("WORKFLOW_CLAIM_IDLE_MINUTES", default=30)
WORKFLOW_SLA_FAST_PATH = env.bool("WORKFLOW_SLA_FAST_PATH", default=True)
WORKFLOW_ROUTE_GRACE_SECONDS = env.int("WORKFLOW_ROUTE_GRACE_SECONDS", default=60)
CELERY_BEAT_SCHEDULE["workflow-sweep"] = {
    "task": "workflow.tasks.sweep_reading_tasks",
    "schedule": env.float("WORKFLOW_SWEEP_SECONDS", default=30.0),
}
# Referrals and sharing: hours the receiver has to answer a referral, per
# urgency; how often an overdue one is recalled; second-opinion shares' default
# and longest life; the sweep that sends reminders and ends expired shares.
REFERRAL_RESPONSE_HOURS = {
    "emergency": env.int("REFERRAL_RESPONSE_EMERGENCY_HOURS", default=2),
    "urgent": env.int("REFERRAL_RESPONSE_URGENT_HOURS", default=24),
    "routine": env.int("REFERRAL_RESPONSE_ROUTINE_HOURS", default=72),
}
REFERRAL_REMINDER_HOURS = env.int("REFERRAL_REMINDER_HOURS", default=12)
SHARE_SECOND_OPINION_DAYS = env.int("SHARE_SECOND_OPINION_DAYS", default=14)
SHARE_MAX_DAYS = env.int("SHARE_MAX_DAYS", default=90)
CELERY_BEAT_SCHEDULE["workflow-referral-sweep"] = {
    "task": "workflow.referrals.tasks.sweep_referrals",
    "schedule": env.float("REFERRAL_SWEEP_SECONDS", default=60.0),
}
# Statistics: the weight of one signed study per modality in a radiologist's
# workload (JSON, "*" for any other modality), how often each edge's backlog is
# sampled, and the zone of the platform-wide figures' days.
STATISTICS_DEFAULT_WEIGHTS = {
    "CR": 0.5,
    "DX": 0.5,
    "XA": 1.0,
    "RF": 0.8,
    "US": 0.7,
    "MG": 0.8,
    "CT": 1.0,
    "MR": 1.5,
    "PT": 1.5,
    "NM": 1.0,
    "*": 1.0,
}
STATISTICS_MODALITY_WEIGHTS = env.json("STATISTICS_MODALITY_WEIGHTS", default=STATISTICS_DEFAULT_WEIGHTS)
STATISTICS_EDGE_SAMPLE_SECONDS = env.float("STATISTICS_EDGE_SAMPLE_SECONDS", default=900.0)
STATISTICS_PLATFORM_TIME_ZONE = env.str("STATISTICS_PLATFORM_TIME_ZONE", default="UTC")
# Ranges longer than this many days are summed from the daily rollups (approximate percentiles).
STATISTICS_ROLLUP_DAYS = env.int("STATISTICS_ROLLUP_DAYS", default=31)
# Days whose study rows changed are recomputed in the rollups this often (and before a long range is read).
STATISTICS_ROLLUP_SWEEP_SECONDS = env.float("STATISTICS_ROLLUP_SWEEP_SECONDS", default=60.0)
CELERY_BEAT_SCHEDULE["workflow-statistics-rollups"] = {
    "task": "workflow.statistics.tasks.refresh_stale_rollups",
    "schedule": STATISTICS_ROLLUP_SWEEP_SECONDS,
}
CELERY_BEAT_SCHEDULE["workflow-statistics-edge-backlog"] = {
    "task": "workflow.statistics.tasks.sample_edge_backlogs",
    "schedule": STATISTICS_EDGE_SAMPLE_SECONDS,
}
# Autodiscovery loads each app's own tasks module; a part's tasks are named here.
CELERY_IMPORTS = ["workflow.referrals.tasks", "workflow.statistics.tasks", "workflow.links.tasks"]
# Patients' consents past their expiry end, and the priors they gave are withdrawn (workflow.links).
CELERY_BEAT_SCHEDULE["workflow-consent-sweep"] = {
    "task": "workflow.links.tasks.sweep_consents",
    "schedule": env.float("CONSENT_SWEEP_SECONDS", default=60.0),
}

# Seeding: each app contributes its part of the demo, lowest layer first.
DEMO_SEEDERS = [
    "pacs_cloud.demo.seed",
    "archive.demo.seed",
    "archive.edge.demo.seed",
    "worklist.demo.seed",
    "workflow.demo.seed",
    "workflow.referrals.demo.seed",
]

# Worklist: accession numbers and patient IDs issued here ({prefix} is the
# institution's accession prefix, {date} its local date, {seq} a counter that
# restarts daily when the format has the date).
WORKLIST_ACCESSION_FORMAT = env.str("WORKLIST_ACCESSION_FORMAT", default="{prefix}{date:%y%m%d}{seq:04d}")
WORKLIST_PATIENT_ID_FORMAT = env.str("WORKLIST_PATIENT_ID_FORMAT", default="{prefix}{seq:08d}")

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="cloud-pacs@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"refusal_without_traceback": {"()": "pacs_cloud.lib.logfilters.RefusalWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "pynetdicom": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        # A 403 is logged as one line: refusals are expected, not faults.
        "django.request": {"filters": ["refusal_without_traceback"]},
        "django.security.csrf": {"filters": ["refusal_without_traceback"]},
    },
}

# Reports: the key that encrypts radiologists' signing keys at rest (base64 of
# 32 bytes; derived from SECRET_KEY when unset), the HL7 v2 outbound interface
# (host:port, MLLP; empty: none), how long a critical result may stay
# unacknowledged before it escalates to the coordinators, the sweep that
# escalates them and retries exports, and how many attempts an export gets.
# After the signer's password is re-entered, they sign without it for
# REPORTS_SIGN_WINDOW_SECONDS in that session (or with that token); 0 asks every time.
REPORTS_SIGN_WINDOW_SECONDS = env.int("REPORTS_SIGN_WINDOW_SECONDS", default=300)
REPORTS_KEY_ENCRYPTION_KEY = env.str("REPORTS_KEY_ENCRYPTION_KEY", default="")
REPORTS_HL7_OUTBOUND = env.str("REPORTS_HL7_OUTBOUND", default="")
REPORTS_HL7_TIMEOUT_SECONDS = env.float("REPORTS_HL7_TIMEOUT_SECONDS", default=10.0)
REPORTS_CRITICAL_ACK_MINUTES = env.int("REPORTS_CRITICAL_ACK_MINUTES", default=30)
REPORTS_EXPORT_MAX_ATTEMPTS = env.int("REPORTS_EXPORT_MAX_ATTEMPTS", default=8)
REPORTS_EXPORT_ON_SIGN = True  # queue the archive and HL7 exports when a version is signed
# The font the report PDF embeds for Chinese (and other non-Latin) text: a
# TrueType font or collection (first face); the Debian package
# fonts-wqy-zenhei installs the default. Checked by reports.W001.
REPORTS_PDF_CJK_FONT = env.str("REPORTS_PDF_CJK_FONT", default="/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
HOME_PANELS.append("reports.home.report_panels")
DEMO_SEEDERS.append("reports.demo.seed")
# The statistics summarise what every seeder before made: last.
DEMO_SEEDERS.append("workflow.statistics.demo.seed")
CELERY_BEAT_SCHEDULE["reports-sweep"] = {
    "task": "reports.tasks.sweep",
    "schedule": env.float("REPORTS_SWEEP_SECONDS", default=60.0),
}

# Break-glass (archive.breakglass): emergency read access outside a user's grants.
BREAK_GLASS_MINUTES = env.int("BREAK_GLASS_MINUTES", default=60)
HOME_PANELS.append("archive.breakglass.views.home_panels")
CELERY_IMPORTS.append("archive.breakglass.tasks")
CELERY_BEAT_SCHEDULE["archive-break-glass-sweep"] = {
    "task": "archive.breakglass.tasks.sweep_break_glass",
    "schedule": env.float("BREAK_GLASS_SWEEP_SECONDS", default=60.0),
}

# OHIF v3 at /ohif/ (viewer/ohif/): its prebuilt dist, installed by `make setup`.
OHIF_DIST_DIR = env.str("OHIF_DIST_DIR", default=str(BASE_DIR / "viewer" / "ohif" / "dist"))
