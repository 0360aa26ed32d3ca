"""A cluster of hosts on one Linux machine, for the tests and benchmarks that cross a network.

Each :class:`Host` is a network namespace with one veth link on a private bridge (its own IPv4
address in a /24 that no other interface of the machine uses), its own host name (a UTS
namespace) and its own CPU budget (a cgroup CPU quota: ``cpu.cfs_quota_us`` on cgroup v1,
``cpu.max`` on v2). The machine itself is the operator's workstation, at ``.1`` on the bridge:
tests and benchmarks reach every host from there, and nothing of the lab listens anywhere else.

Faults, as production has them:

- ``host.cut()`` / ``host.reconnect()``: the host's link goes down and up; its processes run on,
  unreachable and unable to reach anyone (a partition);
- ``host.lose()``: every process of the host is stopped (SIGSTOP), then all are killed (SIGKILL):
  a machine lost; the cgroup finds every process, daemons and forks included;
- ``host.freeze()`` / ``host.thaw()``: SIGSTOP / SIGCONT to all its processes (a paused VM).

:func:`why_unavailable` says what this machine lacks (root, iproute2, unshare, a cgroup CPU
controller); the lab refuses to start without them. :meth:`Lab.close` removes every namespace,
link, cgroup and process it made, also after a failure; :func:`sweep_stale` removes what a lab
killed before it could close left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Every lab's names start with this: namespaces ``nclab<id>-<host>``, bridge ``nclab<id>``,
#: cgroups ``nclab<id>/host-<host>``; its links are ``ncv<id><n>``.
PREFIX = "nclab"
#: Labs take a /24 out of this /16 (10.213.1.0/24, 10.213.2.0/24, ...), one not in use.
NETWORK = "10.213"
#: Where labs record the subnet they hold (a second lab on the machine takes another).
RUN_DIR = Path("/run/nclab")

CGROUP_ROOT = Path("/sys/fs/cgroup")

#: A host's name: a host name label (it is the host's host name), short enough for its namespace.
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
_LAB_NAME = re.compile(rf"{PREFIX}[0-9a-f]{{4}}")

logger = logging.getLogger(__name__)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _cgroup_version() -> int | None:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return 2 if "cpu" in (CGROUP_ROOT / "cgroup.controllers").read_text().split() else None
    return 1 if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists() else None


def why_unavailable() -> str | None:
    """Why no lab can run on this machine, or None when one can."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, a bridge and cgroups); run it as root"
    for tool in ("ip", "unshare", "setpriv", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (Debian: iproute2, util-linux)"
    if _cgroup_version() is None:
        return f"no cgroup CPU controller is mounted under {CGROUP_ROOT} (cgroup v1 'cpu' or v2 'cpu')"
    probe = f"{PREFIX}probe{os.getpid()}"
    done = _run("ip", "netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"this machine does not let the lab create a network namespace: {done.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class Cgroup:
    """A host's CPU budget and CPU accounting, on cgroup v1 (cpu + cpuacct) or v2 (cpu)."""

    def __init__(self, path: str, cpus: float | None) -> None:
        self.version = _cgroup_version()
        if self.version == 1:
            self.dirs = [CGROUP_ROOT / "cpu" / path, CGROUP_ROOT / "cpuacct" / path]
        else:
            parent = CGROUP_ROOT / path.split("/")[0]
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+cpu")
            self.dirs = [CGROUP_ROOT / path]
        for directory in self.dirs:
            directory.mkdir(parents=True, exist_ok=True)
        self.set_cpus(cpus)

    def set_cpus(self, cpus: float | None) -> None:
        """Cap the host at ``cpus`` CPUs (0.5 = half of one core); None: no cap."""
        period = 100_000
        if self.version == 1:
            quota = -1 if cpus is None else max(1000, int(cpus * period))
            (self.dirs[0] / "cpu.cfs_period_us").write_text(str(period))
            (self.dirs[0] / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            quota = "max" if cpus is None else str(max(1000, int(cpus * period)))
            (self.dirs[0] / "cpu.max").write_text(f"{quota} {period}")

    @property
    def procs_files(self) -> list[Path]:
        return [directory / "cgroup.procs" for directory in self.dirs]

    def pids(self) -> list[int]:
        return [int(line) for line in self.procs_files[0].read_text().split()]

    def cpu_seconds(self) -> float:
        """CPU time every process of the host has used so far (user + system)."""
        if self.version == 1:
            return int((self.dirs[1] / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.dirs[0] / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def throttled_seconds(self) -> float:
        """How long the quota held the host's processes back so far."""
        stat = dict(line.split() for line in (self.dirs[0] / "cpu.stat").read_text().splitlines())
        if self.version == 1:
            return int(stat["throttled_time"]) / 1e9
        return int(stat.get("throttled_usec", 0)) / 1e6

    def remove(self) -> None:
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Host:
    """One machine of the lab: a namespace, an address, a host name, a CPU budget, its processes."""

    lab: Lab
    name: str
    ip: str
    netns: str
    link: str
    cgroup: Cgroup
    processes: dict[str, Process] = field(default_factory=dict)
    #: CPUs its processes may run on (taskset's list, e.g. "1"); None: any. See :meth:`pin`.
    cores: str | None = None

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` on this host (in its cgroup, namespace and host name), logging to a file.

        The wrapper joins the cgroup first (before entering the namespace: ``ip netns exec``
        mounts a /sys of its own), so every later fork is counted and found by :meth:`lose`."""
        log = self.lab.directory / "logs" / f"{self.name}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        join = " ".join(f'echo $$ > "{path}";' for path in self.cgroup.procs_files)
        # setpriv execs (runuser forks): the program itself is the child this lab waits for.
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
        pin = ["taskset", "-c", self.cores] if self.cores else []
        command = [*pin, *as_user, *argv]
        enter = f'{join} exec ip netns exec "$0" unshare --uts sh -c \'hostname "$0" && exec "$@"\' "$@"'
        wrapper = ["sh", "-c", enter, self.netns, self.name, *command]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                wrapper,
                env=env if env is not None else dict(os.environ),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.processes[name] = Process(name, popen, log)
        return process

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run ``argv`` on this host to its end; its output, or an error with the output."""
        command = ["ip", "netns", "exec", self.netns, *argv]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv[:3])}... exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")  # fmt: skip
        return done.stdout

    def pids(self) -> list[int]:
        return self.cgroup.pids()

    def pin(self, cores: str | None) -> None:
        """Run the host's processes on ``cores`` only (e.g. "0"), the running ones and those started
        later: a CPU of its own, where the quota alone only caps what it may take from a shared one."""
        self.cores = cores
        every = f"0-{(os.cpu_count() or 1) - 1}"
        for pid in self.pids():
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cores or every, str(pid)], capture_output=True, check=False
            )

    def signal_all(self, sig: int) -> list[int]:
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the host, again until no new one appears (a fork in flight)."""
        stopped: set[int] = set()
        while True:
            fresh = set(self.pids()) - stopped
            if not fresh:
                return sorted(stopped)
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= fresh

    def thaw(self) -> None:
        self.signal_all(signal.SIGCONT)

    def lose(self, timeout: float = 10) -> list[int]:
        """The machine is lost: every process stopped at once, then all killed. Returns their pids."""
        pids = self.freeze()
        self.signal_all(signal.SIGKILL)
        self._reap(timeout)
        return pids

    def _reap(self, timeout: float) -> None:
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        """Stop one process the way its operator would (``sig`` to its process group); kill it
        after ``timeout``. Returns its exit code."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        try:
            return process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            return process.popen.wait(10)

    def cut(self) -> None:
        """Partition: the host's link goes down; its processes run on, cut off from everyone."""
        _run("ip", "link", "set", self.link, "down")

    def reconnect(self) -> None:
        _run("ip", "link", "set", self.link, "up")

    def close(self) -> None:
        self.lose(timeout=5)
        self.processes.clear()
        self.cgroup.remove()
        _run("ip", "netns", "del", self.netns, check=False)


class Lab:
    """Hosts on one bridge. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, directory: Path) -> None:
        reason = why_unavailable()
        if reason:
            raise RuntimeError(f"The lab cannot run here: {reason}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in sweep_stale():  # what a killed lab (a test run, a benchmark) left behind
            print(f"Removed what an earlier lab left behind: {stale}", file=sys.stderr)
        self.hosts: dict[str, Host] = {}
        self._on_close: list[Callable[[], object]] = []
        self.subnet = self._take_subnet()  # and the lab's id and name, unique on this machine
        self.gateway = f"{self.subnet}.1"
        try:
            _run("ip", "link", "add", self.name, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.name)
            _run("ip", "link", "set", self.name, "up")
        except BaseException:
            self.close()
            raise

    def _take_subnet(self) -> str:
        """A /24 of NETWORK that no interface of this machine and no other lab holds, and the lab's
        id: the subnet's number first (no two live labs share it: their claims are exclusive), then
        a random byte that no leftover namespace or link of this machine has."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        in_use = _run("ip", "-4", "-o", "addr", "show").stdout
        names = _run("ip", "-o", "link", "show").stdout + _run("ip", "netns", "list", check=False).stdout
        for third in range(1, 255):
            subnet = f"{NETWORK}.{third}"
            if f" {subnet}." in in_use:
                continue
            try:
                fd = os.open(RUN_DIR / subnet, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            for low in secrets.SystemRandom().sample(range(256), 256):
                self.id = f"{third:02x}{low:02x}"
                self.name = f"{PREFIX}{self.id}"
                if self.name not in names:
                    break
            os.write(fd, f"{self.name} {os.getpid()} {_started(os.getpid())}".encode())
            os.close(fd)
            self._claim = RUN_DIR / subnet
            return subnet
        raise RuntimeError(f"no free /24 left in {NETWORK}.0.0/16")

    def add_host(self, name: str, *, cpus: float | None = None) -> Host:
        """A new host ``name`` at the next address, capped at ``cpus`` CPUs (None: uncapped)."""
        if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a lab host name: 1 to 32 of a-z, 0-9 and '-' (not first or last), "
                "as a host name (it names the host's namespace and cgroup too)"
            )
        if name in self.hosts:
            raise ValueError(f"the lab has a host named {name!r} already")
        index = len(self.hosts) + 2
        if index > 254:
            raise RuntimeError("a lab holds at most 253 hosts")
        # not "ncl<id>...": host 34 of lab ab12 would be "nclab1234", the bridge of lab 1234
        netns, link = f"{self.name}-{name}", f"ncv{self.id}{index}"
        ip = f"{self.subnet}.{index}"
        cgroup = Cgroup(f"{self.name}/host-{name}", cpus)  # not "tasks": a file of every v1 cgroup
        host = self.hosts[name] = Host(self, name, ip, netns, link, cgroup)
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        _run("ip", "link", "set", f"{link}p", "netns", netns)
        _run("ip", "-n", netns, "link", "set", f"{link}p", "name", "eth0")
        _run("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", self.gateway)
        _run("ip", "link", "set", link, "master", self.name)
        _run("ip", "link", "set", link, "up")
        return host

    def map(self) -> str:
        """The hosts, their addresses and what runs on them, as a table."""
        rows = [("host", "address", "link (ip link set … down: cut it off)", "CPUs", "runs")]
        for host in self.hosts.values():
            cap = _cpus_label(host.cgroup)
            rows.append((host.name, host.ip, host.link, cap, ", ".join(host.processes) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        return "\n".join([f"lab {self.name}: {self.subnet}.0/24 on bridge {self.name}", *lines])

    def on_close(self, action: Callable[[], object]) -> None:
        """Run ``action`` when the lab closes, after its hosts are gone."""
        self._on_close.append(action)

    def close(self) -> None:
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.close()
        self.hosts.clear()
        while self._on_close:
            with contextlib.suppress(Exception):
                self._on_close.pop()()
        left = _teardown(self.name)
        claim = getattr(self, "_claim", None)
        if left:  # the claim stays: sweep_stale tries again once this process is gone
            logger.warning("Lab %s could not remove: %s", self.name, ", ".join(left))
        elif claim is not None:
            with contextlib.suppress(OSError):
                claim.unlink()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cpus_label(cgroup: Cgroup) -> str:
    if cgroup.version == 1:
        quota = int((cgroup.dirs[0] / "cpu.cfs_quota_us").read_text())
        return "-" if quota < 0 else f"{quota / 100_000:g}"
    quota = (cgroup.dirs[0] / "cpu.max").read_text().split()[0]
    return "-" if quota == "max" else f"{int(quota) / 100_000:g}"


def sweep_stale() -> list[str]:
    """Remove what labs whose process died without closing left: their processes, namespaces,
    bridges, cgroups, temporary directories and subnet claims (a lab is stale when the process
    that made it is gone). A claim stays while anything of its lab could not be removed."""
    removed: list[str] = []
    if not RUN_DIR.exists():
        return removed
    for claim in RUN_DIR.iterdir():
        try:
            name, pid, started = [*claim.read_text().split(), "", "", ""][:3]
            age = time.time() - claim.stat().st_mtime
        except OSError:
            continue
        if not _LAB_NAME.fullmatch(name) or not pid.isdigit():
            if age > 60:  # not a lab's claim, or one whose lab died while writing it
                with contextlib.suppress(OSError):
                    claim.unlink()
            continue
        if _alive(int(pid), started or None):
            continue
        left = _teardown(name)
        if left:
            logger.warning("Stale lab %s: could not remove %s", name, ", ".join(left))
            continue
        claim.unlink()
        removed.append(name)
    return removed


def _cgroup_dirs(name: str) -> list[Path]:
    """Lab ``name``'s cgroups on every hierarchy, deepest first."""
    found: list[Path] = []
    for base in (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpuacct", CGROUP_ROOT):
        top = base / name
        if top.is_dir():
            found += sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            found.append(top)
    return found


def _lab_pids(name: str, namespaces: list[str]) -> set[int]:
    """Every process of lab ``name``: in its namespaces or in its cgroups (a process may have
    joined a cgroup and not yet entered its namespace, or run in a namespace outside the cgroup)."""
    pids: set[int] = set()
    for n in namespaces:
        pids |= {int(p) for p in _run("ip", "netns", "pids", n, check=False).stdout.split() if p.isdigit()}
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
    return pids


def _teardown(name: str, timeout: float = 10) -> list[str]:
    """Kill every process of lab ``name`` and remove its namespaces, bridge, cgroups and temporary
    directories; what is left (nothing, when all went)."""
    namespaces = [
        n for n in _run("ip", "netns", "list", check=False).stdout.split() if n.startswith(f"{name}-")
    ]
    deadline = time.monotonic() + timeout
    while (pids := _lab_pids(name, namespaces)) and time.monotonic() < deadline:
        for pid in pids:  # again until none is left: a process may fork while it is being killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for n in namespaces:
        _run("ip", "netns", "del", n, check=False)
    _run("ip", "link", "del", name, check=False)
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            directory.rmdir()
    for directory in Path(tempfile.gettempdir()).glob(f"{name}-*"):
        shutil.rmtree(directory, ignore_errors=True)
    left = [f"process {pid}" for pid in sorted(_lab_pids(name, []))]
    left += [
        f"namespace {n}"
        for n in _run("ip", "netns", "list", check=False).stdout.split()
        if n.startswith(f"{name}-")
    ]
    if _run("ip", "link", "show", name, check=False).returncode == 0:
        left.append(f"bridge {name}")
    left += [f"cgroup {d}" for d in _cgroup_dirs(name)]
    return left


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), "" if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie), and is the one that started at ``started``
    (the pid of a dead lab may belong to another process by now)."""
    now = _started(pid)
    return bool(now) and (started is None or now == started)


def wait_port(ip: str, port: int, timeout: float = 30, alive: Callable[[], bool] | None = None) -> None:
    """Wait until something accepts TCP connections at ``ip:port`` (from this machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the process meant to listen on {ip}:{port} exited")
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {ip}:{port} after {timeout} s")
