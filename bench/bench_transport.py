"""Client CPU per partner call: Courier's batch transport against aiohttp, same server, same run.

Why this exists: ``services/http/transport.py`` is our own HTTP/1.1 client, kept because the batch
scorer's hot loop measured ~0.05 ms of client CPU per call against aiohttp's ~0.10-0.14 ms. This
script keeps that reason checkable: the reference partner runs in its own process (one uvicorn
worker, keep-alive), each client sends the same ATS batch POSTs with the same concurrency, and the
client process's CPU time (user + system, ``time.process_time``) is divided by the calls made.
Runs are interleaved (ours, aiohttp, ours, ...) and the median of each is printed first.

    .venv/bin/python bench/bench_transport.py [--calls 3000] [--concurrency 8] [--batch 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import machine  # noqa: E402
from services.offers.reference.formulas import ATS_INPUTS  # noqa: E402

PATH = "/partners/reference/ml/ats/predict/batch"  # the server's default prefix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(batch: int) -> bytes:
    member = {name: 1.0 + i for i, name in enumerate(ATS_INPUTS)}
    return json.dumps([member] * batch).encode()


async def _drive(send, calls: int, concurrency: int) -> None:
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            status, answer = await send()
            assert status == 200 and answer, (status, answer[:200])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def ours(base: str, payload: bytes, calls: int, concurrency: int) -> float:
    from services.http.transport import KeepAliveTransport

    transport = KeepAliveTransport(base, connect_timeout_s=1.0, read_timeout_s=5.0, pool_maxsize=concurrency,
                                   headers={"Accept": "application/json"})

    async def send():
        status, _, answer = await transport.request("POST", PATH, payload)
        return status, answer

    try:
        await send()  # connect outside the measurement
        started = time.process_time()
        await _drive(send, calls, concurrency)
        return (time.process_time() - started) / calls
    finally:
        await transport.close()


async def with_aiohttp(base: str, payload: bytes, calls: int, concurrency: int) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        async def send():
            async with session.post(base + PATH, data=payload,
                                    headers={"Content-Type": "application/json"}) as response:
                return response.status, await response.read()

        await send()
        started = time.process_time()
        await _drive(send, calls, concurrency)
        return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=10, help="members per ATS batch call")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Windows
        uvloop = None
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "services.offers.reference.server", "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the reference partner did not start") from None
                time.sleep(0.1)
        payload = body(args.batch)
        run = uvloop.run if uvloop is not None else asyncio.run  # what run-offers uses
        results: dict[str, list[float]] = {"courier transport": [], "aiohttp": []}
        for _ in range(args.runs):
            results["courier transport"].append(run(ours(base, payload, args.calls, args.concurrency)))
            results["aiohttp"].append(run(with_aiohttp(base, payload, args.calls, args.concurrency)))
    finally:
        server.terminate()
        server.wait(10)
    print(f"machine: {machine()}; {args.calls} POSTs of {args.batch} members, {args.concurrency} in flight, "
          f"reference partner (uvicorn, one worker, keep-alive); median of {args.runs}, interleaved")
    ours_ms = statistics.median(results["courier transport"]) * 1000
    theirs_ms = statistics.median(results["aiohttp"]) * 1000
    for name, values in results.items():
        print(f"  {name:<18} client CPU per call {statistics.median(values) * 1000:.3f} ms "
              f"(runs: {', '.join(f'{v * 1000:.3f}' for v in values)})")
    print(f"  aiohttp / courier transport: {theirs_ms / ours_ms:.2f}x the client CPU per call")


if __name__ == "__main__":
    main()
