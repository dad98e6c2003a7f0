"""The tenant-isolation harness: no route gives one institution anything of another's.

What it does
============

``tests/isolation/test_isolation.py`` builds three institutions (``a`` and
``b`` work together, ``c`` is the outsider), each with a user in every role,
and runs every registered *factory* for each of them, so every kind of object
exists at every institution. Then, as every one of those users, as a
platform administrator and anonymously, it walks **every route of the URL
resolver** — every path of the OpenAPI schema, every ``/dicomweb/`` route and
every page — and for each route and method:

* fills the path parameters with *another* institution's objects and asserts
  the answer is a refusal — 401, 403, 404 or 405 (a redirect to the sign-in
  page for anonymous callers) — and exactly what the same request gets for
  objects that do not exist (``404 alike for missing and not yours``);
* asserts that no response — lists included — contains any *secret string* of
  an institution the user does not belong to (patient names and IDs,
  accession numbers, member names, token names);
* asserts, with the owners' own objects, that at least one of the owning
  institution's users does get a 2xx from each GET route — so a factory that
  produces wrong ids cannot make the walk pass by 404-ing everything.

It **fails when a route has a path parameter no registration can fill**: you
cannot add a route without telling the harness which object goes into it.
``test_harness_bites.py`` proves all of this on a deliberately unsafe view.

Registering your app
====================

Create ``tests/<your app>/isolation.py``; the harness imports every such
module. In it:

1. A factory per kind of object, creating it for one institution and
   returning the values routes need plus the strings that must never leak::

       from tests import isolation

       @isolation.factory
       def reading_task(tenant):
           task = make_task(tenant.institution, patient_name=f"Secret{token}^X")
           return isolation.Made(
               values={"reading_task.id": task.pk},
               secrets=[f"Secret{token}"],
           )

   ``tenant`` is a ``tests.conftest.Tenant`` (``tenant.institution``,
   ``tenant.radiologist``, ...). Use random tokens in secrets so they cannot
   occur by chance; use components that survive rendering (a PN's family
   name rather than ``FAMILY^GIVEN``, which a page shows as ``FAMILY, GIVEN``).
   Modules load in layer order (pacs_cloud, archive, worklist, workflow,
   viewer, reports, then any other), factories in file order; a factory may
   read what earlier ones made for the same institution from ``tenant.made``
   (``tenant.made["study.uid"]``), e.g. to hang a report on the archive's
   study. Storage points at a temporary folder.

2. Which value fills each path parameter. Parameter names used the same way
   everywhere are mapped once; the rest per route (the template is the
   resolver's, ``{name}`` for each parameter; the failure message prints it)::

       isolation.param("study_uid", "study.uid")          # every route
       isolation.route("/api/v1/reading-tasks/{pk}/", pk="reading_task.id")
       isolation.route("/api/v1/reports/{pk}/sign/", pk="report.id",
                       bodies={"post": {"password": isolation.const("x")}})

   ``isolation.const("1")`` fills a parameter (or a body field) with a fixed
   value, e.g. a frame number. ``bodies`` gives the JSON body sent with an
   unsafe method (default: none); values in it are ``isolation.Ref("kind.attr")``,
   ``const`` or plain JSON; wrap it in ``isolation.Form({...})`` for a browser
   form. ``queries`` gives query strings to try on a GET
   (``queries=[{"PatientID": isolation.Ref("patient.patient_id")}]``).
   ``open_to={"platform"}`` lets a platform administrator legitimately get a
   2xx (still never a secret). ``also_allowed={400, 415}`` accepts statuses
   that say nothing about the object (a body refused before any lookup),
   still only when a missing object gets the same. ``reachable=False`` (with a
   reason) skips the owner check for a route no user can GET.

3. Routes that hold no tenant data and cannot take another tenant's objects
   may be exempted, with a reason: ``isolation.exempt("/logout/", "...")``.

Run just the harness with ``pytest tests/isolation``.
"""

from .registry import REGISTRY, Const, Form, Made, Ref, const, exempt, factory, param, route

__all__ = ["REGISTRY", "Const", "Form", "Made", "Ref", "const", "exempt", "factory", "param", "route"]
