"""Benchmark: `usagebot backtest` against one cold evaluation of the same book, before and after.

    .venv/bin/python -m bench.bench_backtest                                  # 10k accounts x 180 days
    .venv/bin/python -m bench.bench_backtest --accounts 2000 --days 90
    .venv/bin/python -m bench.bench_backtest --baseline-ref none              # without the old code

Every phase runs in its own Python process (peak = its max RSS), one after the other in one run:
  generate   the synthetic demo book (4 metrics, daily) written as usage/accounts CSV (kept in
             --workdir and reused when it is already there)
  backtest   run_backtest with the shipped rules over the whole CSV (what `usagebot backtest` does,
             without printing): reading the CSV, the blocks, the replay with its alert records
  baseline   the same in a copy of the code at --baseline-ref (`git archive`; default: the commit
             before issue 15's replay work), so before and after are measured side by side
  cold       the CSV ingested into a fresh SQLite file (untimed), then one cold evaluation of the
             shipped rules at the book's last day: the blocks read from the database (which builds
             the usage tiles), the detectors and the lifecycle step (bench_scale's "first (cold)
             evaluation")
The backtest's events are checked to be identical to the baseline's (a digest of every event), and the
CPU time of their output (each notice built, with its message, and its JSON record) is reported: what
printing the events costs however the replay computes them.
Results are printed as a table (and --json); docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules" / "examples" / "default.toml"
METRICS4 = ("api_calls", "events", "exports", "reports")
BASELINE = "9de135c"  # main before issue 15's replay work


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_generate(args: argparse.Namespace) -> dict[str, Any]:
    from bot.cli.demo import write_book_csv
    from integrations.sources.demo import generate_book

    work = Path(args.workdir)
    meta = work / "book.json"
    if meta.exists() and json.loads(meta.read_text()).get("key") == _book_key(args):
        return {"phase": "generate", "reused": True, **json.loads(meta.read_text())}
    t0 = time.perf_counter()
    book = generate_book(n_accounts=args.accounts, days=args.days, seed=args.seed, metrics=METRICS4)
    write_book_csv(book, work / "usage.csv", work / "accounts.csv")
    info = {"key": _book_key(args), "end": book.end, "seconds": time.perf_counter() - t0}
    meta.write_text(json.dumps(info))
    return {"phase": "generate", "reused": False, **info}


def _book_key(args: argparse.Namespace) -> str:
    return f"{args.accounts}x{args.days}x{args.seed}"


def phase_backtest(args: argparse.Namespace) -> dict[str, Any]:
    """run_backtest over the book (in the code of the current directory: this tree or the baseline)."""
    import bot.backtest.run as backtest_run
    from bot.backtest.run import run_backtest
    from rules.loader import load_rules

    ruleset = load_rules([RULES])
    work = Path(args.workdir)
    digest = hashlib.sha256()
    seen: dict[str, Any] = {"events": 0, "first": None, "output_cpu": 0.0}
    # the CPU time of the events' output: each notice built (alert_notice, with the message and the
    # numbers it formats) and its JSON record (on_event) -- what printing the events costs however
    # the replay computes them (the floor under the backtest's ratio to one cold evaluation)
    notice = getattr(backtest_run, "alert_notice", None)
    if notice is not None:
        def timed_notice(*a: Any, **kw: Any) -> Any:
            c = time.process_time()
            try:
                return notice(*a, **kw)
            finally:
                seen["output_cpu"] += time.process_time() - c
        backtest_run.alert_notice = timed_notice  # type: ignore[attr-defined]
    t0, c0 = time.perf_counter(), time.process_time()

    def on_event(ev: Any) -> None:  # what `--format json` does with each event
        c = time.process_time()
        if seen["first"] is None:
            seen["first"] = time.perf_counter() - t0
        seen["events"] += 1
        record = ev.record() if hasattr(ev, "record") else ev  # an AlertNotice (now) or a dict (before)
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        seen["output_cpu"] += time.process_time() - c

    if "on_event" in inspect.signature(run_backtest).parameters:  # streaming (issue 15)
        run_backtest(ruleset, work / "usage.csv", work / "accounts.csv", on_event=on_event)
    else:  # the code before: events come at the end
        for ev in run_backtest(ruleset, work / "usage.csv", work / "accounts.csv").events:
            on_event(ev)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"phase": "backtest", "seconds": seconds, "cpu_s": cpu, "events": seen["events"], "digest": digest.hexdigest(),
            "first_event_s": seen["first"], "output_cpu_s": seen["output_cpu"] if notice is not None else None,
            "peak_rss_mb": _rss_mb()}


def phase_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from integrations.sources.csv_rows import iter_usage_csv_chunks, read_accounts_csv
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import load_usage

    work = Path(args.workdir)
    db = work / "cold.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    t0 = time.perf_counter()
    upsert_accounts(engine, read_accounts_csv(work / "accounts.csv").records)
    rows = load_usage(engine, (c.records for c in iter_usage_csv_chunks(work / "usage.csv")))
    engine.dispose()
    return {"phase": "ingest", "seconds": time.perf_counter() - t0, "rows": rows, "peak_rss_mb": _rss_mb()}


def phase_cold(args: argparse.Namespace) -> dict[str, Any]:
    from bot.service.pipeline import load_blocks_for
    from rules.engine import evaluate, history_needed
    from rules.lifecycle import advance
    from rules.loader import load_rules
    from storage.accounts import list_accounts
    from storage.db import make_engine

    rules = list(load_rules([RULES]).rules)
    end = json.loads((Path(args.workdir) / "book.json").read_text())["end"]
    engine = make_engine(f"sqlite:///{Path(args.workdir) / 'cold.db'}")
    t0, c0 = time.perf_counter(), time.process_time()
    accounts = {a.id: a for a in list_accounts(engine)}
    blocks = load_blocks_for(engine, history_needed(rules), end)
    t1 = time.perf_counter()
    result = evaluate(rules, blocks, accounts, end, only_due=False)
    t2 = time.perf_counter()
    advance({r.id: r for r in rules}, result.findings, result.decided, {}, end,
            evaluated_rules=result.evaluated_rules)
    t3 = time.perf_counter()
    engine.dispose()
    return {"phase": "cold", "seconds": t3 - t0, "cpu_s": time.process_time() - c0, "load_s": t1 - t0, "detect_s": t2 - t1, "lifecycle_s": t3 - t2,
            "findings": len(result.findings), "peak_rss_mb": _rss_mb()}


PHASES = {"generate": phase_generate, "backtest": phase_backtest, "ingest": phase_ingest, "cold": phase_cold}


def _run_phase(name: str, args: argparse.Namespace, tree: Path = ROOT) -> dict[str, Any]:
    """The phase in a fresh process, with `tree` (this checkout or the baseline copy) on its path."""
    cmd = [sys.executable, "-m", "bench.bench_backtest", "--phase", name, "--workdir", args.workdir,
           "--accounts", str(args.accounts), "--days", str(args.days), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline_tree(ref: str, into: Path) -> Path:
    """The code at `ref` (this repository's history), with this benchmark copied in to run it."""
    tree = into / f"baseline-{ref}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "bench").mkdir(exist_ok=True)
    (tree / "bench" / "bench_backtest.py").write_text(Path(__file__).read_text())
    return tree


def machine() -> str:
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, Python "
            f"{platform.python_version()}, numpy {numpy.__version__}")


