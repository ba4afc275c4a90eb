"""``grants demo`` (what ``make run`` runs): the whole product on this machine.

A private Redis, the sandbox (Xsolla inventory, Xsolla Backpack and PlayFab
APIs), a worker and Flower start. Then, one sample project per backend:
- Xsolla inventory (project 44056): the sample purchase feed (repeats, a
  conflict, an unknown item, invalid lines), then refunds of two purchases
  and of one never made; outcomes and balances are printed;
- PlayFab (project 9001, mapped with GRANTS_PROJECTS): purchases for three
  players, granted as annotated item instances;
- Xsolla Backpack: a game key, a virtual item, a currency package and a promo
  code created in one user's Backpack, then listed.
With GRANTS_REDIS_URL / GRANTS_XSOLLA_BASE_URL set, those real services are
used instead, for the Xsolla inventory part.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from devstack import metricsview
from devstack.localstack import REPO_ROOT, Stack, free_port
from ops.args import table
from ops.backpack import item_detail
from producers.feed import read_feed
from producers.progress import Progress
from producers.publisher import Publisher
from schemas.kinds import BACKPACK_CREATE
from schemas.records import FINAL_STATUSES, Status
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

DEMO_PROJECT = 44056
PLAYFAB_PROJECT = 9001
PLAYFAB_PLAYERS = ["PF-7A1C0DE", "PF-33B0B0B", "PF-9C0FFEE"]
# The demo project's catalog in the sandbox: the sample's "legendary.sword.v2"
# is not in it, so the backend refuses that one purchase (404) and the worker
# isolates it from the rest of its batch.
DEMO_CATALOG = ["booster_mega_1", "gem.pack.100", "gem.pack.500", "skin-dragon", "battle_pass.s1"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole stack locally on a sample feed and report (make run)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--feed", type=Path, help="JSON-lines feed (default: the bundled sample)")
    p.add_argument("--project-id", type=int, default=DEMO_PROJECT)
    p.add_argument(
        "--flower-port", type=int, default=5555, help="Flower's port (default 5555; a free one if taken, or with 0)"
    )
    p.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the stack up for Flower until Ctrl-C (default: when run on a terminal)",
    )
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "var" / "demo", help="logs and data (default var/demo)")
    p.set_defaults(run=run)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``grants demo``: start the stack, run the samples through it and report;
    0 when the metrics agree with the records."""
    real_redis = "redis_url" in settings.model_fields_set
    real_backend = "xsolla_base_url" in settings.model_fields_set
    shutil.rmtree(args.workdir, ignore_errors=True)
    stack = Stack(args.workdir)
    if real_backend:
        stack.merchant_id = settings.xsolla_merchant_id
        stack.api_key = settings.xsolla_api_key.get_secret_value()
    try:
        _say("== starting the stack")
        _start_redis(stack, settings, real_redis)
        _start_backend(stack, settings, args.project_id, real_backend)
        stack.settings_env.update(_worker_overrides(stack, settings, real_redis=real_redis, real_backend=real_backend))
        metrics_url = _start_worker(stack)
        flower_port = _start_flower(stack, args.flower_port)
        env_file = _write_env(stack, args.workdir / "env", settings, flower_port, metrics_url)
        source = f"source {_shown(env_file)} &&"
        _say(f"   env:     {_shown(env_file)} (source it to run the commands below against this stack)")
        # The demo's workload takes a second or two: sampled every 0.1 s.
        sampler = metricsview.Sampler([metrics_url], interval=0.1).start()
        redis_url = settings.redis_url if real_redis else stack.redis_url
        pub_settings = settings.model_copy(update={"redis_url": redis_url, "broker_url": settings.broker_url})
        unique = _publish_feed(pub_settings, args.feed, args.project_id)
        results = Results(connect(redis_url), Keys(settings.key_prefix))
        _wait_outcomes(results, args.project_id, unique)
        metrics_agree = _report(results, args.project_id, unique, metrics_url)
        backpack_user = None
        if not real_backend:
            backpack_user = _sandbox_samples(Publisher(pub_settings), results, stack, settings, args.project_id, source)
        _final_metrics(sampler, metrics_url, args.workdir / "demo.png")
        keep = sys.stdout.isatty() if args.keep is None else args.keep
        _say_try_it(stack, flower_port, source, unique[0], args.project_id, backpack_user, keep=keep)
        if keep:
            _say("The stack stays up for you to explore. Press Ctrl-C to stop it.")
            while True:
                time.sleep(3600)
        _say(
            "\nstack stopped (not on a terminal, or --no-keep): Redis, the sandbox, the worker and Flower "
            "are gone. To keep them up for the commands above: grants demo --keep"
        )
        return 0 if metrics_agree else 1
    except KeyboardInterrupt:
        _say("\nstopping")
        return 0
    finally:
        stack.stop()


