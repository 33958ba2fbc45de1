"""The whole stack, proven on this machine: image, compose file, and what an operator relies on.

    python3 deploy/stack_test.py [--base IMAGE] [--keep] [--skip-test-target] [--serve]

Run by ``deploy/stack_test.sh`` (which installs podman and podman-compose first, or says why it
skips), itself run by ``.ci/run`` after ``make test``. Standard library only: it runs on the host,
outside the project's virtualenv. Steps, each printed with its time:

 1. the image: build the runtime image (and report its size), build the ``test`` target (the unit
    tests run in the build) and prove that a failing test fails that build;
 2. start time: a container on SQLite, from start to ``/readyz`` 200 (median of 3);
 3. ``podman-compose --profile demo up`` with two workers; wait for ``/readyz`` through nginx;
 4. the README's price and estimate examples give the README's answers, through nginx;
 5. an API key created in the ``web`` container (``flask api-keys create``) reads runs;
 6. a distributed offers run of the bundled sample on the two workers equals a local run; the same
    sample uploaded over REST (through nginx) runs on the coordinator and workers to the same results,
    and the web view's sign-in page is served;
 7. a bigger distributed run with one worker container SIGKILLed mid-run, default settings: its
    chunk is queued again when its claim goes silent (30 s), every member recorded exactly once,
    results equal to a local run of the same input;
 8. ``web`` stopped with SIGTERM while report requests are in flight: every one answers 200;
 9. logs are JSON lines; ``/metrics`` shows every worker process and the busy share;
10. ``down`` then ``up``: the runs (PostgreSQL volume) are still there.
Everything it started is removed at the end (``down -v``) unless ``--keep``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "courier-stacktest"
IMAGE = "localhost/courier:latest"
STANDINS = {"postgres": "POSTGRES_IMAGE", "redis": "REDIS_IMAGE", "nginx": "NGINX_IMAGE"}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[stack {time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def run(*command: str, check: bool = True, timeout: float = 1200, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}"
                         f"\n{result.stderr[-3000:]}")
    return result


def build_args(base: str) -> list[str]:
    # This machine reaches PyPI and Debian through a TLS proxy whose CA is in the host's bundle only.
    mount = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if Path(CA_BUNDLE).exists() else []
    return ["--network", "host", *mount, "--build-arg", f"BASE={base}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Http:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, key: str | None = None, timeout: float = 30) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post_json(self, path: str, body: dict) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 180) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if self.get("/readyz", timeout=2)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"FAILED: {self.base}/readyz not 200 within {timeout:.0f} s")


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Stack:
    """The compose project under test, driven by podman-compose."""

    def __init__(self, compose: str, port: int, project: str = PROJECT, **settings: str) -> None:
        self.project = project
        self.command = [compose, "-p", project, "-f", str(ROOT / "compose.yaml"), "--profile", "demo"]
        self.env = {**os.environ, "COURIER_IMAGE": IMAGE, "COURIER_PORT": str(port),
                    **{variable: f"localhost/courier-{name}:latest" for name, variable in STANDINS.items()},
                    **settings}
        self.http = Http(port)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.command, *args, check=check, env=self.env, cwd=ROOT)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def exec(self, service: str, *command: str, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess:
        return run("podman", "exec", self.container(service), *command, check=check, timeout=timeout)

    def sql(self, query: str) -> list[list[str]]:
        out = self.exec("postgres", "psql", "-U", "courier", "-d", "courier", "-At", "-F", "\t", "-c", query).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def up(self, workers: int = 2) -> None:
        self.compose("up", "-d", "--scale", f"worker={workers}")

    def down(self, volumes: bool = False) -> None:
        self.compose("down", *(["-v"] if volumes else []), check=False)
        # podman-compose's down misses containers added by --scale (worker_2): remove the project's all.
        leftover = run("podman", "ps", "-a", "-q", "--filter",
                       f"label=com.docker.compose.project={self.project}", check=False).stdout.split()
        if leftover:
            run("podman", "rm", "-f", "--depend", *leftover, check=False)
        if volumes:
            run("podman", "volume", "rm", "-f", f"{self.project}_pgdata", check=False)


def offers_run(stack: Stack, *args: str) -> int:
    """Run `flask run-offers` in the web container; the run's id."""
    out = stack.exec("web", "flask", "run-offers", "--as-of", "2024-01-05", *args).stdout
    match = re.search(r"^run (\d+) succeeded", out, re.MULTILINE)
    if not match:
        raise SystemExit(f"FAILED: run-offers {' '.join(args)} did not succeed:\n{out}")
    return int(match.group(1))


