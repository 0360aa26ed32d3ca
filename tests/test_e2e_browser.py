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


def log_in(driver, node: str, username: str) -> None:
    """A new superuser ``username``, logged in to the admin through its login form."""
    from selenium.webdriver.common.by import By

    password = f"pw-{username}-12345"
    User.objects.create_superuser(username, f"{username}@example.com", password)
    driver.get(f"{node}/admin/login/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "Site administration" in driver.title, timeout=15)


def shot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, path  # a rendered page, not a blank one
    return path


def test_the_admin_in_a_browser(browser, node, tmp_path):
    from selenium.webdriver.common.by import By

    log_in(browser, node, "admin")
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
    assert "Succeeded, 1 row failed" in browser.find_element(By.ID, "result_list").text
    # Readable at 1,400 px: every column in view, no sideways scrolling.
    assert browser.execute_script(
        "var t = document.getElementById('result_list'); return t.scrollWidth <= t.parentElement.clientWidth"
    )
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


def test_a_workflow_built_with_the_forms_and_the_picker(browser, node):
    """Collection trigger on Order create -> condition -> update, built without writing JSON."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from workflows.models import Workflow

    log_in(browser, node, "builder")

    def visible(element) -> bool:
        return element.is_displayed()

    browser.get(f"{node}/admin/workflows/workflow/add/")
    browser.find_element(By.NAME, "title").send_keys("Big orders")
    browser.find_element(By.NAME, "key").send_keys("big-orders")
    browser.find_element(By.NAME, "enabled").click()
    assert not visible(browser.find_element(By.NAME, "trigger_cron"))
    Select(browser.find_element(By.NAME, "trigger_type")).select_by_value("collection")
    # The trigger's own fields, and no others, once the type is picked.
    assert visible(browser.find_element(By.NAME, "trigger_collection"))
    assert not visible(browser.find_element(By.NAME, "trigger_cron"))
    assert not visible(browser.find_element(By.NAME, "trigger_config"))  # JSON only on request
    Select(browser.find_element(By.NAME, "trigger_collection")).select_by_value("catalog.Order")
    browser.find_element(By.CSS_SELECTOR, 'input[name="trigger_events"][value="created"]').click()
    shot(browser, "05-workflow-trigger.png")

    # First node: a condition, its expression written with the picker.
    browser.find_element(By.CSS_SELECTOR, "#nodes-group .add-row a").click()
    first = browser.find_element(By.ID, "nodes-0")
    first.find_element(By.NAME, "nodes-0-key").send_keys("big")
    Select(first.find_element(By.NAME, "nodes-0-type")).select_by_value("condition")
    expression = first.find_element(By.NAME, "nodes-0-expression")
    assert visible(expression) and not visible(first.find_element(By.NAME, "nodes-0-url"))
    expression.click()
    pick = '#nodes-0 .wf-var[data-insert="{{ $context.data.quantity }}"]'
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, pick), timeout=10, interval=0.2)
    browser.find_element(By.CSS_SELECTOR, pick).click()
    expression.send_keys(" > 1")
    assert expression.get_attribute("value") == "{{ $context.data.quantity }} > 1"

    # Second node, on the true branch: update the order, its filter value from the picker.
    browser.find_element(By.CSS_SELECTOR, "#nodes-group .add-row a").click()
    second = browser.find_element(By.ID, "nodes-1")
    second.find_element(By.NAME, "nodes-1-key").send_keys("mark")
    Select(second.find_element(By.NAME, "nodes-1-type")).select_by_value("update")
    second.find_element(By.NAME, "nodes-1-upstream").send_keys("big")
    Select(second.find_element(By.NAME, "nodes-1-branch")).select_by_value("true")
    Select(second.find_element(By.NAME, "nodes-1-collection")).select_by_value("catalog.Order")
    assert visible(second.find_element(By.NAME, "nodes-1-filter__field_0"))
    assert not visible(second.find_element(By.NAME, "nodes-1-expression"))
    second.find_element(By.NAME, "nodes-1-filter__field_0").send_keys("id")
    value = second.find_element(By.NAME, "nodes-1-filter__value_0")
    value.click()
    pick = '#nodes-1 .wf-var[data-insert="{{ $context.data.id }}"]'
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, pick), timeout=10, interval=0.2)
    # The picker knows what runs before this node: the condition's result.
    assert browser.find_elements(By.CSS_SELECTOR, '#nodes-1 .wf-var[data-insert="{{ $jobs.big }}"]')
    browser.find_element(By.CSS_SELECTOR, pick).click()
    second.find_element(By.NAME, "nodes-1-values__field_0").send_keys("status")
    second.find_element(By.NAME, "nodes-1-values__value_0").send_keys("accepted")
    shot(browser, "06-workflow-nodes.png")
    browser.find_element(By.NAME, "_continue").click()
    wait_until(lambda: "was added successfully" in browser.page_source, timeout=15)

    workflow = Workflow.objects.get(key="big-orders")
    assert workflow.trigger_config == {"collection": "catalog.Order", "events": ["created"]}
    configs = {n.key: n.config for n in workflow.nodes.all()}
    assert configs == {
        "big": {"expression": "{{ $context.data.quantity }} > 1"},
        "mark": {
            "collection": "catalog.Order",
            "filter": {"id": "{{ $context.data.id }}"},
            "values": {"status": "accepted"},
        },
    }
    diagram = browser.find_element(By.ID, "wf-diagram").text
    assert "Trigger" in diagram and "big" in diagram and "if true" in diagram and "mark" in diagram
    shot(browser, "07-workflow-diagram.png")

    # An order triggers it; the execution page shows the same diagram with each job's status.
    Workflow.objects.filter(key=demo.DEMO_KEY).update(enabled=False)
    order = Order.objects.create(product=Product.objects.get(sku="DEMO-1"), quantity=3, customer="Built")
    wait_until(lambda: Execution.objects.filter(workflow=workflow, status="resolved").exists(), timeout=30)
    execution = Execution.objects.get(workflow=workflow)
    browser.get(f"{node}/admin/workflows/execution/{execution.pk}/change/")
    page = browser.find_element(By.ID, "wf-diagram")
    assert len(page.find_elements(By.CSS_SELECTOR, ".wf-status-resolved")) == 2
    assert not browser.find_elements(By.NAME, "_save")  # a read-only page
    shot(browser, "08-execution-diagram.png")
    order.refresh_from_db()
    assert order.status == "accepted"
