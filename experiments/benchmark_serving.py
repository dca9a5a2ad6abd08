"""Load benchmark of the real-time server: many sessions, a target decision rate, latencies.

    python -m experiments.benchmark_serving [--sessions 1000] [--rate 1000] [--duration 20]
        [--clients 4] [--client raw|boss] [--database sqlite:///PATH] [--bundle PATH]
        [--memory-entries N] [--server-cpus N,N] [--stall-probe SECONDS]
        [--server-flag=FLAG ...]

Starts ``python -m serving`` (SQLite in a temporary directory by default, a scripted bundle
unless ``--bundle`` is given, its memory empty or already holding ``--memory-entries``
lessons; its event loop pinned to the first CPU and its brain and storage processes to the
last, ``--cpus``, unless ``--server-cpus ''``) on a free loopback port, registers a game,
then starts ``--clients`` client processes holding ``--sessions`` WebSocket sessions between
them. Every session asks for a move and then reports its outcome on a fixed schedule, so the
total is ``--rate`` decisions/s (and as many outcomes/s). After ``--warmup`` seconds it
measures for ``--duration`` seconds and prints (with, in its header, the host's stalls of
each CPU, the time a fixed piece of Python work takes on each, and the cost of a wake-up
between CPUs, measured just before and after the run: ``experiments.host_stalls``):

- decisions/s achieved, end-to-end latency (client send -> response received) p50/p99/max,
  the outcome round trip p50/p99, errors;
- the server's own histograms over the measured window (``/metrics``, bucket upper bounds):
  the brain's decision, the time from a decision to its group commit (the answer does not wait
  for it), the whole request and the outcome (which waits for its commit);
- the host's steal over the measured window, where the kernel accounts it.

``--client`` picks the sessions: ``raw`` (the default) is
``experiments.load_clients.LeanSession``, an ``asyncio.Protocol`` over the ``websockets``
library's sans-I/O protocol, one try per message; ``boss`` is ``serving.client.BossClient``,
the client games use (retries, reconnects, a heartbeat every 10 s). The default is the lean
one because this is a load generator running on the server's own cores: every millisecond of
CPU the clients burn is taken from the server under test and shows up in its latencies, while
real game clients run on other machines. On this 2-core VM at 1,000 decisions/s, with 4
client processes, BossClient burns about 0.47 ms of CPU per decision with its outcome (a
quarter of the machine) and the lean session about 0.39 ms. Most of what is left is not
Python: a client process is woken about three times a decision (the session's tick, the
answer, the learning_update) and a wake-up alone costs 50-150 us of CPU here, whatever the
client; fewer ``--clients`` processes share more of those wake-ups.

Targets on 2 cores: 1,000 concurrent sessions held open; at 1,000 decisions/s end-to-end p99
under 10 ms and server decision p99 under 2 ms; no errors. This script imports ``serving``,
``experiments.load_clients`` (on ``websockets`` and ``orjson``, which ``serving`` needs) and
the standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import host_stalls
from experiments.load_clients import LeanSession
from serving.affinity import allowed_cpus
from serving.client import BossClient

CONTEXT = {"frequent_actions": ["light_attack", "dodge"], "dodge_frequency": 0.6,
           "attack_patterns": ["combo"], "movement_style": "aggressive", "reaction_time": 0.3,
           "health_percentage": 0.7, "difficulty_preference": "normal",
           "session_duration": 20.0, "recent_deaths": 2, "equipment_level": 5}
STYLES = ("aggressive", "defensive", "balanced", "evasive")
Session = BossClient | LeanSession
HISTOGRAMS = {"decision (brain)": "bosslab_decision_seconds",
              "decision to its commit (not waited for)": "bosslab_decision_store_seconds",
              "request (frame to answer)": "bosslab_request_seconds",
              "outcome (frame to learning_update)": "bosslab_outcome_seconds"}
GC_PAUSES = "bosslab_gc_pause_seconds"


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def start_server(args: argparse.Namespace, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    bundle = args.bundle or scripted_bundle(workdir / "bundle", args.memory_entries)
    database = args.database or f"sqlite:///{workdir / 'serving.db'}"
    command = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--port", str(port),
               "--database-url", database, "--log-level", "WARNING",
               "--max-connections", str(args.sessions + 100),
               *(["--cpus", args.server_cpus] if args.server_cpus else []), *args.server_flag]
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: see {workdir / 'server.log'}")
        try:
            if http("GET", f"http://127.0.0.1:{port}/api/v1/health")[0] == 200:
                return process
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start within 60 s")


def scripted_bundle(directory: Path, entries: int) -> Path:
    """The scripted bundle served by default, its memory already holding ``entries`` lessons
    of sessions like the benchmark's (a server that has learnt for a while)."""
    from envs.observation import BossState  # noqa: PLC0415 (not in the clients)
    from serving.brain import MemoryBrain  # noqa: PLC0415
    from serving.bundle import load_bundle, write_bundle, write_scripted_bundle  # noqa: PLC0415
    from serving.protocol import BossActionRequest, to_situation  # noqa: PLC0415

    if not entries:
        return write_scripted_bundle(directory)
    bundle = load_bundle(write_scripted_bundle(directory.with_name(directory.name + "-empty")))
    brain = bundle.new_brain()
    assert isinstance(brain, MemoryBrain)
    rng = random.Random(0)
    for start in range(0, entries, 5000):
        size = min(5000, entries - start)
        situations = [to_situation(BossActionRequest.model_validate({
            "player_context": {**CONTEXT, "movement_style": rng.choice(STYLES),
                               "dodge_frequency": rng.random(),
                               "health_percentage": rng.random()},
            "boss_health_percentage": rng.random(), "battle_phase": "early_battle"}),
            BossState()) for _ in range(size)]
        brain.learn_keyed([brain.key_of(s) for s in situations],
                          [rng.choice(brain.boss_actions) for _ in range(size)],
                          [rng.random() for _ in range(size)], [f"prefill-{start}"] * size)
    return write_bundle(directory, bundle.manifest, brain.reader.memory)