def results(stack: Stack, run_id: int, key: str) -> list[tuple]:
    """A run's results from its REST export, without the per-call timings (which differ by nature)."""
    status, body = stack.http.get(f"/api/v1/offer-runs/{run_id}/export.csv", key)
    assert status == 200, (status, body[:300])
    rows = list(csv.DictReader(io.StringIO(body)))
    return sorted(tuple(v for k, v in row.items() if not k.endswith("_ms")) for row in rows)


def step_image(base: str, prove_test_target: bool) -> dict:
    figures: dict = {}
    started = time.monotonic()
    run("podman", "build", *build_args(base), "-t", IMAGE, str(ROOT))
    size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    base_size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", base).stdout.strip())
    figures.update(image_mb=size / 1e6, base_mb=base_size / 1e6)
    say(f"runtime image built in {time.monotonic() - started:.0f} s: {size / 1e6:.0f} MB "
        f"({base_size / 1e6:.0f} MB of it the base {base})")
    for name in STANDINS:
        run("podman", "build", *build_args(base), "-t", f"localhost/courier-{name}:latest",
            str(ROOT / "deploy" / "standins" / name))
    say("stand-in images built: " + ", ".join(f"localhost/courier-{n}" for n in STANDINS))
    if prove_test_target:
        started = time.monotonic()
        passed = run("podman", "build", *build_args(base), "--target", "test", "-t", "localhost/courier:test",
                     str(ROOT))
        summary = re.findall(r"\d+ passed.*", passed.stdout + passed.stderr)
        say(f"test target built: the unit tests ran in the build ({summary[-1] if summary else '?'}) "
            f"in {time.monotonic() - started:.0f} s")
        with tempfile.TemporaryDirectory() as context:
            shutil.copytree(ROOT, context, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".git", ".venv", ".tox", "__pycache__", "instance"))
            (Path(context) / "tests" / "test_zz_stack_fails_on_purpose.py").write_text(
                "def test_a_failing_test_fails_the_image_build():\n    assert 1 + 1 == 3\n")
            failing = run("podman", "build", *build_args(base), "--target", "test", context, check=False)
        assert failing.returncode != 0, "a failing test did not fail the test target's build"
        assert "test_a_failing_test_fails_the_image_build" in failing.stdout + failing.stderr
        say(f"test target with a failing test: build failed (exit {failing.returncode}), as it must")
    return figures


def step_start_time() -> float:
    volume = f"{PROJECT}-sqlite"
    run("podman", "volume", "rm", "-f", volume, check=False)
    try:
        run("podman", "run", "--rm", "-v", f"{volume}:/opt/courier/instance", IMAGE, "flask", "db", "upgrade")
        times = []
        for attempt in range(3):
            port = free_port()
            name = f"{PROJECT}-start-{attempt}"
            started = time.monotonic()
            run("podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v",
                f"{volume}:/opt/courier/instance", IMAGE)
            try:
                Http(port).wait_ready(60)
                times.append(time.monotonic() - started)
            finally:
                run("podman", "rm", "-f", name, check=False)
    finally:
        run("podman", "volume", "rm", "-f", volume, check=False)
    median = statistics.median(times)
    say(f"container start to /readyz 200 (SQLite, gunicorn defaults): {', '.join(f'{t:.2f}' for t in times)} s; "
        f"median {median:.2f} s")
    return median


