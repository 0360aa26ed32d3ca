"""The cluster as hosts (lab/): every node, PostgreSQL and both Redis servers on a host of its own,
each a network namespace with its own address and host name on a private bridge, driven from this
machine over that network only. The scenarios run in order on one lab (each leaves it whole):

1. the three-node example across hosts: import, workflows, export, over HTTP to ``web``;
2. a partition: the workflow host cut off mid-execution for longer than the liveness window; the
   execution is recovered on another host; the returning host rejoins; every effect once;
3. two Redis servers, one per service key: stopping redis-b stops only the import/export service,
   and nothing queued is lost when it returns (empty);
4. the database host lost (every process killed) and booted again during work.

Run alone: ``pytest -m lab``. Needs root (``lab.why_unavailable()`` says why it skips otherwise).
"""

from __future__ import annotations

import csv
import io
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

import lab
from lab.cluster import Cluster
from tests.conftest import Hook, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

_reason = lab.why_unavailable()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=f"the lab cannot run here: {_reason}"))

#: Leases of 6 s (renewed every 2 s), recovery sweeps every second, lost messages re-sent after 2 s.
FAST = {
    "WORKER_MODE_LEASE": "6",
    "WORKER_MODE_RECOVERY_INTERVAL": "1",
    "WORKER_MODE_REQUEUE_INTERVAL": "2",
    "WORKER_MODE_QUEUED_GRACE": "2",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with lab.Lab(tmp_path_factory.mktemp("lab")) as the_lab:
        cluster = Cluster(the_lab, settings_module="tests.settings", env=FAST)
        cluster.start_node("web", "!")
        cluster.start_node("wf", "workflow:process")
        cluster.start_node("tasks", "async-task:process")
        yield cluster
        print(cluster.map())


def logs(cluster: Cluster, *hosts: str) -> str:
    return "\n".join(
        f"--- {name}/{p.name}\n{p.text()[-4000:]}"
        for name in hosts
        for p in cluster.lab.hosts[name].processes.values()
    )


def finished_task(cluster: Cluster, task_id: int, timeout: float = 90) -> dict:
    def done():
        status, task = cluster.api("GET", f"/api/tasks/{task_id}")
        assert status == 200, task
        return task if task["status"] in ("succeeded", "failed", "canceled") else None

    return wait_until(done, timeout=timeout, interval=0.3)


def product_rows(prefix: str, count: int) -> bytes:
    rows = "".join(
        f"{prefix}-{i},Product {i},{i}.50,{10 if i % 2 else 0},true,2024-01-01\n" for i in range(count)
    )
    return f"sku,name,price,quantity,active,created\n{rows}".encode()


@pytest.fixture(scope="module")
def hook_server(cluster):
    server = ThreadingHTTPServer((cluster.lab.gateway, 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{cluster.lab.gateway}:{server.server_address[1]}/hook"
    Hook.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook(hook_server):
    Hook.reset()
    yield Hook
    Hook.release.set()


@pytest.fixture(scope="module")
def workflows(cluster, hook_server) -> dict[str, str]:
    """Two manual workflows, each ending in an effect (an order named after its execution):
    ``call``: HTTP call to the hook -> order; ``calc``: calculation -> order."""
    order = (
        "{'collection': 'catalog.Order', 'values': {'product': product.pk, 'quantity': 1, "
        "'customer': 'execution {{ $system.execution }}'}}"
    )
    return cluster.django(
        "from catalog.models import Product\n"
        "from tests.conftest import build_workflow\n"
        "product = Product.objects.create(sku='LAB-EFFECT', name='Effect', price=1, quantity=5)\n"
        "build_workflow([{'key': 'call', 'type': 'http',\n"
        f"    'config': {{'url': {hook_server!r}, 'body': {{}}, 'timeout': 30}}}},\n"
        f"    {{'key': 'order', 'type': 'create', 'upstream': 'call', 'config': {order}}}], key='lab-call')\n"
        "build_workflow([{'key': 'n', 'type': 'calculation',\n"
        "    'config': {'expression': '{{ $context.data.n }} + 1'}},\n"
        f"    {{'key': 'order', 'type': 'create', 'upstream': 'n', 'config': {order}}}], key='lab-calc')\n"
        "result = {'call': 'lab-call', 'calc': 'lab-calc'}"
    )


def execution(cluster: Cluster, pk: int) -> tuple:
    return cluster.sql("SELECT status, node_name, attempts FROM workflows_execution WHERE id = %s", pk)[0]


def orders_for(cluster: Cluster, pk: int) -> int:
    return cluster.sql("SELECT count(*) FROM catalog_order WHERE customer = %s", f"execution {pk}")[0][0]


def trigger(cluster: Cluster, key: str, data: dict, host: str = "web") -> int:
    status, body = cluster.api("POST", f"/api/workflows/{key}/trigger", data, host=host)
    assert status == 202, body
    return body["id"]


def cluster_page(cluster: Cluster) -> str:
    return cluster.admin_page("/admin/worker_mode/cluster/")


# -- the lab itself ------------------------------------------------------------------------------
def test_hosts_have_their_own_address_name_cpu_budget_and_faults(tmp_path):
    import socket
    import subprocess
    import sys

    with lab.Lab(tmp_path / "small") as small:
        a = small.add_host("a", cpus=0.2)
        b = small.add_host("b")
        assert (a.ip, b.ip) == (f"{small.subnet}.2", f"{small.subnet}.3")
        a.spawn("name", ["hostname"]).popen.wait(10)
        assert a.processes["name"].text().strip() == "a"
        server = b.spawn("http", [sys.executable, "-m", "http.server", "--bind", b.ip, "8080"])
        lab.wait_port(b.ip, 8080, alive=lambda: server.popen.poll() is None)
        # from host a, across the bridge
        fetch = (
            f"import urllib.request; print(urllib.request.urlopen('http://{b.ip}:8080/', timeout=5).status)"
        )
        assert a.run([sys.executable, "-c", fetch]).strip() == "200"

        def reachable() -> bool:
            with socket.socket() as sock:
                sock.settimeout(1)
                return sock.connect_ex((b.ip, 8080)) == 0

        b.cut()
        assert not reachable()
        assert server.popen.poll() is None  # cut off, not stopped
        b.reconnect()
        wait_until(reachable, timeout=10)

        a.spawn(
            "busy",
            [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"],
        )
        a.processes["busy"].popen.wait(30)
        assert a.cgroup.throttled_seconds() > 0 and a.cgroup.cpu_seconds() > 0  # the quota held it back

        b.spawn("tree", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
        wait_until(lambda: len(b.pids()) >= 4, timeout=10)  # http.server, sh and two sleeps
        lost = b.lose()
        assert len(lost) >= 4 and b.pids() == []
        names = (small.name, a.netns, b.netns)
    assert not any(name in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                   for name in names[:1])  # fmt: skip
    assert not set(names[1:]) & set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    assert not any(directory.exists() for directory in [*a.cgroup.dirs, *b.cgroup.dirs])
    assert not (lab.RUN_DIR / small.subnet).exists()


def _leftovers(name: str) -> list[str]:
    import subprocess

    found = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith(f"{name}-")]  # fmt: skip
    if subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0:
        found.append(name)
    found += [str(p) for p in lab.CGROUP_ROOT.glob(f"*/{name}")] + [
        str(p) for p in lab.CGROUP_ROOT.glob(name)
    ]
    return found


def test_a_lab_whose_process_died_is_swept_entirely(tmp_path):
    """Its maker killed (a zombie its parent has not reaped yet), a process of a host's cgroup that
    had not entered the namespace yet, a PostgreSQL directory: sweep_stale removes all of it."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    maker = (
        "import sys, time\nfrom pathlib import Path\nimport lab\n"
        f"the_lab = lab.Lab(Path({str(tmp_path / 'dead')!r}))\n"
        "for name in ('a', 'b'):\n"
        "    the_lab.add_host(name, cpus=0.2).spawn('tree', ['sh', '-c', 'sleep 300 & sleep 300 & wait'])\n"
        "print(the_lab.name, flush=True)\ntime.sleep(300)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", maker], stdout=subprocess.PIPE, text=True,
                             cwd=str(Path(lab.__file__).parent.parent))  # fmt: skip
    name = child.stdout.readline().strip()
    pg = Path(tempfile.mkdtemp(prefix=f"{name}-pg-"))
    stray = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        for hierarchy in ("cpu", "cpuacct"):
            (lab.CGROUP_ROOT / hierarchy / name / "host-a" / "cgroup.procs").write_text(str(stray.pid))
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "Z", timeout=10)
        assert name in lab.sweep_stale()  # its maker is a zombie: gone, not running
        stray.wait(10)  # killed: it was the lab's
        assert _leftovers(name) == [] and not pg.exists()
        assert not [c for c in lab.RUN_DIR.iterdir() if c.read_text().startswith(f"{name} ")]
    finally:
        child.wait(10)
        stray.kill()
        stray.wait(10)
        lab.sweep_stale()


def test_a_claim_that_is_not_a_lab_s_stops_no_sweep():
    import os
    import time

    junk = lab.RUN_DIR / "10.213.250"
    lab.RUN_DIR.mkdir(parents=True, exist_ok=True)
    junk.write_text("")  # a lab killed between creating its claim and writing it
    try:
        assert lab.sweep_stale() == [] and junk.exists()  # just written: perhaps a lab writing it
        os.utime(junk, (time.time() - 120, time.time() - 120))
        assert lab.sweep_stale() == [] and not junk.exists()
    finally:
        junk.unlink(missing_ok=True)


@pytest.mark.parametrize("name", ["", "x/y", "../../../../evil", "bad name", "-rf", "Web", "h" * 40])
def test_a_host_name_that_is_no_host_name_is_refused_before_anything_is_made(tmp_path, name):
    with lab.Lab(tmp_path / "names") as small:
        with pytest.raises(ValueError, match="is not a lab host name"):
            small.add_host(name)
        small.add_host("a")
        with pytest.raises(ValueError, match="has a host named 'a' already"):
            small.add_host("a")
        assert list(small.hosts) == ["a"]
    assert _leftovers(small.name) == []
    assert not (lab.CGROUP_ROOT / "cpu" / "evil").exists()


def test_python_m_lab_stops_at_once_when_signalled_during_its_startup(tmp_path):
    """SIGTERM (or a Ctrl-C sent to it alone) while the cluster starts: no waiting for the startup to
    end (and printing a password for a lab about to go), the lab is removed."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(lab.__file__).parent.parent
    run = subprocess.Popen([sys.executable, "-m", "lab", "--directory", str(tmp_path / "main")], cwd=root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert run.stdout.readline().startswith("Starting the lab")
        claims = [c for c in lab.RUN_DIR.iterdir() if c.read_text().split()[1:2] == [str(run.pid)]]
        name = claims[0].read_text().split()[0]
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=30)[0]
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 130, output
    assert "Open http" not in output and "Stopped during its startup" in output
    assert _leftovers(name) == [] and not claims[0].exists()


def test_two_labs_at_once_share_no_name(tmp_path, monkeypatch):
    """Labs made at the same time (the same random draw included) take subnets and names of their
    own; closing one leaves the other whole. Links are named apart from bridges."""
    import random
    import subprocess

    monkeypatch.setattr(random.Random, "sample", lambda self, population, k: list(population)[:k])
    monkeypatch.setattr(lab.secrets, "token_hex", lambda n: "ab" * n)
    with lab.Lab(tmp_path / "one") as one, lab.Lab(tmp_path / "two") as two:
        assert one.subnet != two.subnet and one.name != two.name
        a = one.add_host("a")
        for index in range(2, 40):
            assert not f"ncv{one.id}{index}".startswith(lab.PREFIX)
        two.add_host("a").spawn("s", ["sleep", "60"])
        two_pids = wait_until(lambda: two.hosts["a"].pids(), timeout=10)
        one.close()
        assert two_pids and two.hosts["a"].pids() == two_pids
        assert subprocess.run(["ip", "link", "show", two.name], capture_output=True).returncode == 0
        assert a.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert _leftovers(one.name) == _leftovers(two.name) == []


# -- 1 ------------------------------------------------------------------------------------------
def test_the_three_node_example_across_hosts(cluster):
    assert cluster.api("GET", "/api/tasks", host="wf")[0] == 503  # worker hosts answer no requests
    status, task = cluster.upload("/api/import/catalog.Product", "p.csv", product_rows("LAB", 6))
    assert status == 202, task
    task = finished_task(cluster, task["id"])
    assert (task["status"], task["node"], task["summary"]["created"]) == ("succeeded", "tasks", 6), task

    products = dict(cluster.sql("SELECT sku, id FROM catalog_product WHERE sku LIKE 'LAB-%%'"))
    orders = "".join(f"{products[f'LAB-{i}']},1,lab customer {i}\n" for i in range(6))
    status, task = cluster.upload(
        "/api/import/catalog.Order", "o.csv", f"product,quantity,customer\n{orders}".encode(),
        {"fire_workflows": "true"},
    )  # fmt: skip
    assert status == 202, task
    task = finished_task(cluster, task["id"])
    assert (task["status"], task["node"], task["summary"]["created"]) == ("succeeded", "tasks", 6), task

    def resolved():
        rows = cluster.sql(
            "SELECT e.status, e.node_name FROM workflows_execution e JOIN workflows_workflow w "
            "ON w.id = e.workflow_id WHERE w.key = 'order-created'"
        )
        return len(rows) == 6 and set(rows) == {("resolved", "wf")}

    wait_until(resolved, timeout=60, interval=0.3)
    statuses = dict(
        cluster.sql("SELECT customer, status FROM catalog_order WHERE customer LIKE 'lab customer %%'")
    )
    assert statuses == {f"lab customer {i}": "accepted" if i % 2 else "rejected" for i in range(6)}
    # the workflow host called the web host's webhook, across the lab network
    wait_until(lambda: cluster.sql("SELECT count(*) FROM catalog_webhookdelivery")[0][0] == 6, timeout=30)

    status, task = cluster.api("POST", "/api/export/catalog.Product", {"filters": {"q": "LAB-"}})
    assert status == 202, task
    task = finished_task(cluster, task["id"])
    assert (task["status"], task["node"]) == ("succeeded", "tasks")
    status, content = cluster.api("GET", task["links"]["download"])
    assert status == 200
    exported = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
    assert sorted(r[0] for r in exported[1:]) == [f"LAB-{i}" for i in range(6)]

    page = cluster_page(cluster)
    for host in ("web", "wf", "tasks"):
        assert f"<td>{host}</td>" in page
    assert "uncovered" not in page.lower()


# -- 2 ------------------------------------------------------------------------------------------
def test_a_partitioned_workflow_host_s_execution_is_recovered_elsewhere_once(cluster, hook, workflows):
    handler = hook
    handler.hold = 1  # the first call (from wf) never gets its answer back to wf
    key = workflows["call"]
    wf = cluster.lab.hosts["wf"]
    first = trigger(cluster, key, {"n": 1})
    wait_until(lambda: handler.calls, timeout=30)
    assert handler.calls == [wf.ip] and execution(cluster, first)[:2] == ("running", "wf")

    cluster.start_node("wf2", "workflow:process")
    wf.cut()  # mid-call: wf can reach neither the database, nor Redis, nor the webhook
    try:
        wait_until(lambda: execution(cluster, first)[0] == "resolved", timeout=60, interval=0.3)
        assert execution(cluster, first) == ("resolved", "wf2", 2), logs(cluster, "wf2")
        assert handler.calls == [wf.ip, cluster.lab.hosts["wf2"].ip]  # HTTP is at-least-once
        # cut off past the liveness window: its presence lapsed (30 s after its last heartbeat),
        # and the Cluster page no longer lists it
        wait_until(lambda: "<td>wf</td>" not in cluster_page(cluster), timeout=45, interval=1)
    finally:
        handler.release.set()  # the held call answers into the void ...
        wf.reconnect()  # ... and wf comes back
    wait_until(lambda: "<td>wf</td>" in cluster_page(cluster), timeout=30, interval=1)
    node_log = wf.processes["node"].text()
    wait_until(lambda: "taken over" in wf.processes["node"].text(), timeout=60, interval=0.5)
    assert orders_for(cluster, first) == 1, node_log  # the returning host applied nothing

    # the returning host works again: with wf2 stopped, the next execution runs on wf
    cluster.lab.hosts["wf2"].stop("node")
    second = trigger(cluster, key, {"n": 2})
    wait_until(lambda: execution(cluster, second)[0] == "resolved", timeout=60, interval=0.3)
    assert execution(cluster, second) == ("resolved", "wf", 1), logs(cluster, "wf")
    assert orders_for(cluster, second) == 1


# -- 3 ------------------------------------------------------------------------------------------
def test_stopping_the_second_redis_stops_only_its_service_and_loses_nothing(cluster, workflows):
    redis_b = cluster.redis["redis-b"]
    status, before = cluster.upload("/api/import/catalog.Product", "b.csv", product_rows("RB0", 3))
    assert status == 202 and finished_task(cluster, before["id"])["status"] == "succeeded"

    redis_b.stop()
    try:
        # the import/export service waits: its task is accepted and stays queued ...
        status, waiting = cluster.upload("/api/import/catalog.Product", "w.csv", product_rows("RB1", 4))
        assert status == 202, waiting
        # ... while workflows (redis-a) and requests go on
        execution_id = trigger(cluster, workflows["calc"], {"n": 1})
        wait_until(lambda: execution(cluster, execution_id)[0] == "resolved", timeout=30)
        assert orders_for(cluster, execution_id) == 1
        assert cluster.api("GET", "/api/tasks")[0] == 200
        time.sleep(5)  # several requeue intervals: nothing can run it
        status, task = cluster.api("GET", f"/api/tasks/{waiting['id']}")
        assert task["status"] == "queued", task
    finally:
        redis_b.start()  # back, empty: the message of the queued task is gone
    task = finished_task(cluster, waiting["id"])
    assert (task["status"], task["node"], task["summary"]["created"]) == ("succeeded", "tasks", 4), logs(
        cluster, "tasks"
    )
    # the tasks host did not give up while its Redis was away
    assert cluster.lab.hosts["tasks"].processes["node"].popen.poll() is None


# -- 4 ------------------------------------------------------------------------------------------
def test_the_database_host_restarted_during_work(cluster, workflows):
    status, task = cluster.upload("/api/import/catalog.Product", "big.csv", product_rows("DB", 20000))
    assert status == 202, task
    executions = [trigger(cluster, workflows["calc"], {"n": n}) for n in range(20)]

    def importing():
        return cluster.sql("SELECT done FROM async_tasks_asynctask WHERE id = %s", task["id"])[0][0] > 0

    wait_until(importing, timeout=60, interval=0.2)
    cluster.db.reboot()  # every process of the db host killed at once, then PostgreSQL starts again
    task = finished_task(cluster, task["id"], timeout=120)
    assert task["status"] == "succeeded", (task, logs(cluster, "tasks"))
    assert cluster.sql("SELECT count(*) FROM catalog_product WHERE sku LIKE 'DB-%%'")[0][0] == 20000

    def all_resolved():
        rows = cluster.sql("SELECT status FROM workflows_execution WHERE id = ANY(%s)", executions)
        return {status for (status,) in rows} == {"resolved"}

    wait_until(all_resolved, timeout=90, interval=0.5)
    assert [orders_for(cluster, pk) for pk in executions] == [1] * len(executions)  # effects once
    for host in ("web", "wf", "tasks"):  # every node outlived its database's restart
        assert cluster.lab.hosts[host].processes["node"].popen.poll() is None, logs(cluster, host)
    assert cluster.api("GET", "/readyz")[1]["checks"]["database"] == "ok"