def register(base: str) -> dict[str, Any]:
    status, text = http("POST", f"{base}/api/v1/games/register", {
        "game_id": f"bench-{os.getpid()}", "name": "benchmark",
        "vocabulary": {"boss_actions": ["attack", "defend", "special_move"]}})
    if status != 201:
        raise SystemExit(f"registration failed ({status}): {text}")
    return dict(json.loads(text))


def histogram(base: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of each histogram of interest (summed over their labels), and
    under ``served`` the decisions the server has answered (``{0.0: count}``)."""
    _, text = http("GET", f"{base}/metrics")
    out: dict[str, dict[float, float]] = {name: {} for name in (*HISTOGRAMS.values(), GC_PAUSES)}
    served = 0.0
    for line in text.splitlines():
        if line.startswith("bosslab_decisions_total{"):
            served += float(line.rsplit(" ", 1)[1])
        for name, buckets in out.items():
            if line.startswith(f"{name}_bucket{{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                value = float(line.rsplit(" ", 1)[1])
                buckets[float(bound)] = buckets.get(float(bound), 0.0) + value
    out["served"] = {0.0: served}
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The bucket upper bound holding quantile ``q`` of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return "n/a"
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return "> 100 ms" if bound == float("inf") else f"<= {bound * 1000:g} ms"
    return "n/a"


def pauses(before: dict[float, float], after: dict[float, float]) -> str:
    """How many garbage collections ran between two scrapes, their p99 and the longest (bucket
    upper bounds)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0:
        return "none"
    longest = bucket_quantile(before, after, 1.0)
    return f"{total:.0f}, p99 {bucket_quantile(before, after, 0.99)}, longest {longest}"


def share_within(before: dict[float, float], after: dict[float, float], bound: float) -> str:
    """The share of the observations between two scrapes that took at most ``bound`` seconds
    (a bucket's upper bound)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0 or bound not in after:
        return "n/a"
    return f"{(after[bound] - before.get(bound, 0.0)) / total:.2%}"


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Tally:
    decisions: list[float] = field(default_factory=list)
    outcomes: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    connected: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def open_boss_client(base: str, game: dict[str, Any], session_id: str) -> BossClient:
    client = BossClient(base, game["game_id"], token=game["access_token"],
                        session_id=session_id, try_timeout=5.0, heartbeat_interval=10.0)
    await client.connect()
    return client


async def open_lean_session(base: str, game: dict[str, Any], session_id: str) -> LeanSession:
    return await LeanSession.open(base, game["game_id"], game["access_token"],
                                  session_id=session_id, try_timeout=5.0, heartbeat_interval=10.0)


OPENERS: dict[str, Callable[[str, dict[str, Any], str], Awaitable[Session]]] = {
    "raw": open_lean_session, "boss": open_boss_client}
"""``--client``: how to open one session."""


async def open_sessions(base: str, game: dict[str, Any], count: int, tally: Tally,
                        client_kind: str = "raw") -> list[Session]:
    gate = asyncio.Semaphore(25)
    opener = OPENERS[client_kind]

    async def one(index: int) -> Session | None:
        async with gate:
            try:
                return await opener(base, game, f"s{os.getpid()}-{index}")
            except Exception as error:  # counted, reported
                tally.error(f"connect: {type(error).__name__}")
                return None

    sessions = [s for s in await asyncio.gather(*(one(i) for i in range(count))) if s]
    tally.connected = len(sessions)
    return sessions


def held_open(session: Session) -> bool:
    """Connected at the start and never lost since."""
    if isinstance(session, BossClient):
        return bool(session.status) and session.reconnects == 0
    return session.is_open


async def play(client: Session, interval: float, start: float, measure_from: float,
               stop_at: float, tally: Tally) -> None:
    """One session: a move, then its outcome, every ``interval`` seconds."""
    rng = random.Random()
    tick = start + rng.uniform(0, interval)
    context = {**CONTEXT, "movement_style": rng.choice(STYLES)}
    while tick < stop_at:
        await asyncio.sleep(max(0.0, tick - time.time()))
        measured = tick >= measure_from
        try:
            sent = time.perf_counter()
            move = await client.request_move(context, boss_health_percentage=rng.random())
            asked = time.perf_counter()
            await client.report_outcome(move["action_id"], "partial", rng.random())
            if measured:
                tally.decisions.append((asked - sent) * 1000)
                tally.outcomes.append((time.perf_counter() - asked) * 1000)
        except Exception as error:  # counted, reported
            if measured:
                tally.error(type(error).__name__)
        tick += interval


async def client_main(client_kind: str, base: str, game: dict[str, Any], sessions: int,
                      interval: float, ready: Any, go: Any, timing: Any, results: Any) -> None:
    tally = Tally()
    clients = await open_sessions(base, game, sessions, tally, client_kind)
    gc.collect()
    gc.freeze()  # no full-heap collection pauses in the measurement
    ready.release()
    await asyncio.to_thread(go.wait)
    start, measure_from, stop_at = timing[:]
    cpu = asyncio.create_task(cpu_between(measure_from, stop_at))
    await asyncio.gather(*(play(c, interval, start, measure_from, stop_at, tally)
                           for c in clients))
    still_open = sum(1 for c in clients if held_open(c))
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    results.put({"decisions": tally.decisions, "outcomes": tally.outcomes,
                 "errors": tally.errors, "connected": tally.connected,
                 "held": still_open, "cpu": await cpu})


async def cpu_between(start: float, stop: float) -> float:
    """CPU seconds this process used between two wall-clock times."""
    await asyncio.sleep(max(0.0, start - time.time()))
    used = time.process_time()
    await asyncio.sleep(max(0.0, stop - time.time()))
    return time.process_time() - used


def client_process(nice: int, *args: Any) -> None:
    """One client process: uvloop when installed (the server's own loop, with uvicorn's
    ``standard`` extra), so the load generator leaves more of the shared cores to the server;
    ``nice`` lowers its scheduling priority (``--client-nice``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(nice)
    try:
        import uvloop  # noqa: PLC0415 (optional)
    except ImportError:
        asyncio.run(client_main(*args))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(client_main(*args))


# --- the report -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (the server's brain and storage processes)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # each thread lists those it started
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds used so far by a process and by each of its children."""
    return {p: cpu_seconds(p) for p in (pid, *child_pids(pid))}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def report(args: argparse.Namespace, parts: list[dict[str, Any]], before: dict[str, Any],
           after: dict[str, Any]) -> None:
    decisions = [v for p in parts for v in p["decisions"]]
    outcomes = [v for p in parts for v in p["outcomes"]]
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    rate = len(decisions) / args.duration
    served = after["served"][0.0] - before["served"][0.0]
    rows = [
        ("sessions connected / held open", f"{sum(p['connected'] for p in parts)} / "
                                           f"{sum(p['held'] for p in parts)}",
         f">= {args.sessions}"),
        ("decisions/s (target rate)", f"{rate:.0f} ({args.rate})", f">= {args.rate * 0.98:.0f}"),
        ("end-to-end decision p50", f"{percentile(decisions, 0.5):.2f} ms", ""),
        ("end-to-end decision p99", f"{percentile(decisions, 0.99):.2f} ms", "< 10 ms"),
        ("end-to-end decision max", f"{max(decisions, default=float('nan')):.2f} ms", ""),
        ("outcome round trip p50 / p99", f"{percentile(outcomes, 0.5):.2f} / "
                                         f"{percentile(outcomes, 0.99):.2f} ms", ""),
        ("errors", str(sum(errors.values())) + (f" {errors}" if errors else ""), "0"),
        ("server CPU / all clients' CPU (of one core)",
         f"{args.server_cpu:.0%} / {sum(p['cpu'] for p in parts) / args.duration:.0%}", ""),
        ("server CPU per decision served (with its outcome)",
         f"{args.server_cpu * args.duration / max(1.0, served) * 1000:.3f} ms "
         f"({served / args.duration:.0f} decisions/s served)", ""),
        ("server's child processes (brain, storage): CPU per decision",
         " + ".join(f"{cpu * args.duration / max(1.0, served) * 1000:.3f}"
                    for cpu in args.children_cpu) + " ms" if args.children_cpu else "none", ""),
        ("clients' CPU per decision (with its outcome)",
         f"{sum(p['cpu'] for p in parts) / max(1, len(decisions)) * 1000:.3f} ms", ""),
    ]
    for label, name in HISTOGRAMS.items():
        for q in (0.5, 0.99):
            target = "< 2 ms" if name == "bosslab_decision_seconds" and q == 0.99 else ""
            rows.append((f"server {label} p{int(q * 100)}",
                         bucket_quantile(before[name], after[name], q), target))
    rows.append(("server decisions (brain) within 2 ms",
                 share_within(before[HISTOGRAMS["decision (brain)"]],
                              after[HISTOGRAMS["decision (brain)"]], 0.002), ">= 99%"))
    rows.append(("server process's garbage collections (each pauses every socket)",
                 pauses(before[GC_PAUSES], after[GC_PAUSES]), ""))
    rows.append(("host's steal (of all CPUs' time, /proc/stat)",
                 "not reported" if args.steal is None else f"{args.steal:.1%}", ""))
    print(f"\n{args.sessions} sessions, {args.rate} decisions/s target, {args.duration:g} s "
          f"measured after {args.warmup:g} s warm-up, {args.clients} client processes "
          f"(--client {args.client}), "
          f"{os.cpu_count()} CPUs ({platform.system()} {platform.release()}), load average "
          f"before {args.load_before}, clients at nice {args.client_nice}, server "
          f"{'--cpus ' + args.server_cpus if args.server_cpus else 'not pinned'}")
    if args.host_before:
        print(f"host before the run (experiments.host_stalls): {args.host_before}\n"
              f"host after it: {args.host_after}")
    print("| measure | value | target |\n|---|---|---|")
    for label, value, target in rows:
        print(f"| {label} | {value} | {target} |")


# --- main -----------------------------------------------------------------------------------


def default_server_cpus() -> str:
    """The first and last CPU this process may use (one CPU: that one; none on non-Linux)."""
    cpus = sorted(allowed_cpus() or ())
    if not cpus:
        return ""
    return ",".join(str(cpu) for cpu in dict.fromkeys((cpus[0], cpus[-1])))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions/s in total")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--client", choices=sorted(OPENERS), default="raw",
                        help="the sessions: raw (lean, the default) or boss (BossClient)")
    parser.add_argument("--database", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: scripted)")
    parser.add_argument("--memory-entries", type=int, default=0, metavar="N",
                        help="serve the scripted bundle with N lessons already in its memory "
                             "(a server that has learnt for a while; the memory holds 20,000)")
    parser.add_argument("--client-nice", type=int, default=0, metavar="N",
                        help="run the client processes at this niceness (0-19): they share "
                             "the server's cores here, unlike real game clients")
    parser.add_argument("--server-cpus", default=default_server_cpus(), metavar="N,N",
                        help="the server's --cpus: its event loop on the first CPU, its brain "
                             "and storage processes on the others (default: the first and last "
                             "CPU this process may use; '' pins nothing)")
    parser.add_argument("--stall-probe", type=float, default=2.0, metavar="SECONDS",
                        help="before and after the run, spin on each CPU for this long, "
                             "time a fixed piece of Python work on each CPU and 1,000 wake-ups "
                             "between CPUs, and report the host's stalls, speed and "
                             "wake-up cost (experiments.host_stalls; 0 skips them)")
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="a flag for python -m serving, e.g. --server-flag=--no-brain-process")
    args = parser.parse_args(argv)
    if args.sessions < args.clients or args.rate <= 0 or args.duration <= 0:
        parser.error("need --sessions >= --clients, --rate > 0 and --duration > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.host_before = probe_host(args.stall_probe)
    workdir = Path(tempfile.mkdtemp(prefix="bosslab-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args, workdir, port)
    try:
        measured = run_load(args, base, server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        print(f"(server log: {workdir / 'server.log'})")
    args.host_after = probe_host(args.stall_probe)
    report(args, *measured)


def probe_host(seconds: float) -> str:
    """The host's stalls of every CPU this process may use and the cost of a wake-up between
    them ("" where it cannot pin, or with ``--stall-probe 0``)."""
    cpus = allowed_cpus()
    return host_stalls.probe(cpus, seconds) if seconds > 0 and cpus else ""


Measured = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]
"""What a run measured: each client process's part, the server's histograms before and
after the measured window."""


def run_load(args: argparse.Namespace, base: str, server_pid: int) -> Measured:
    game = register(base)
    context = mp.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    interval = args.sessions / args.rate
    timing = context.Array("d", 3)  # start, measure from, stop: set once all are connected
    shares = [args.sessions // args.clients + (i < args.sessions % args.clients)
              for i in range(args.clients)]
    # Daemonic: if this process fails before it reads their results (a dead server), they are
    # terminated at its exit instead of joined, which would wait forever on a full result pipe.
    processes = [context.Process(target=client_process, args=(
        args.client_nice, args.client, base, game, share, interval, ready, go, timing, results),
        daemon=True) for share in shares]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()
    now = time.time()
    timing[:] = [now + 0.5, now + 0.5 + args.warmup, now + 0.5 + args.warmup + args.duration]
    go.set()
    time.sleep(max(0.0, timing[1] - time.time()))
    before, cpu_before = histogram(base), cpu_by_process(server_pid)
    times_before = host_stalls.cpu_times()
    time.sleep(max(0.0, timing[2] - time.time()))
    cpu_after = cpu_by_process(server_pid)
    args.steal = host_stalls.steal_share(times_before, host_stalls.cpu_times())
    used = {pid: (cpu_after[pid] - cpu_before.get(pid, 0.0)) / args.duration
            for pid in cpu_after}
    args.server_cpu = used.pop(server_pid)
    args.children_cpu = sorted(used.values(), reverse=True)
    after = histogram(base)
    parts = [results.get(timeout=args.duration + 120) for _ in processes]
    for process in processes:
        process.join(30)
    return parts, before, after


if __name__ == "__main__":
    main()