def step_readme_examples(stack: Stack) -> None:
    """Every `curl ... localhost:8000` block of the README followed by a `# {...}` answer line."""
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"```sh\n(curl -s [^`]*?localhost:8000[^`]*?)\n# (\{[^\n]*\})\n```", readme)
    assert len(examples) >= 2, "the README's price and estimate examples were not found"
    for command, answer in examples:
        command = command.replace("\\\n", " ")
        path = re.search(r"localhost:8000(/[^' ]*)", command).group(1)
        body = re.search(r"-d '(\{.*?\})'", command)
        status, text = (stack.http.post_json(path, json.loads(body.group(1))) if body
                        else stack.http.get(path))
        assert status == 200 and json.loads(text) == json.loads(answer), (path, status, text, answer)
        say(f"README example {path.split('?')[0]}: {text}")


def step_key(stack: Stack) -> str:
    out = stack.exec("web", "flask", "api-keys", "create", "--name", "stack-test", "--scope", "runs:read").stdout
    key = re.search(r"^(courier_\S+)$", out, re.MULTILINE).group(1)
    assert stack.http.get("/api/v1/offer-runs", key)[0] == 200
    assert stack.http.get("/api/v1/offer-runs")[0] == 401
    say("API key created in the web container: runs listed with it, 401 without")
    return key


def wait_for_workers(stack: Stack, count: int = 2, timeout: float = 120) -> None:
    """Until every worker container's Celery says it is ready (it waits for the database and broker first)."""
    deadline = time.monotonic() + timeout
    pending = [stack.container("worker", i) for i in range(1, count + 1)]
    while pending and time.monotonic() < deadline:
        logs = {name: run("podman", "logs", name, check=False) for name in pending}
        pending = [name for name, out in logs.items() if " ready." not in out.stdout + out.stderr]
        time.sleep(0.5)
    assert not pending, f"workers not ready: {pending}"


def step_sample_runs(stack: Stack, key: str) -> tuple[int, int]:
    wait_for_workers(stack)
    # Chunks of 25 members: 36 chunk tasks, so that both workers (two processes each) take some.
    distributed = offers_run(stack, "--input", "data/member_data.csv", "--distributed", "--chunk-size", "25")
    workers = stack.sql(f"SELECT DISTINCT worker FROM offer_run_chunks WHERE run_id = {distributed}")
    local = offers_run(stack, "--input", "data/member_data.csv")
    got, expected = results(stack, distributed, key), results(stack, local, key)
    assert got == expected and len(got) == 990, (len(got), len(expected))
    say(f"bundled sample: distributed run {distributed} on {len(workers)} worker containers = local run {local} "
        f"({len(got)} members, every column but the timings)")
    assert len(workers) == 2, f"both workers should have taken chunks: {workers}"
    return distributed, local