def _start_redis(stack: Stack, settings: Settings, real_redis: bool) -> None:
    """A private Redis, unless GRANTS_REDIS_URL names one."""
    if real_redis:
        _say(f"   redis:   {_mask(settings.redis_url)} (GRANTS_REDIS_URL)")
    else:
        server = stack.start_redis()
        _say(f"   redis:   {server.url} (private, AOF in {server.dir})")


def _start_backend(stack: Stack, settings: Settings, project_id: int, real_backend: bool) -> None:
    """The sandbox, with the demo project's catalog, unless GRANTS_XSOLLA_BASE_URL names a backend."""
    if real_backend:
        _say(f"   backend: {settings.xsolla_base_url} (GRANTS_XSOLLA_BASE_URL)")
    else:
        stack.start_sandbox()
        stack.sandbox_put(f"/sandbox/projects/{project_id}/catalog", DEMO_CATALOG)
        _say(f"   backend: sandbox at {stack.sandbox_url}")


def _worker_overrides(stack: Stack, settings: Settings, *, real_redis: bool, real_backend: bool) -> dict[str, str]:
    """The worker's settings beyond the stack's: the PlayFab project (on the
    sandbox, whose players it registers), or the real Redis and backend."""
    overrides = {}
    if not real_backend:
        # One project on PlayFab (the sandbox's PlayFab API, with its players).
        overrides["GRANTS_PROJECTS"] = json.dumps(
            {str(PLAYFAB_PROJECT): {"backend": "playfab", "base_url": f"{stack.sandbox_url}/playfab"}}
        )
        httpx.post(
            f"{stack.sandbox_url}/sandbox/playfab/players", json={"PlayFabIds": PLAYFAB_PLAYERS}, timeout=10
        ).raise_for_status()
    if real_redis:
        overrides["GRANTS_REDIS_URL"] = settings.redis_url
    if real_backend:
        overrides["GRANTS_XSOLLA_BASE_URL"] = settings.xsolla_base_url
    return overrides


def _start_worker(stack: Stack) -> str:
    """One worker (two processes) serving /metrics; returns its metrics URL."""
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    stack.start_worker(concurrency=2, GRANTS_METRICS_PORT=str(metrics_port))
    _say(f"   worker:  celery -A worker worker (log: {stack.workers[0].log_path})")
    _say(f"   metrics: {metrics_url} (health: /livez, /readyz; GRANTS_METRICS_PORT={metrics_port})")
    return metrics_url


def _start_flower(stack: Stack, wanted_port: int) -> int:
    """Flower on ``wanted_port`` (a free one if taken, or with 0); returns its port."""
    flower_port = wanted_port if wanted_port and _port_free(wanted_port) else free_port()
    stack.start_flower(flower_port)
    _say(
        f"   flower:  http://127.0.0.1:{flower_port} (basic auth: user {stack.flower_auth[0]}, "
        f"password {stack.flower_auth[1]}, made for this run)"
    )
    return flower_port


def _publish_feed(pub_settings: Settings, feed: Path | None, project_id: int) -> list[str]:
    """Publish the feed (default: the bundled sample), naming its invalid
    lines; returns its distinct purchase ids in order."""
    feed_path = feed or Path(str(resources.files("devstack").joinpath("samples", "purchases.jsonl")))
    _say(f"\n== publishing {feed_path.name} to project {project_id}")
    commands, invalid = [], 0
    with open(feed_path, encoding="utf-8") as stream:
        for item in read_feed(stream, project_id):
            if isinstance(item, list):
                invalid += 1
                for error in item:
                    _say(f"   invalid: {error}")
            else:
                commands.append(item)
    published = Publisher(pub_settings).publish_many(commands)
    unique = list(dict.fromkeys(c.external_purchase_id for c in commands))
    _say(f"   published {published} commands ({len(unique)} distinct purchases); {invalid} invalid lines skipped")
    return unique


