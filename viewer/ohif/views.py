"""OHIF v3 served at ``/ohif/``: same origin, the browser session authenticates its DICOMweb requests.

The pinned build (``viewer/ohif/package.json``, installed into
``OHIF_DIST_DIR`` by ``install.sh``) is served as it is, except two files we
write: ``index.html`` with its public path moved under ``/ohif/``, and
``app-config.js``, whose one data source is our ``/dicomweb/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

from csp.decorators import csp_replace
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET
from django.views.static import serve

PREFIX = "/ohif/"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def dist() -> Path:
    return Path(settings.OHIF_DIST_DIR)


@lru_cache(maxsize=4)
def _index(path: str, mtime: float) -> tuple[str, tuple[str, ...]]:
    """``index.html`` under ``/ohif/``, and the CSP hashes of its inline scripts."""
    html = Path(path).read_text(encoding="utf-8")
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}"')
    html = re.sub(r'(src|href)="/(?!/)', rf'\1="{PREFIX}', html)
    hashes = tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.finditer(html)
    )
    return html, hashes


# OHIF decodes images in WebAssembly and web workers and styles itself inline.
_OHIF_CSP = {
    "script-src": ["'self'", "'wasm-unsafe-eval'"],
    "worker-src": ["'self'", "blob:"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "font-src": ["'self'", "data:"],
}


def csp_for_ohif(view):  # type: ignore[no-untyped-def]
    return csp_replace(_OHIF_CSP)(view)


@login_required
@require_GET
def index(request: HttpRequest, path: str = "") -> HttpResponse:
    """The single-page application: any path that is not a file of the build."""
    page = dist() / "index.html"
    if not page.is_file():
        raise Http404("OHIF is not installed (make setup).")
    html, hashes = _index(str(page), page.stat().st_mtime)
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    policy = dict(_OHIF_CSP)
    policy["script-src"] = [*policy["script-src"], *hashes]
    response._csp_replace = policy  # type: ignore[attr-defined]  # what django-csp's csp_replace sets
    return response


def app_config(request: HttpRequest) -> dict:
    root = request.build_absolute_uri("/dicomweb").rstrip("/")
    return {
        "routerBasename": PREFIX.rstrip("/"),
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": "cloudpacs",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "cloudpacs",
                "configuration": {
                    "friendlyName": "Cloud PACS",
                    "name": "cloudpacs",
                    "wadoUriRoot": root,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                    # Same origin: the session cookie goes with every request.
                    "requestOptions": {"requestCredentials": "same-origin"},
                },
            }
        ],
    }


@login_required
@csp_for_ohif
@require_GET
def config_script(request: HttpRequest) -> HttpResponse:
    body = f"window.config = {json.dumps(app_config(request), indent=1)};\n"
    response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def asset(request: HttpRequest, path: str) -> HttpResponseBase:
    """A file of the build (code, styles, WebAssembly, fonts); other paths are the application's routes."""
    root = dist()
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file() or target.name == "index.html":
        return index(request, path)
    response = serve(request, path, document_root=str(root))
    response._csp_replace = _OHIF_CSP  # type: ignore[union-attr]
    # Bundles carry a content hash in their names; the rest may change with an upgrade.
    hashed = re.search(r"\.[0-9a-f]{16}\.", target.name) is not None
    response["Cache-Control"] = "public, max-age=31536000, immutable" if hashed else "no-cache"
    return response
