"""django-rq's queue pages behind worker_mode's permissions: view_cluster to look, control_queues to act."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from worker_mode import get_queue

pytestmark = pytest.mark.django_db

WF = "workflow:process"


def staff(*codenames: str, superuser: bool = False) -> Client:
    user = User.objects.create_user(f"u{User.objects.count()}", password="pw-123-secret", is_staff=True,
                                    is_superuser=superuser)  # fmt: skip
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def queue_index(name: str) -> int:
    from django_rq.settings import get_queues_list

    return [q["name"] for q in get_queues_list()].index(name)


@pytest.fixture
def queued(redis_conn):
    get_queue(WF).enqueue("tests.jobs.mark", "x")
    return queue_index(WF)


def test_a_staff_user_without_permissions_can_neither_see_nor_empty_a_queue(queued, redis_conn):
    client = staff()
    assert client.get(f"/django-rq/queues/{queued}/").status_code == 403
    assert client.post(f"/django-rq/queues/{queued}/empty/", {"post": "yes"}).status_code == 403
    assert redis_conn.llen(f"rq:queue:{WF}") == 1  # still there


def test_view_cluster_may_look_but_not_act(queued, redis_conn):
    client = staff("view_cluster")
    assert client.get(f"/django-rq/queues/{queued}/").status_code == 200
    assert client.get(f"/django-rq/workers/{queued}/").status_code == 200
    for action in ("empty/", "requeue-all/", "failed/clear/"):
        assert client.post(f"/django-rq/queues/{queued}/{action}", {"post": "yes"}).status_code == 403
    job_id = get_queue(WF).job_ids[0]
    assert client.get(f"/django-rq/queues/{queued}/{job_id}/").status_code == 200
    assert client.post(f"/django-rq/queues/{queued}/{job_id}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"/django-rq/queues/actions/{queued}/", {"action": "delete"}).status_code == 403
    assert redis_conn.llen(f"rq:queue:{WF}") == 1


@pytest.mark.parametrize("codenames,superuser", [(("view_cluster", "control_queues"), False), ((), True)])
def test_control_queues_or_a_superuser_may_empty_a_queue(queued, redis_conn, codenames, superuser):
    client = staff(*codenames, superuser=superuser)
    response = client.post(f"/django-rq/queues/{queued}/empty/", {"post": "yes"})
    assert response.status_code == 302
    assert redis_conn.llen(f"rq:queue:{WF}") == 0


def test_anonymous_users_are_sent_to_the_login(queued):
    response = Client().get(f"/django-rq/queues/{queued}/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_django_rq_s_own_admin_entry_is_not_served(queued):
    client = staff()
    assert client.get(f"/admin/django_rq/dashboard/queues/{queued}/empty/").status_code == 404
    assert client.get("/admin/").content.decode().count("django_rq") == 0


def test_the_cluster_page_links_each_key_to_its_own_queue(queued):
    from worker_mode.admin import _queue_links

    for name, link in _queue_links().items():
        response = staff("view_cluster").get(link)
        assert response.status_code == 200 and name in response.content.decode()
    assert _queue_links()[WF] == f"/django-rq/queues/{queued}/"


def test_the_dashboard_and_its_stats_need_view_cluster(queued):
    assert staff().get("/django-rq/").status_code == 403
    assert staff().get("/django-rq/stats.json").status_code == 403
    viewer = staff("view_cluster")
    assert viewer.get("/django-rq/").status_code == 200
    assert viewer.get("/django-rq/stats.json").status_code == 200


def test_pages_of_things_that_do_not_exist_are_404_not_500(queued, redis_conn):
    viewer = staff("view_cluster")
    for url in ("/django-rq/queues/99/", "/django-rq/workers/99/", "/django-rq/workers/0/nonexistent/",
                f"/django-rq/queues/{queued}/no-such-job/", "/django-rq/schedulers/0/"):  # fmt: skip
        assert viewer.get(url).status_code == 404, url
    root = staff(superuser=True)
    response = root.post(f"/django-rq/queues/actions/{queued}/", {"action": "delete", "job_ids": ["x"]})
    assert response.status_code in (302, 404)  # never a 500


def test_django_rq_admin_lists_the_service_queues(admin_client, redis_conn):
    response = admin_client.get("/django-rq/")
    assert response.status_code == 200
    assert b"workflow:process" in response.content
    assert b"async-task:process" in response.content


def test_django_rq_views_are_staff_only(client):
    response = client.get("/django-rq/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