def _sandbox_samples(
    publisher: Publisher, results: Results, stack: Stack, settings: Settings, project_id: int, source: str
) -> str:
    """The samples only the sandbox serves: refunds, balances, PlayFab and
    Backpack; returns the Backpack user."""
    _refunds(publisher, results, project_id)
    _balances(stack, project_id)
    _playfab(publisher, results, stack)
    return _backpack(publisher, results, stack, settings, project_id, source)


def _final_metrics(sampler: metricsview.Sampler, metrics_url: str, png_path: Path) -> None:
    """The metrics table at the end, and the plot of the run's scrapes."""
    scrapes = sampler.stop()
    _metrics_table(metricsview.Scrape.of([metrics_url]), metrics_url)
    png = metricsview.plot(scrapes, png_path, "grants demo: outcomes and latency")
    if png is not None:
        _say(f"   plot of outcomes/s and purchase -> outcome latency over the run: {_shown(png)}")


def _say_try_it(
    stack: Stack,
    flower_port: int,
    source: str,
    purchase_id: str,
    project_id: int,
    backpack_user: str | None,
    *,
    keep: bool,
) -> None:
    """Where Flower is, and commands to try against the stack."""
    _say(
        f"\nFlower (tasks, workers, queues): http://127.0.0.1:{flower_port} "
        f"(user {stack.flower_auth[0]}, password {stack.flower_auth[1]})"
    )
    _say(f"\n== try it ({'while the stack is up' if keep else 'on a stack kept up: grants demo --keep'})")
    tries = [
        f"grants results get {purchase_id} --project-id {project_id}",
        "grants results stats",
        f"grants results list --status rejected --project-id {project_id}",
    ]
    if backpack_user is not None:
        tries.append(f"grants backpack items --project-id {project_id} --user {backpack_user}")
    for line in tries:
        _say(f"   {source} {line}")
    _say(f'   {source} curl -s "$GRANTS_METRICS_URL" | grep ^grants_outcomes_total')
    _say(f'   {source} curl -su "$FLOWER_BASIC_AUTH" "$FLOWER_URL/api/tasks?search={purchase_id}"')


