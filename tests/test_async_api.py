"""The import/export JSON API, the admin pages, the commands, and the checks."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from api_tokens.models import ApiToken
from async_tasks import checks
from async_tasks.models import AsyncTask
from catalog.models import Product
from tests.conftest import check_error_codes, drain, product_csv

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("task_storage", "redis_conn")]


def user_with(username: str, *codenames: str, staff: bool = False) -> User:
    user = User.objects.create_user(username, password="pw-123-secret", is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def importer():
    return user_with("ann", "add_product", "change_product", "view_product")


@pytest.fixture
def ann(importer):
    client = Client()
    client.force_login(importer)
    return client


def upload(client, data: bytes, name: str = "p.csv", **fields):
    return client.post("/api/import/catalog.Product", {"file": SimpleUploadedFile(name, data), **fields})


def test_import_answers_202_runs_on_the_queue_and_downloads_errors(ann):
    data = product_csv(3) + b"BAD,x,notaprice,1,true,2024-01-01\n"
    response = upload(ann, data, mode="insert")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["kind"], body["model"], body["owner"]) == (
        "queued",
        "import",
        "catalog.Product",
        "ann",
    )
    assert not Product.objects.exists()  # the request node only queued it
    drain("async-task:process")
    detail = ann.get(f"/api/tasks/{body['id']}").json()
    assert detail["status"] == "succeeded"
    assert detail["summary"] == {"created": 3, "updated": 0, "skipped": 0, "failed": 1}
    assert detail["progress"] == {"done": 4, "total": 4, "percent": 100, "yielding": False, "pace": None}
    report = ann.get(detail["links"]["errors"])
    assert report.status_code == 200
    assert report["Content-Disposition"] == f'attachment; filename="product-import-{body["id"]}-errors.csv"'
    assert b"notaprice" in b"".join(report.streaming_content)


def test_export_answers_202_and_the_file_downloads(ann):
    Product.objects.create(sku="X-1", name="=danger()", price=1, quantity=1)
    Product.objects.create(sku="X-2", name="other", price=1, quantity=1, active=False)
    response = ann.post(
        "/api/export/catalog.product",
        json.dumps({"format": "csv", "fields": ["sku", "name"], "filters": {"active__exact": "1"}}),
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    drain("async-task:process")
    task_id = response.json()["id"]
    download = ann.get(f"/api/tasks/{task_id}/download")
    assert download.status_code == 200
    content = b"".join(download.streaming_content).decode("utf-8-sig")
    assert content.splitlines() == ["sku,name", "X-1,'=danger()"]


def test_the_api_needs_authentication_and_model_permissions(client):
    assert upload(client, product_csv(1)).status_code == 401
    viewer = user_with("vic", "view_product")
    client.force_login(viewer)
    response = upload(client, product_csv(1))
    assert response.status_code == 403
    assert response.json()["error"] == "You may not import into catalog.Product in mode 'insert'."
    adder = user_with("ada", "add_product")
    client.force_login(adder)
    assert upload(client, product_csv(1), mode="update").status_code == 403  # update needs change too
    assert upload(client, product_csv(1), mode="skip").status_code == 202
    nobody = user_with("nob")
    client.force_login(nobody)
    assert (
        client.post("/api/export/catalog.Product", "{}", content_type="application/json").status_code == 403
    )
    assert not AsyncTask.objects.filter(owner=nobody).exists()


def test_another_users_task_is_404_unless_staff_with_view_all(ann):
    task = AsyncTask.objects.get(pk=upload(ann, product_csv(1)).json()["id"])
    drain("async-task:process")
    other = Client()
    other.force_login(user_with("bob", "add_product", "view_product"))
    for url in (f"/api/tasks/{task.pk}", f"/api/tasks/{task.pk}/download?file=errors"):
        assert other.get(url).status_code == 404
    assert other.post(f"/api/tasks/{task.pk}/cancel").status_code == 404
    assert other.get("/api/tasks").json()["count"] == 0
    auditor = Client()
    auditor.force_login(user_with("aud", "view_all_tasks", staff=True))
    assert auditor.get(f"/api/tasks/{task.pk}").status_code == 200
    not_staff = Client()
    not_staff.force_login(user_with("ns", "view_all_tasks"))
    assert not_staff.get(f"/api/tasks/{task.pk}").status_code == 404


def test_cancel_through_the_api(ann):
    task_id = upload(ann, product_csv(5)).json()["id"]
    response = ann.post(f"/api/tasks/{task_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    drain("async-task:process")
    assert not Product.objects.exists()
    assert ann.post(f"/api/tasks/{task_id}/cancel").status_code == 409


def test_uploads_over_the_limit_are_refused(ann, settings):
    settings.ASYNC_TASKS_MAX_UPLOAD_SIZE = 1000
    response = upload(ann, product_csv(100))
    assert response.status_code == 413
    assert response.json()["error"] == "The upload exceeds 1000 bytes."
    assert not AsyncTask.objects.exists()
    settings.ASYNC_TASKS_MAX_UPLOAD_SIZE = 100_000
    assert upload(ann, product_csv(100)).status_code == 202


def test_file_names_are_never_trusted(ann, task_storage):
    response = upload(ann, product_csv(1), name="../../etc/passwd.csv")
    assert response.status_code == 202
    task = AsyncTask.objects.get()
    assert task.source_name == "passwd.csv"
    assert task.source_file.startswith("uploads/") and ".." not in task.source_file
    assert (task_storage / task.source_file).is_file()


def test_session_posts_need_csrf(importer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(importer)
    assert upload(client, product_csv(1)).status_code == 403


def test_token_auth_and_bad_requests(importer):
    _, raw = ApiToken.issue(importer, "script")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.post("/api/import/catalog.Product").json()["error"].startswith("Send the file")
    assert upload(client, b"x", name="p.pdf").json()["error"].startswith("Cannot tell the format")
    assert upload(client, b"x", mode="merge").status_code == 400
    assert client.post("/api/import/auth.User").status_code == 404
    bad = client.post("/api/export/catalog.Product", "[1]", content_type="application/json")
    assert bad.status_code == 400
    template = client.get("/api/import/catalog.Product/template?format=csv")
    assert (
        b"".join(template.streaming_content).decode("utf-8-sig")
        == "sku,name,price,quantity,active,created\r\n"
    )


def test_the_import_template_needs_the_import_permission():
    viewer = Client()
    viewer.force_login(user_with("viewer", "view_product"))  # may export, may not import
    response = viewer.get("/api/import/catalog.Product/template?format=csv")
    assert response.status_code == 403 and "may not import" in response.json()["error"]
    updater = Client()
    updater.force_login(user_with("updater", "change_product"))  # update_only imports
    assert updater.get("/api/import/catalog.Product/template?format=xlsx").status_code == 200


def admin_client(*codenames: str) -> Client:
    client = Client()
    client.force_login(user_with("staffer", *codenames, staff=True))
    return client


def test_admin_changelist_has_import_and_export_and_they_create_tasks():
    client = admin_client("view_product", "add_product", "view_asynctask")
    page = client.get("/admin/catalog/product/?active__exact=1")
    assert b'href="/admin/catalog/product/import/"' in page.content
    assert b"/admin/catalog/product/export/?_changelist_filters=active__exact%3D1" in page.content
    response = client.post(
        "/admin/catalog/product/import/",
        {"file": SimpleUploadedFile("p.csv", product_csv(2)), "mode": "insert"},
    )
    task = AsyncTask.objects.get(kind="import")
    assert (
        response.status_code == 302
        and response["Location"] == f"/admin/async_tasks/asynctask/{task.pk}/change/"
    )
    form = client.get("/admin/catalog/product/export/?_changelist_filters=active__exact%3D1")
    assert b"active__exact=1" in form.content
    client.post("/admin/catalog/product/export/?_changelist_filters=active__exact%3D1", {"format": "xlsx"})
    export = AsyncTask.objects.get(kind="export")
    assert export.parameters["filters"] == [["active__exact", "1"]] and export.format == "xlsx"
    drain("async-task:process")
    listing = client.get("/admin/async_tasks/asynctask/?status__exact=succeeded")
    assert listing.status_code == 200 and b'<progress value="100"' in listing.content
    download = client.get(f"/admin/async_tasks/asynctask/{export.pk}/download/")
    assert download.status_code == 200


def test_admin_import_refused_without_add_permission_and_tasks_are_per_user():
    viewer = admin_client("view_product", "view_asynctask")
    assert b"/import/" not in viewer.get("/admin/catalog/product/").content
    assert viewer.get("/admin/catalog/product/import/").status_code == 403
    someone = User.objects.create_user("someone")
    task = AsyncTask.objects.create(kind="export", model="catalog.Product", format="csv", owner=someone)
    assert viewer.get(f"/admin/async_tasks/asynctask/{task.pk}/change/").status_code == 302  # not found
    assert viewer.get(f"/admin/async_tasks/asynctask/{task.pk}/download/").status_code == 404


def test_admin_buttons_disappear_when_a_model_is_no_longer_allowed(settings):
    client = admin_client("view_product", "add_product")
    settings.ASYNC_TASKS_MODELS = {}
    page = client.get("/admin/catalog/product/")
    assert page.status_code == 200 and b"/import/" not in page.content
    assert client.get("/admin/catalog/product/import/").status_code == 404


def test_admin_cancel_action():
    client = admin_client("view_asynctask")
    user = User.objects.get(username="staffer")
    task = AsyncTask.objects.create(kind="export", model="catalog.Product", format="csv", owner=user)
    response = client.post(f"/admin/async_tasks/asynctask/{task.pk}/cancel/")
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.status == "canceled"


def test_importrecords_and_exportrecords_commands(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(product_csv(4) + b"P9,bad,x\n")
    errors = tmp_path / "errors.csv"
    out = io.StringIO()
    call_command(
        "importrecords",
        "catalog.Product",
        str(source),
        "--errors",
        str(errors),
        stdout=out,
        stderr=io.StringIO(),
    )
    assert "succeeded: 4 created, 0 updated, 0 skipped, 1 failed" in out.getvalue()
    assert "P9,bad,x" in errors.read_text(encoding="utf-8-sig")
    target = tmp_path / "out.xlsx"
    call_command(
        "exportrecords",
        "catalog.Product",
        "-o",
        str(target),
        "--filter",
        "q=P00000",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert "4 rows written" in out.getvalue() and target.stat().st_size > 0
    call_command("importrecords", "catalog.Product", str(source), "--async", stdout=out)
    assert AsyncTask.objects.filter(status="queued").count() == 1
    with pytest.raises(CommandError, match="Unknown column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("nope\n1\n")
        call_command("importrecords", "catalog.Product", str(bad), stderr=io.StringIO())
    with pytest.raises(CommandError, match="Give --output FILE"):
        call_command("exportrecords", "catalog.Product")


def test_checks(settings):
    assert check_error_codes(checks.check_settings()) == []
    settings.ASYNC_TASKS_MODELS = {"catalog.Product": {"fields": ["sku", "nope"]}, "no.Model": {}}
    settings.ASYNC_TASKS_STORAGE = "missing"
    settings.ASYNC_TASKS_BATCH_SIZE = 0
    settings.ASYNC_TASKS_CLEANUP_INTERVAL = -1
    codes = check_error_codes(checks.check_settings())
    assert codes == [
        "async_tasks.E001",
        "async_tasks.E001",
        "async_tasks.E002",
        "async_tasks.E004",
        "async_tasks.E004",
    ]
    settings.ASYNC_TASKS_MODELS = {"catalog.Product": {"fields": ["name"], "identifier": "name"}}
    assert "must be a unique field" in checks.check_settings()[0].msg


def test_checks_are_bound(settings):
    settings.ASYNC_TASKS_BATCH_SIZE = "many"
    with pytest.raises(Exception, match="async_tasks.E004"):
        call_command("check")


def test_the_task_list_says_how_many_rows_failed_and_why_a_task_failed():
    client = admin_client("view_product", "add_product", "view_asynctask")
    client.post(
        "/admin/catalog/product/import/",
        {
            "file": SimpleUploadedFile("p.csv", product_csv(3) + b"BAD-1,Broken,x,1,true,2024-01-01\n"),
            "mode": "insert",
        },
    )
    staffer = User.objects.get(username="staffer")
    failed = AsyncTask.objects.create(
        kind="import", model="catalog.Product", format="csv", owner=staffer, status="failed",
        error="The file has no header row.\nTraceback lines nobody needs here",
    )  # fmt: skip
    drain("async-task:process")
    task = AsyncTask.objects.get(kind="import", status="succeeded")
    html = client.get("/admin/async_tasks/asynctask/").content.decode()
    assert (
        "Succeeded, 1 row failed</span> "
        f'<a href="/admin/async_tasks/asynctask/{task.pk}/download/?file=errors">report</a>' in html
    )
    assert (
        '<span class="task-status task-failed">Failed</span>'
        '<div class="task-reason">The file has no header row.</div>' in html
    )
    assert "Traceback lines" not in html  # the first line is the reason; the page has the rest
    assert client.get(f"/admin/async_tasks/asynctask/{failed.pk}/change/").status_code == 200
