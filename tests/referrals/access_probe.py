"""What a user gets for one study on every way in: REST, QIDO-RS, WADO-RS and the viewer."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.conftest import api_client, web_client


@dataclass
class Seen:
    rest: int
    qido: list[str]  # Study Instance UIDs found by a QIDO-RS search on the UID
    metadata: int
    viewer: int
    manifest: int

    @property
    def everywhere(self) -> bool:
        return self.rest == self.metadata == self.viewer == self.manifest == 200 and bool(self.qido)

    @property
    def nowhere(self) -> bool:
        """Refused on every way in (404 alike for missing and not yours; 403 for a caller with no clinical role)."""
        return {self.rest, self.metadata, self.viewer, self.manifest} <= {403, 404} and not self.qido


def probe(user, study) -> Seen:
    api = api_client(user)
    uid = study.study_instance_uid
    rest = api.get(f"/api/v1/studies/{study.pk}/").status_code
    search = api.get("/dicomweb/studies", {"StudyInstanceUID": uid}, HTTP_ACCEPT="application/dicom+json")
    found = []
    if search.status_code == 200 and search.content:
        found = [row["0020000D"]["Value"][0] for row in json.loads(search.content)]
    else:
        assert search.status_code == 204, search.status_code
    metadata = api.get(f"/dicomweb/studies/{uid}/metadata").status_code
    browser = web_client(user)
    viewer = browser.get(f"/viewer/studies/{study.pk}/").status_code
    manifest = browser.get(f"/api/v1/viewer/studies/{study.pk}/").status_code
    return Seen(rest, found, metadata, viewer, manifest)