def _shown(path: Path) -> str:
    """A path as the operator types it: relative to here when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _write_env(stack: Stack, path: Path, settings: Settings, flower_port: int, metrics_url: str) -> Path:
    """``var/demo/env``: every setting the printed commands need, to ``source``
    (this run's credentials: readable by the owner alone)."""
    env = {k: v for k, v in stack.env().items() if k.startswith("GRANTS_") and k != "GRANTS_LOG_FORMAT" and v}
    env["GRANTS_KEY_PREFIX"] = settings.key_prefix
    env["GRANTS_METRICS_URL"] = metrics_url
    env["SANDBOX_URL"] = stack.sandbox_url
    env["FLOWER_URL"] = f"http://127.0.0.1:{flower_port}"
    env["FLOWER_BASIC_AUTH"] = ":".join(stack.flower_auth)
    lines = [
        "# Written by `grants demo` for the stack it started (gone once the demo ends,",
        "# unless run with --keep). Holds this run's credentials: chmod 600.",
        "#   source " + _shown(path),
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
        # `grants` as installed next to the Python running the demo.
        f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _mask(url: str) -> str:
    from worker.logs import Redactor

    return Redactor([]).scrub(url)


def _wait_outcomes(results: Results, project_id: int, ids: list[str], timeout: float = 120.0) -> None:
    final = {s.value for s in FINAL_STATUSES}
    progress = Progress("outcomes", total=len(ids), stream=sys.stdout)
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = sum(1 for i in ids if (results.get(project_id, i) or {}).get("status") in final)
        progress.update(done)
        if done == len(ids):
            break
        time.sleep(0.2)
    progress.done()
    if done < len(ids):
        _say(f"   {len(ids) - done} purchases still without an outcome after {timeout:.0f}s")


def _table(headers: list[str], rows: list[list[Any]], right: list[int] | None = None) -> None:
    """An aligned table, indented as the demo's output is."""
    for line in table(headers, rows, right=right or ()):
        _say("   " + line)


def _report(results: Results, project_id: int, ids: list[str], metrics_url: str) -> bool:
    """The outcome table (from the records) and its summary (from the
    metrics); False when the two disagree."""
    _say("\n== outcomes")
    counts: dict[str, int] = {}
    rows = []
    for pid in ids:
        r = results.get(project_id, pid) or {}
        op = (r.get("command") or {}).get("operation") or {}
        items = ", ".join(f"{i['quantity']}x {i['sku']}" for i in op.get("items", []))
        status = r.get("status") or "?"
        counts[status] = counts.get(status, 0) + 1
        note = ""
        if r.get("conflicts"):
            note = f"conflicting repeat refused ({r['conflicts']['count']}x)"
        elif r.get("error"):
            note = r["error"]  # whole: the demo's reasons are short, and the point
        rows.append([pid, op.get("user", {}).get("id", ""), items, status, r.get("duplicates", 0), note])
    _table(["EXTERNAL_PURCHASE_ID", "USER", "ITEMS", "STATUS", "DUPS", "NOTE"], rows, right=[4])
    # The summary is the metrics' (what Prometheus would scrape), checked
    # against the records above.
    labels = {"kind": "grant", "project": str(project_id)}
    scrape = _scrape_until(metrics_url, lambda s: s.by(metricsview.OUTCOMES, "status", **labels) == _floats(counts))
    outcomes = {k: int(v) for k, v in sorted(scrape.by(metricsview.OUTCOMES, "status", **labels).items())}
    received = {k: int(v) for k, v in scrape.by(metricsview.RECEIVED, "result", **labels).items()}
    latency = scrape.buckets(metricsview.LATENCY, **labels)
    _say(
        "   "
        + ", ".join(f"{n} {s}" for s, n in outcomes.items())
        + f"; conflicts recorded: {received.get('conflict', 0)}"
    )
    _say(
        "   received: "
        + ", ".join(f"{received.get(r, 0)} {r}" for r in ("new", "duplicate", "conflict"))
        + f"; purchase -> outcome p50 {_secs(metricsview.quantile(latency, 0.5))}, "
        f"p99 {_secs(metricsview.quantile(latency, 0.99))}"
    )
    stats = results.stats()
    agree = outcomes == counts and received.get("conflict", 0) == stats["counts"][Status.conflict.value]
    _say(
        f"   (from {metrics_url}: grants_outcomes_total, grants_commands_received_total, "
        f"grants_purchase_to_outcome_seconds; "
        + ("the records above agree)" if agree else f"MISMATCH: the records say {counts})")
    )
    return agree


def _floats(counts: dict[str, int]) -> dict[str, float]:
    return {k: float(v) for k, v in counts.items()}


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _scrape_until(url: str, done: Callable[[metricsview.Scrape], bool], timeout: float = 10.0) -> metricsview.Scrape:
    """A scrape that shows what ``done`` wants (the leader exports the ledger's
    numbers once it holds its lock), or the last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            scrape = metricsview.Scrape.of([url])
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        else:
            if done(scrape) or time.monotonic() > deadline:
                return scrape
        time.sleep(0.3)


def _metrics_table(scrape: metricsview.Scrape, metrics_url: str) -> None:
    """Every kind and project the run touched, as the metrics count them."""
    _say(f"\n== metrics ({metrics_url})")
    lanes = sorted(
        {
            (dict(ls)["kind"], dict(ls)["project"])
            for (n, ls), _v in scrape.samples.items()
            if n in (metricsview.OUTCOMES, metricsview.RECEIVED)
        }
    )
    rows = []
    for kind, project in lanes:
        labels = {"kind": kind, "project": project}
        by_status = sorted(scrape.by(metricsview.OUTCOMES, "status", **labels).items())
        by_result = sorted(scrape.by(metricsview.RECEIVED, "result", **labels).items())
        latency = scrape.buckets(metricsview.LATENCY, **labels)
        rows.append(
            [
                kind,
                project,
                ", ".join(f"{int(v)} {s}" for s, v in by_status if v),
                ", ".join(f"{int(v)} {r}" for r, v in by_result if v),
                _secs(metricsview.quantile(latency, 0.5)),
                _secs(metricsview.quantile(latency, 0.99)),
            ]
        )
    _table(["KIND", "PROJECT", "OUTCOMES", "RECEIVED", "P50", "P99"], rows, right=[4, 5])


def _sample(name: str, project_id: int, kind: str = "grant") -> list[Any]:
    path = Path(str(resources.files("devstack").joinpath("samples", name)))
    with open(path, encoding="utf-8") as stream:
        return [c for c in read_feed(stream, project_id, kind) if not isinstance(c, list)]


def _wait(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.2)


def _refunds(publisher: Publisher, results: Results, project_id: int) -> None:
    refunds = _sample("refunds.jsonl", project_id, "revoke")
    _say(f"\n== refunds: publishing {len(refunds)} revokes (grants publish --kind revoke)")
    publisher.publish_many(refunds)
    final = {"revoked", "noop", "rejected", "failed", "in_doubt"}
    ids = [r.external_purchase_id for r in refunds]
    _wait(lambda: all(((results.get(project_id, i) or {}).get("revoke") or {}).get("status") in final for i in ids))
    rows = []
    for i in ids:
        r = results.get(project_id, i) or {}
        rv = r.get("revoke") or {}
        rows.append([i, r.get("status") or "-", rv.get("status") or "?", rv.get("error") or ""])
    _table(["EXTERNAL_PURCHASE_ID", "GRANT", "REVOKE", "NOTE"], rows)


def _playfab(publisher: Publisher, results: Results, stack: Stack) -> None:
    purchases = _sample("playfab.jsonl", PLAYFAB_PROJECT)
    _say(
        f"\n== PlayFab: project {PLAYFAB_PROJECT} (GRANTS_PROJECTS maps it to PlayFab); "
        f"{len(purchases)} purchases via Admin/GrantItemsToUsers"
    )
    publisher.publish_many(purchases)
    ids = [c.external_purchase_id for c in purchases]
    _wait_outcomes(results, PLAYFAB_PROJECT, ids)
    rows = []
    for c in purchases:
        r = results.get(PLAYFAB_PROJECT, c.external_purchase_id) or {}
        instances = [g.get("ItemInstanceId") for g in (r.get("response") or {}).get("ItemGrantResults", [])]
        item = c.operation.items[0]
        rows.append(
            [
                c.external_purchase_id,
                c.user_id,
                f"{item.quantity}x {item.sku}",
                r.get("status", "?"),
                ", ".join(i or "?" for i in instances),
            ]
        )
    _table(["EXTERNAL_PURCHASE_ID", "PLAYFAB_ID", "ITEMS", "STATUS", "INSTANCES"], rows)


def _backpack(
    publisher: Publisher, results: Results, stack: Stack, settings: Settings, project_id: int, source: str
) -> str:
    from worker.backends.registry import Backends

    creates = _sample("backpack.jsonl", project_id, BACKPACK_CREATE)
    user = creates[0].user_id
    _say(f"\n== Xsolla Backpack: {len(creates)} creates for user {user} (grants publish --kind {BACKPACK_CREATE})")
    publisher.publish_many(creates)
    final = {"granted", "rejected", "failed", "in_doubt"}
    _wait(
        lambda: all(
            (results.get(project_id, c.operation_id, "backpack.create") or {}).get("status") in final for c in creates
        )
    )
    _table(
        ["OPERATION_ID", "ITEM_TYPE", "STATUS"],
        [
            [
                c.operation_id,
                c.item_type,
                (results.get(project_id, c.operation_id, BACKPACK_CREATE) or {}).get("status", "?"),
            ]
            for c in creates
        ],
    )
    backend = Backends(
        settings.model_copy(
            update={
                "backpack_base_url": stack.sandbox_url,
                "backpack_merchant_id": "12345",
                "backpack_token": SecretStr(stack.backpack_token),
                "backpack_host_id": stack.backpack_host_id,
            }
        )
    ).backpack
    try:
        items = backend.list_items(project_id, user)
    finally:
        backend.close()
    _say(f"   the user's Backpack now ({source} grants backpack items --project-id {project_id} --user {user}):")
    rows = [[i.get("item_type", ""), i.get("item_sku", ""), item_detail(i)] for i in items]
    _table(["ITEM_TYPE", "SKU", "CODE / QUANTITY"], rows)
    return user


def _balances(stack: Stack, project_id: int) -> None:
    rows = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    _say("\n== sandbox balances")
    ordered = sorted(rows, key=lambda b: (b["user_id"], b["sku"]))
    _table(["USER", "SKU", "QUANTITY"], [[b["user_id"], b["sku"], b["quantity"]] for b in ordered], right=[2])
