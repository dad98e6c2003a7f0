"""The edge gateway: the hospital's front server, and what the cloud keeps about it.

Edge side (``PACS_ROLE=edge``, ``manage.py edge_gateway``): the DICOM
services on the edge AE (:mod:`.scp`), the durable outbox (:mod:`.outbox`,
its own SQLite file), the forwarder to the cloud over STOW-RS
(:mod:`.forwarder`), the replica of the institution's worklist
(:mod:`.replica`), the online tier (:mod:`.tier`) and the status page
(:mod:`.status`). It needs no database server: Django's ORM is not used there.

Cloud side: enrolment, tokens and health (:mod:`.enrolment`), the endpoints
an edge calls (:mod:`.cloud_api`) and the institution admins' pages
(:mod:`.pages`).
"""

VERSION = "1.0"
