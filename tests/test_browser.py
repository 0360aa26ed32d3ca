"""The admin in a real browser (Debian's headless Chromium through Selenium) against a real
all-in-one node: login, the Cluster page, an import with its progress bar, a workflow
execution's page. Screenshots go to var/screenshots/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from async_tasks.models import AsyncTask
from catalog import demo
from catalog.models import Order, Product
from tests.conftest import ROOT, free_port, product_csv, shared_database_url, wait_for_http, wait_until
from workflows.models import Execution

pytestmark = [pytest.mark.processes, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail("Debian's chromium and chromium-driver are missing; `make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def node(start_node, site_env, task_storage):
    url = shared_database_url()
    port = free_port()
    demo.load(f"http://127.0.0.1:{port}/catalog/webhook")
    env = {
        **site_env,
        "DATABASE_URL": url,
        "CONN_MAX_AGE": "0",
        "ASYNC_TASKS_DIR": str(task_storage),
        "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1",
        "NODE_NAME": "browser-node",
    }
    process = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "", **env)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process, timeout=40)
    return base


def shot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, path  # a rendered page, not a blank one
    return path


def test_the_admin_in_a_browser(browser, node, tmp_path):
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("admin", "admin@example.com", "pw-admin-12345")
    browser.get(f"{node}/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("pw-admin-12345")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "Site administration" in browser.title, timeout=15)
    shot(browser, "01-admin-index.png")

    # The Cluster page shows this node's processes and both services served by it.
    def cluster_ready():
        browser.get(f"{node}/admin/worker_mode/cluster/")
        return "browser-node" in browser.find_element(By.ID, "cluster-nodes").text

    wait_until(cluster_ready, timeout=20, interval=0.5)
    services = browser.find_element(By.ID, "cluster-services").text
    assert "workflow:process" in services and "async-task:process" in services
    shot(browser, "02-cluster.png")

    # An import from the product changelist, then its task page with the progress bar.
    upload = tmp_path / "products.csv"
    upload.write_bytes(product_csv(300) + b"BAD-1,Broken,not-a-price,1,true,2024-01-01\n")
    browser.get(f"{node}/admin/catalog/product/")
    browser.find_element(By.CSS_SELECTOR, ".object-tools a[href$='/import/']").click()
    browser.find_element(By.NAME, "file").send_keys(str(upload))
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "/admin/async_tasks/asynctask/" in browser.current_url, timeout=15)
    task = AsyncTask.objects.get()
    wait_until(lambda: AsyncTask.objects.get(pk=task.pk).status == "succeeded", timeout=30)
    browser.get(f"{node}/admin/async_tasks/asynctask/")
    progress = browser.find_element(By.CSS_SELECTOR, "#result_list progress")
    assert progress.get_attribute("value") == "100"
    assert "300 created" in browser.find_element(By.ID, "result_list").text
    shot(browser, "03-import-tasks.png")
    assert Product.objects.filter(sku__startswith="P").count() == 300

    # A workflow execution's page: an order triggers the demo workflow on this node.
    order = Order.objects.create(product=Product.objects.get(sku="P000010"), quantity=2, customer="Browser")
    wait_until(lambda: Execution.objects.filter(status="resolved").exists(), timeout=30)
    execution = Execution.objects.get()
    browser.get(f"{node}/admin/workflows/execution/{execution.pk}/change/")
    page = browser.find_element(By.ID, "content").text
    assert "resolved" in page and "decrement" in page
    shot(browser, "04-execution.png")
    order.refresh_from_db()
    assert order.status == "accepted"
