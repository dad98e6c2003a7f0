"""An open WebSocket holds no more authority than its session and memberships (real server, real client)."""

from __future__ import annotations

import json

import pytest
from django.contrib.sessions.models import Session
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pacs_cloud import push
from pacs_cloud.actions import do_remove_role, do_set_member_active
from pacs_cloud.consumers import CLOSE_SIGNED_OUT
from pacs_cloud.models import Membership, Role
from tests.conftest import web_client


def open_socket(live_url, client):
    url = live_url.replace("http://", "ws://") + "/ws/notifications/"
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return connect(url, additional_headers={"Cookie": cookie, "Origin": live_url})


def received(socket, timeout=5.0):
    return json.loads(socket.recv(timeout=timeout))


def assert_closed_signed_out(socket):
    with pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_SIGNED_OUT


def test_signing_out_closes_that_sessions_socket_and_no_other(tenants, live_url):
    user = tenants.a.radiologist
    leaving, staying = web_client(user), web_client(user)
    with open_socket(live_url, leaving) as socket, open_socket(live_url, staying) as other:
        push.send_now(push.user_group(user.pk), "task.offered", {"n": 1})
        assert received(socket)["topic"] == received(other)["topic"] == "task.offered"

        assert leaving.post("/logout/").status_code in (200, 302)
        assert_closed_signed_out(socket)

        push.send_now(push.user_group(user.pk), "task.offered", {"n": 2})
        assert received(other)["data"] == {"n": 2}


def test_a_removed_membership_stops_that_institutions_pushes_at_once(tenants, live_url):
    user = tenants.a.radiologist
    group = push.institution_group(tenants.a.institution.pk, Role.RADIOLOGIST)
    with open_socket(live_url, web_client(user)) as socket:
        push.send_now(group, "study.routed", {"n": 1})
        assert received(socket)["data"] == {"n": 1}

        membership = Membership.objects.get(user=user, institution=tenants.a.institution, role=Role.RADIOLOGIST)
        do_remove_role(membership, acting_user=tenants.a.institution_admin)
        # Sent straight after the removal, before the socket could have re-read anything.
        push.send_now(group, "study.routed", {"n": 2})
        push.send_now(push.user_group(user.pk), "personal", {"n": 3})
        assert received(socket) == {"topic": "personal", "data": {"n": 3}}


def test_a_deactivated_account_loses_its_socket(tenants, live_url):
    user = tenants.c.clinician
    with open_socket(live_url, web_client(user)) as socket:
        do_set_member_active(tenants.c.institution, user, False, acting_user=tenants.c.institution_admin)
        assert_closed_signed_out(socket)


def test_a_session_that_ended_unannounced_gets_no_more_pushes(tenants, live_url):
    user = tenants.b.clinician
    client = web_client(user)
    with open_socket(live_url, client) as socket:
        Session.objects.filter(session_key=client.cookies["sessionid"].value).delete()  # expired and cleared
        push.send_now(push.user_group(user.pk), "report.final", {"n": 1})
        assert_closed_signed_out(socket)


def test_another_process_ends_sessions_through_the_relay_and_only_known_events_pass(tenants, live_url):
    from django.core import signing

    user = tenants.b.radiologist
    with open_socket(live_url, web_client(user)) as socket:
        forged = {"group": push.user_group(user.pk), "topic": "", "data": {}, "event": {"type": "websocket.close"}}
        assert (
            web_client().post("/internal/push/", {"token": signing.dumps(forged, salt=push.RELAY_SALT)}).status_code
            == 400
        )
        ended = {**forged, "event": {"type": "session.ended", "session": None}}
        assert (
            web_client().post("/internal/push/", {"token": signing.dumps(ended, salt=push.RELAY_SALT)}).status_code
            == 204
        )
        assert_closed_signed_out(socket)