def step_rest_run(stack: Stack, local_run: int, key: str) -> int:
    out = stack.exec("web", "flask", "api-keys", "create", "--name", "stack-test-writer", "--scope", "runs:read",
                     "--scope", "runs:write").stdout
    writer = re.search(r"^(courier_\S+)$", out, re.MULTILINE).group(1)
    body = (ROOT / "data" / "member_data.csv").read_bytes()
    request = urllib.request.Request(stack.http.base + "/api/v1/offer-runs?as_of=2024-01-05&chunk_size=100", data=body,
                                     headers={"Content-Type": "text/csv", "Authorization": f"Bearer {writer}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status
        run_id = json.loads(response.read())["id"]
    deadline = time.monotonic() + 180
    while True:
        status = json.loads(stack.http.get(f"/api/v1/offer-runs/{run_id}", writer)[1])["status"]
        if status not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(0.5)
    assert status == "succeeded", status
    got, expected = results(stack, run_id, key), results(stack, local_run, key)
    assert got == expected, (len(got), len(expected))
    assert stack.http.get("/sign-in")[0] == 200
    say(f"the sample uploaded over REST through nginx: run {run_id} succeeded on the coordinator and workers, "
        f"results = local run {local_run}; the web view's sign-in page is served")
    return run_id


def step_killed_worker(stack: Stack, key: str, members: int = 30_000) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT))
    from bench.gen_members import generate

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "members.csv"
        generate(members, path)
        os.chmod(path, 0o644)
        run("podman", "cp", str(path), f"{stack.container('web')}:/tmp/members.csv")
    command = ["podman", "exec", stack.container("web"), "flask", "run-offers", "--as-of", "2024-01-05", "--input",
               "/tmp/members.csv", "--distributed", "--chunk-size", "3000", "--no-batch"]
    coordinator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hostnames = {run("podman", "inspect", "--format", "{{.Config.Hostname}}", stack.container("worker", i))
                 .stdout.strip(): stack.container("worker", i) for i in (1, 2)}
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and coordinator.poll() is None:
        rows = stack.sql("SELECT c.status, c.worker FROM offer_run_chunks c WHERE c.run_id = "
                         "(SELECT max(id) FROM offer_runs)")
        done = sum(1 for status, _ in rows if status == "done")
        running = [worker.split("@", 1)[-1] for status, worker in rows if status == "running" and worker]
        if done >= 1 and running:
            victim = hostnames.get(running[0])
        time.sleep(0.05)
    assert victim is not None, "no chunk was seen running after one was done"
    run("podman", "kill", "--signal", "KILL", victim)
    say(f"SIGKILLed worker container {victim} while it held a chunk ({done} chunks done)")
    out, _ = coordinator.communicate(timeout=600)
    match = re.search(r"^run (\d+) succeeded", out, re.MULTILINE)
    assert coordinator.returncode == 0 and match, out[-3000:]
    taken_back = re.search(r"chunk \d+: its worker \S+ stopped reporting for [\d.]+ s \(attempt \d+\): queued again",
                           out)
    assert taken_back, "the killed worker's chunk was not taken back:\n" + out[-3000:]
    say(f"coordinator: {taken_back.group(0)}")
    distributed = int(match.group(1))
    attempts = stack.sql(f"SELECT max(attempts), count(*) FROM offer_run_chunks WHERE run_id = {distributed}")[0]
    local = offers_run(stack, "--input", "/tmp/members.csv", "--no-batch")
    total, distinct = stack.sql(f"SELECT count(*), count(DISTINCT member_id) FROM offer_results "
                                f"WHERE run_id = {distributed}")[0]
    got, expected = results(stack, distributed, key), results(stack, local, key)
    assert total == distinct and got == expected, (total, distinct, len(got), len(expected))
    say(f"run {distributed} succeeded after the kill: {total} results = {distinct} distinct members = local run "
        f"{local}; {attempts[1]} chunks, most attempts of one chunk {attempts[0]}")
    return distributed, local


def step_graceful_drain(stack: Stack, key: str, run_ids: list[int]) -> None:
    """Reports of runs no worker has drawn yet take ~1-2 s each: in flight when SIGTERM arrives."""
    answers: list[tuple[int, str]] = []
    clients = [threading.Thread(target=lambda r=r: answers.append(stack.http.get(f"/api/v1/offer-runs/{r}/report",
                                                                                  key, timeout=60)))
               for r in run_ids]
    for client in clients:
        client.start()
    busy, deadline = 0.0, time.monotonic() + 30
    while busy < len(run_ids) + 1 and time.monotonic() < deadline:  # the reports plus this scrape
        busy = sample(stack.http.get("/metrics", timeout=5)[1], "courier_http_requests_in_flight")
    assert busy >= len(run_ids) + 1, f"the report requests were not seen in flight ({busy})"
    started = time.monotonic()
    run("podman", "stop", "--time", "35", stack.container("web"))
    stopped_s = time.monotonic() - started
    for client in clients:
        client.join(60)
    statuses = [status for status, _ in answers]
    assert statuses == [200] * len(run_ids) and all(body.rstrip().endswith("</html>") for _, body in answers), \
        statuses
    say(f"web stopped with SIGTERM while {len(run_ids)} report requests were in flight: all {statuses}, "
        f"stop took {stopped_s:.1f} s")
    run("podman", "start", stack.container("web"))
    stack.http.wait_ready()


