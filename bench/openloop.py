"""An open-loop HTTP load: requests at a constant rate, latency counted from when each was due.

A closed-loop load (wrk) sends the next request when the last answer came, so a server that
slows down receives less load and the waiting is hidden ("coordinated omission"). Here request
``i`` is due at ``start + i / rate`` whatever happened before; it is sent on a connection of its
own (``Connection: close``, as gunicorn's sync workers answer), and its latency runs from the due
time to the last byte of the answer. Loopback only; at most ``rate x duration`` requests, and at
most ``--max-outstanding`` at once (a request due while that many are out waits, and its wait
counts).

    python bench/openloop.py http://127.0.0.1:8000/api/tasks --rate 50 --duration 15 \\
        [--header "Authorization: Bearer ..."]

Prints one JSON object: requests, rate achieved, p50/p90/p99/max in ms, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import time
from urllib.parse import urlsplit


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _one(host: str, port: int, request: bytes, due: float, latencies: list[float], errors: list[str],
               gate: asyncio.Semaphore) -> None:  # fmt: skip
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()  # to the end: the server closes the connection
            writer.close()
            status = int(status_line.split()[1])
            if status != 200:
                errors.append(str(status))
        except (OSError, ValueError, IndexError) as exc:
            errors.append(type(exc).__name__)
            return
    latencies.append((time.perf_counter() - due) * 1000)


async def run(url: str, rate: float, duration: float, headers: list[str], max_outstanding: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("the open-loop load targets loopback addresses only")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", *headers, "", ""]
    request = "\r\n".join(lines).encode()
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(max_outstanding)
    count = int(rate * duration)
    start = time.perf_counter() + 0.1
    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(host, port, request, due, latencies, errors, gate)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {
        "requests": count,
        "rate": count / elapsed,
        "p50": percentile(latencies, 0.50),
        "p90": percentile(latencies, 0.90),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds")
    parser.add_argument("--header", action="append", default=[], help="a request header, e.g. 'Accept: */*'")
    parser.add_argument("--max-outstanding", type=int, default=256)
    args = parser.parse_args()
    if not 0 < args.rate <= 5000 or not 0 < args.duration <= 600:
        raise SystemExit("--rate must be in (0, 5000] and --duration in (0, 600]")
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.duration, args.header, args.max_outstanding))))


if __name__ == "__main__":
    main()
