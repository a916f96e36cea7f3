"""The admin: staff see the queue with positions and cancel through the same service as the API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from queueing import transitions
from queueing.models import Job, Kind, Status
from queueing.spec import JobSpec

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_workers")]

CHANGELIST = "/admin/queueing/job/"


def enqueue(text: str, priority: int = 0) -> Job:
    spec = JobSpec(
        kind=Kind.QUEUED,
        endpoint="chat",
        model="llama3.2:1b",
        payload={"model": "llama3.2:1b", "messages": [{"role": "user", "content": text}]},
        cache_key=f"v1:{text}",
        priority=priority,
    )
    return transitions.enqueue_request(spec).job


def cancel_action(client, jobs):
    return client.post(
        CHANGELIST, {"action": "cancel_selected", "_selected_action": [str(j.id) for j in jobs]}, follow=True
    )


def test_staff_sees_positions_and_cancels_selected(admin_client):
    first, second = enqueue("first question"), enqueue("second question", priority=2)
    done = enqueue("finished one")
    Job.objects.filter(id=done.id).update(status=Status.COMPLETED)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert str(first.id) in html and "Queue position" in html
    detail = admin_client.get(f"{CHANGELIST}{first.id}/change/")
    assert detail.status_code == 200 and "first question" in detail.content.decode()

    response = cancel_action(admin_client, [first, second, done])
    assert "Cancelled 2 request(s); 1 were already finished." in response.content.decode()
    statuses = dict(Job.objects.values_list("id", "status"))
    assert statuses == {first.id: Status.CANCELLED, second.id: Status.CANCELLED, done.id: Status.COMPLETED}


def test_search_by_id_and_by_content(admin_client):
    job, other = enqueue("about penguins"), enqueue("about rust")
    by_id = admin_client.get(CHANGELIST, {"q": str(job.id)}).content.decode()
    by_text = admin_client.get(CHANGELIST, {"q": "penguins"}).content.decode()
    assert str(job.id) in by_id and str(other.id) not in by_id
    assert str(job.id) in by_text and str(other.id) not in by_text


def test_anonymous_and_non_staff_cannot_cancel(client):
    job = enqueue("keep me")
    anonymous = cancel_action(client, [job])
    assert "login" in anonymous.redirect_chain[-1][0]
    User.objects.create_user("mallory", password="pw-123456", is_staff=False)
    client.login(username="mallory", password="pw-123456")
    cancel_action(client, [job])
    assert Job.objects.get(id=job.id).status == Status.PENDING
