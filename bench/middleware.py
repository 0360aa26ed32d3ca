"""What WorkerModeMiddleware costs a request node.

Runs a trivial view through Django's real WSGI handler with the site's full
middleware stack, with and without WorkerModeMiddleware, in alternating rounds
(so drift in machine load hits both sides alike), and prints requests/second
of each, the per-request difference and the ratio. The goal is a cost under 3%.

    .venv/bin/python bench/middleware.py [--requests 20000] [--rounds 9] [--cpu 0]

In-process on purpose: over HTTP the server's and client's own costs dwarf a
middleware's and the run-to-run noise is larger than the effect measured.
On a shared VM even in-process wall-clock rounds vary by several percent, so
the run also counts CPU instructions per request under valgrind's callgrind
(repeatable to a few instructions): the count of requests N1 and N2 are run
for each side and the difference divided by N2 - N1, which cancels start-up.
``--no-instructions`` skips that part (it needs valgrind and takes ~1 minute).

The middleware also records each request for pacing (``worker_mode.pacing``: an append to a
deque); a thread turns the records into pressure four times a second. The wall-clock rounds
include that thread; the instruction counts do not (under valgrind a quarter second of wall
clock spans far fewer requests), and its per-request cost is timed and printed on its own.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nocobase_site.settings")
os.environ.setdefault("WORKER_MODE", "")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

MIDDLEWARE_PATH = "worker_mode.middleware.WorkerModeMiddleware"


def ping(request):
    return HttpResponse(b"pong", content_type="text/plain")


urlpatterns = [path("ping", ping)]


def make_handler(with_middleware: bool) -> WSGIHandler:
    stack = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE_PATH]
    settings.MIDDLEWARE = [MIDDLEWARE_PATH, *stack] if with_middleware else stack
    return WSGIHandler()  # loads MIDDLEWARE now


def environ() -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ping",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def run_round(handler: WSGIHandler, requests: int, expect: str) -> float:
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    base = environ()
    started = time.perf_counter()
    for _ in range(requests):
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(b"")
        for _chunk in handler(env, start_response):
            pass
    elapsed = time.perf_counter() - started
    if statuses[-1] != expect or len(statuses) != requests:
        raise SystemExit(f"unexpected answer {statuses[-1]!r}, wanted {expect!r}")
    return requests / elapsed


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def middleware_call_cost(calls: int = 200000) -> float:
    """Microseconds one pass-through call of the middleware adds, timed directly."""
    from django.test import RequestFactory

    from worker_mode.middleware import WorkerModeMiddleware

    request = RequestFactory().get("/ping")
    sentinel = object()
    bare = lambda request: sentinel  # noqa: E731
    wrapped = WorkerModeMiddleware(bare)
    best = {"bare": float("inf"), "wrapped": float("inf")}
    for _ in range(5):
        for name, func in (("bare", bare), ("wrapped", wrapped)):
            started = time.perf_counter()
            for _ in range(calls):
                func(request)
            best[name] = min(best[name], time.perf_counter() - started)
    return (best["wrapped"] - best["bare"]) / calls * 1e6


def publishing_cost(requests: int = 1000, rounds: int = 50) -> float:
    """Microseconds per request the pressure-publishing thread spends turning the recorded requests
    into a level (``Pressure.sample``), off the request path; timed natively."""
    from worker_mode.pacing import Pressure

    pressure = Pressure()
    pressure._thread = object()  # sampled here, not by the thread
    pressure.baselines["ping"] = 0.0001
    total = 0.0
    for _ in range(rounds):
        now = time.monotonic()
        for i in range(requests):
            pressure.requests.append((now + i * 1e-4, now + i * 1e-4 + 8e-5, "ping"))
        started = time.perf_counter()
        pressure.sample()
        total += time.perf_counter() - started
    return total / (rounds * requests) * 1e6


def count_only(variant: str, requests: int) -> None:
    """The process callgrind measures: set up, then serve ``requests`` requests. The pressure
    thread sleeps through it: under valgrind a wall-clock 0.25 s spans 50 times fewer requests
    than natively, so its work would be counted many times over (``publishing_cost`` times it)."""
    from worker_mode import pacing

    pacing.PUBLISH_INTERVAL = 3600.0
    settings.ROOT_URLCONF = __name__
    handler = make_handler(variant == "with")
    run_round(handler, 200, "200 OK")  # same warm-up on both sides
    run_round(handler, requests, "200 OK")


def instructions_per_request(variant: str, low: int, high: int) -> float:
    import re
    import subprocess

    counts = []
    for requests in (low, high):
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--count-only",
                variant,
                "--requests",
                str(requests),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        counts.append(int(re.search(r"Collected : (\d+)", result.stderr).group(1)))
    return (counts[1] - counts[0]) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-instructions", action="store_true", help="skip the callgrind instruction count")
    parser.add_argument("--count-only", choices=["with", "without"], help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=5000, help="requests per round (default 5000)")
    parser.add_argument("--pairs", type=int, default=30, help="pairs of rounds, in ABBA order (default 30)")
    parser.add_argument("--cpu", type=int, help="pin the benchmark to this CPU")
    args = parser.parse_args()
    if args.count_only:
        count_only(args.count_only, args.requests)
        return
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False
    handlers = {"without": make_handler(False), "with": make_handler(True)}

    # Warm up both (imports, URL resolver caches).
    for handler in handlers.values():
        run_round(handler, 2000, "200 OK")

    rates: dict[str, list[float]] = {"without": [], "with": []}
    ratios: list[float] = []
    for i in range(args.pairs):
        order = ("without", "with") if i % 2 == 0 else ("with", "without")
        pair = {name: run_round(handlers[name], args.requests, "200 OK") for name in order}
        for name, rate in pair.items():
            rates[name].append(rate)
        ratios.append(pair["with"] / pair["without"])

    settings.WORKER_MODE = "*"
    rejected = max(run_round(handlers["with"], args.requests, "503 Service Unavailable") for _ in range(3))
    settings.WORKER_MODE = ""

    ratio = statistics.median(ratios)
    best_without, best_with = max(rates["without"]), max(rates["with"])
    call_cost = middleware_call_cost()

    versions = f"Python {platform.python_version()}, Django {django.__version__}"
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {versions}")
    print(
        f"{args.pairs} pairs of rounds (ABBA) x {args.requests} requests, site middleware stack, trivial view"
    )
    for label, name, best in (("without", "without", best_without), ("with   ", "with", best_with)):
        median = statistics.median(rates[name])
        print(f"{label} WorkerModeMiddleware: median {median:7.0f} req/s, best {best:7.0f}")
    print(
        f"ratio with/without: median of pairs {ratio:.4f} (overhead {(1 / ratio - 1) * 100:+.2f}%), "
        f"best-of {best_with / best_without:.4f} (overhead {(best_without / best_with - 1) * 100:+.2f}%)"
    )
    print(
        f"middleware pass-through call, timed alone: {call_cost:.2f} us "
        f"= {call_cost * best_without / 1e4:.2f}% of a {1e6 / best_without:.0f} us request"
    )
    print(f"503 answer on a '*' node (middleware only): {rejected:.0f} req/s")
    publishing = publishing_cost()
    print(
        f"pacing's pressure thread, off the request path: {publishing:.2f} us per request "
        f"= {publishing * best_without / 1e4:.2f}% of a request, and one Redis call per 0.25 s "
        "(in the rounds above; not in the instruction counts below)"
    )
    overhead = (1 / ratio - 1) * 100
    if not args.no_instructions:
        low, high = 500, 2500
        per_request = {v: instructions_per_request(v, low, high) for v in ("without", "with")}
        overhead = (per_request["with"] / per_request["without"] - 1) * 100
        print(
            f"instructions per request (callgrind, ({high} - {low} requests)): "
            f"without {per_request['without']:.0f}, with {per_request['with']:.0f}, "
            f"ratio {per_request['with'] / per_request['without']:.4f} (overhead {overhead:+.2f}%)"
        )
        print(f"goal: overhead under 3% (instruction count) -> {'met' if overhead < 3 else 'NOT met'}")
    else:
        print(f"goal: overhead under 3% (median of pairs) -> {'met' if overhead < 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