def step_logs_and_metrics(stack: Stack) -> None:
    lines = [line for line in run("podman", "logs", stack.container("web")).stderr.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert parsed and len(parsed) == len(lines), [line for line in lines if not line.startswith("{")][:5]
    access = [line for line in parsed if line.get("logger") == "courier.access"]
    assert access and all(line.get("request_id") for line in access)
    deadline = time.monotonic() + 60
    while True:  # web was restarted just before: its four workers boot side by side, each counted once serving
        text = stack.http.get("/metrics")[1]
        workers = sample(text, "courier_workers")
        if workers == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rss = re.findall(r'^courier_process_resident_memory_bytes\{pid="\d+",role="worker"\} (\S+)$', text, re.MULTILINE)
    assert workers == 4 and len(rss) == 4, (workers, rss)
    say(f"web logs: {len(parsed)} JSON lines ({len(access)} access lines with request ids); /metrics: "
        f"{workers:.0f} workers, RSS {', '.join(f'{float(r) / 1e6:.0f}' for r in rss)} MB")


def step_down_up(stack: Stack, key: str, run_ids: list[int]) -> None:
    stack.down()
    stack.up()
    stack.http.wait_ready()
    status, body = stack.http.get("/api/v1/offer-runs?limit=100", key)
    kept = {item["id"]: item["status"] for item in json.loads(body)["items"]}
    assert status == 200 and all(kept.get(r) == "succeeded" for r in run_ids), kept
    say(f"down then up: runs {sorted(run_ids)} still there (PostgreSQL volume), the key still works")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="localhost/debian-python:bookworm", help="image to build FROM")
    parser.add_argument("--compose", default=shutil.which("podman-compose") or "podman-compose")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    parser.add_argument("--skip-test-target", action="store_true", help="do not build the test target")
    parser.add_argument("--serve", action="store_true",
                        help="only build the images and bring the stack up as project `courier` on COURIER_PORT "
                             "(default 8080), then leave it running (`make stack`)")
    args = parser.parse_args()

    if args.serve:
        step_image(args.base, prove_test_target=False)
        port = int(os.environ.get("COURIER_PORT", "8080"))
        stack = Stack(args.compose, port, project="courier")
        stack.up(workers=int(os.environ.get("COURIER_STACK_WORKERS", "2")))
        say(f"ready through nginx after {stack.http.wait_ready():.1f} s: http://127.0.0.1:{port}/docs\n"
            f"  stop: {' '.join(stack.command)} down   (add -v to drop the database volume)\n"
            f"  (with the environment: " + " ".join(f"{v}=localhost/courier-{n}:latest" for n, v in STANDINS.items())
            + f" COURIER_IMAGE={IMAGE})")
        return

    figures = step_image(args.base, prove_test_target=not args.skip_test_target)
    figures["start_s"] = step_start_time()
    # Default settings throughout: a killed worker's chunk is queued again when its claim has been
    # silent for COURIER_OFFERS_CHUNK_SILENT_S (30 s), long before the broker's hour.
    stack = Stack(args.compose, free_port())
    stack.down(volumes=True)
    try:
        started = time.monotonic()
        stack.up(workers=2)
        ready = stack.http.wait_ready()
        say(f"stack up (postgres, redis, migrate, web, nginx, 2 workers, reference-partner, venue-api): ready "
            f"through nginx {time.monotonic() - started:.1f} s after `up` ({ready:.1f} s after it returned)")
        step_readme_examples(stack)
        key = step_key(stack)
        sample_runs = step_sample_runs(stack, key)
        rest_run = step_rest_run(stack, sample_runs[1], key)
        big_runs = step_killed_worker(stack, key)
        step_graceful_drain(stack, key, list(big_runs) + [sample_runs[0]])
        step_logs_and_metrics(stack)
        step_down_up(stack, key, [*sample_runs, rest_run, *big_runs])
    finally:
        if not args.keep:
            stack.down(volumes=True)
    say(f"stack test passed: image {figures['image_mb']:.0f} MB, start to ready {figures['start_s']:.2f} s, "
        f"whole test {time.monotonic() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