def render(report: dict[str, Any]) -> str:
    b, c = report["backtest"], report["cold"]
    lines = [f"Backtest benchmark: {report['accounts']:,} accounts x {report['days']} days x 4 metrics, shipped rules",
             f"  machine: {report['machine']}", "",
             f"  {'phase':<44} {'seconds':>9} {'peak MB':>9} {'x cold':>8} {'cpu s':>9} {'x cold':>8}"]

    def row(label: str, r: dict[str, Any]) -> None:
        cpu = r.get("cpu_s")  # process CPU time: less moved by other processes than wall time on a shared box
        ratio = "" if cpu is None or not c.get("cpu_s") else f" {cpu:>9.2f} {cpu / c['cpu_s']:>8.2f}"
        lines.append(f"  {label:<44} {r['seconds']:>9.2f} {r['peak_rss_mb']:>9.0f} {r['seconds'] / c['seconds']:>8.2f}"
                     + ratio)
        if r.get("first_event_s") is not None:
            lines.append(f"    first event out after {r['first_event_s']:.1f} s")
        out = r.get("output_cpu_s")
        if out is not None and c.get("cpu_s"):
            lines.append(f"    of its cpu, the events' output (notices + JSON records) {out:.2f} s = {out / c['cpu_s']:.2f}x"
                         f" the cold evaluation's, {out / r['events'] * 1e6 if r['events'] else 0:.0f} us an event")

    row("one cold evaluation (read + detect + step)", c)
    lines.append(f"    read {c['load_s']:.2f} s, detectors {c['detect_s']:.2f} s, lifecycle {c['lifecycle_s']:.2f} s")
    row(f"backtest ({b['events']:,} events)", b)
    base = report.get("baseline")
    if base is not None:
        row(f"backtest at {report['baseline_ref']} (before)", base)
        same = "identical" if base["digest"] == b["digest"] else "DIFFERENT"
        cpu = f" (CPU time {base['cpu_s'] / b['cpu_s']:.2f}x)" if base.get("cpu_s") and b.get("cpu_s") else ""
        lines.append(f"  events before/after: {same}; speed-up {base['seconds'] / b['seconds']:.2f}x{cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", default=None, help="where the book and databases go (default: a temp dir)")
    p.add_argument("--baseline-ref", default=BASELINE, help="git ref of the code to compare with ('none': skip)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="usagebot-bench-backtest-") as tmp:
        if args.workdir is None:
            args.workdir = tmp
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"accounts": args.accounts, "days": args.days, "machine": machine(),
                                  "baseline_ref": args.baseline_ref}
        report["generate"] = _run_phase("generate", args)
        report["backtest"] = _run_phase("backtest", args)
        if args.baseline_ref != "none":
            report["baseline"] = _run_phase("backtest", args, _baseline_tree(args.baseline_ref, Path(tmp)))
        report["ingest"] = _run_phase("ingest", args)
        report["cold"] = _run_phase("cold", args)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
