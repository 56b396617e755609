"""`usagebot ingest` and `usagebot evaluate` against a real database file."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from tests.bot.helpers import SPIKE_RULES, day, run_cli, write_accounts, write_usage


def _count(url: str, table: str) -> int:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return c.execute(text(f"select count(*) from {table}")).scalar_one()
    finally:
        eng.dispose()


def test_ingest_then_evaluate_notifies_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'u.db'}"
    vals = [100.0] * 40
    vals[30] = 900.0
    usage = write_usage(tmp_path / "u.csv", 40, {"acme": vals})
    accts = write_accounts(tmp_path / "a.csv", [{"id": "acme", "name": "Acme Corp", "owner_email": "ae@x.io",
                                                 "plan": "growth", "crm_id": "001"}])
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(usage), "--accounts", str(accts))
    assert code == 0, err
    assert "1 account(s) stored" in out and "40 row(s) read" in out
    # loading the same file again changes nothing
    assert run_cli("ingest", "--db", url, "--usage", str(usage))[0] == 0
    assert _count(url, "usage_points") == 40

    rules = tmp_path / "r.toml"
    rules.write_text(SPIKE_RULES)
    code, out, err = run_cli("evaluate", "--db", url, "--rules", str(rules), "--at", day(31), "--first-run", "notify")
    assert code == 0, err
    assert "FIRED · Acme Corp · api_calls · rule calls-spike" in out and "DM ae@x.io" in out
    assert "1 notification(s) sent" in out
    code, out, _ = run_cli("evaluate", "--db", url, "--rules", str(rules), "--at", day(31))
    assert "0 notification(s) sent" in out and "FIRED" not in out  # same tick again: no duplicate


def test_evaluate_holds_conditions_already_true_at_the_first_evaluation(tmp_path):
    """The default first_run policy: the first evaluation of a book records what already holds and
    prints one summary instead of an alert per condition."""
    url = f"sqlite:///{tmp_path / 'u.db'}"
    vals = [100.0] * 40
    vals[30] = 900.0
    usage = write_usage(tmp_path / "u.csv", 40, {"acme": vals})
    accts = write_accounts(tmp_path / "a.csv", [{"id": "acme", "name": "Acme Corp", "owner_email": "ae@x.io",
                                                 "plan": "growth", "crm_id": "001"}])
    assert run_cli("ingest", "--db", url, "--usage", str(usage), "--accounts", str(accts))[0] == 0
    rules = tmp_path / "r.toml"
    rules.write_text(SPIKE_RULES)
    code, out, err = run_cli("evaluate", "--db", url, "--rules", str(rules), "--at", day(31))
    assert code == 0, err
    assert "FIRED · Acme Corp" not in out and "FIRST_RUN" in out
    assert "1 fired" in out and "1 already true at the first evaluation: recorded, not notified" in out
    assert _count(url, "alert_episodes") == 1


def test_ingest_rejects_whole_file_or_skips_with_rejects(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,account,metric,value\n2026-09-01,acme,api_calls,5\n2026-09-02,acme,api_calls,x\n")
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(bad))
    assert code == 1 and f"{bad}:3: column 'value'" in err and "not stored" in err
    assert _count(url, "usage_points") == 0  # nothing stored half-way
    rejects = tmp_path / "rejects.csv"
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(bad), "--on-error", "skip",
                             "--rejects", str(rejects))
    assert code == 0 and _count(url, "usage_points") == 1
    assert "x" in rejects.read_text().splitlines()[1]


def test_ingest_needs_a_file(tmp_path):
    assert run_cli("ingest", "--db", f"sqlite:///{tmp_path / 'x.db'}")[0] == 2
    code, _, err = run_cli("ingest", "--usage", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err


def test_unreachable_database_is_one_clear_line_without_the_password(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    usage = write_usage(tmp_path / "u.csv", 2, {"acme": [1.0, 2.0]})
    url = f"postgresql://usagebot:S3cretPassw0rd@127.0.0.1:{port}/usage?connect_timeout=2"
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(usage))
    assert code == 1
    assert "S3cretPassw0rd" not in err + out
    assert err.startswith("usagebot ingest: ") and "usagebot:***@127.0.0.1" in err
    assert "check that the server is running" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _rows(url: str) -> list[tuple]:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(text(
                "select account_id, metric, bucket_start, value from usage_points order by 1, 2, 3"))]
    finally:
        eng.dispose()


def test_ingest_streams_chunks_in_one_transaction(tmp_path, monkeypatch):
    import bot.cli.main

    monkeypatch.setattr(bot.cli.main, "INGEST_CHUNK_ROWS", 2)  # every chunk boundary is exercised
    url = f"sqlite:///{tmp_path / 'u.db'}"
    good = tmp_path / "good.csv"
    # acme's 2026-09-01 minute appears in three chunks: one file's rows of a bucket add up
    good.write_text("timestamp,account,metric,value\n"
                    "2026-09-01T00:00:05Z,acme,api_calls,1\n2026-09-02,acme,api_calls,10\n"
                    "2026-09-01T00:00:30Z,acme,api_calls,2\n2026-09-01,bolt,api_calls,7\n"
                    "2026-09-01T00:00:59Z,acme,api_calls,4\n")
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(good))
    assert code == 0, err
    assert "5 row(s) read, 3 bucket(s) written" in out
    first = _rows(url)
    assert [(a, v) for a, _, _, v in first] == [("acme", 7.0), ("acme", 10.0), ("bolt", 7.0)]
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(good))  # again: nothing changes
    assert code == 0 and "5 row(s) read, 0 bucket(s) written" in out and _rows(url) == first

    # a bad row after several chunks went in: the whole file is rolled back
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,account,metric,value\n" + "2026-09-03,acme,api_calls,1\n" * 5
                   + "2026-09-04,acme,api_calls,-3\n")
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(bad))
    assert code == 1 and f"{bad}:7: column 'value'" in err and "not stored" in err
    assert _rows(url) == first


def test_ingest_of_several_files_is_one_transaction(tmp_path):
    """`ingest --usage bad.csv --accounts ok.csv` stores neither (it stored the accounts and exited 1)."""
    url = f"sqlite:///{tmp_path / 'u.db'}"
    accts = write_accounts(tmp_path / "a.csv", [{"id": "acme", "name": "Acme Corp", "owner_email": "ae@x.io",
                                                 "plan": "growth", "crm_id": "001"}])
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,account,metric,value\n2026-09-01,acme,api_calls,5\n2026-09-02,acme,api_calls,x\n")
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(bad), "--accounts", str(accts))
    assert code == 1 and f"{bad}:3: column 'value'" in err
    assert f"nothing was stored ({accts} and {bad} not stored)" in err and "stored" not in out
    assert _count(url, "accounts") == 0 and _count(url, "usage_points") == 0


def test_ingest_refuses_a_bucket_whose_rows_overflow(tmp_path):
    """Two finite values summing to inf (1e308 + 1e308 in one minute) are refused, naming the bucket."""
    url = f"sqlite:///{tmp_path / 'u.db'}"
    accts = write_accounts(tmp_path / "a.csv", [{"id": "acme", "name": "Acme", "owner_email": "", "plan": "",
                                                 "crm_id": ""}])
    big = tmp_path / "big.csv"
    big.write_text("timestamp,account,metric,value\n2026-09-01T00:00:05Z,globex,api_calls,3\n"
                   "2026-09-01T00:00:10Z,acme,api_calls,1e308\n2026-09-01T00:00:20Z,acme,api_calls,1e308\n")
    code, out, err = run_cli("ingest", "--db", url, "--usage", str(big), "--accounts", str(accts))
    assert code == 1 and "Traceback" not in err
    assert (f"{big}: usage records: account 'acme', metric 'api_calls', bucket 2026-09-01T00:00:00Z: the values "
            "of the bucket add up to more than the largest number a float64 holds") in err
    assert _count(url, "accounts") == 0 and _count(url, "usage_points") == 0


def test_evaluate_on_a_database_file_that_does_not_exist_creates_none(tmp_path):
    """A typo in --db made `usagebot evaluate` create the folder and an empty, migrated database and
    report '0 condition(s) holding' as if the book were quiet."""
    rules = tmp_path / "r.toml"
    rules.write_text(SPIKE_RULES)
    typo = tmp_path / "dbb" / "u.db"
    code, out, err = run_cli("evaluate", "--db", f"sqlite:///{typo}", "--rules", str(rules), "--at", day(31))
    assert code == 1 and f"usagebot evaluate: no database at {typo}" in err and "creates none" in err, err
    assert not typo.parent.exists() and "evaluated" not in out
    code, out, err = run_cli("ui", "--port", "0", "--db", f"sqlite:///{typo}")  # it left an empty file there
    assert code == 1 and f"usagebot ui: no database at {typo}" in err and not typo.parent.exists(), err
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{typo}"\n[rules]\npaths = ["{rules}"]\n[slack]\nbot_token = "xoxb-1"\n')
    for argv in (["outbox", "deliver", "--config", str(config)], ["slack", "deliver", "--config", str(config)]):
        code, out, err = run_cli(*argv)  # they made an empty book to deliver nothing from
        assert code == 1 and f"no database at {typo}" in err and "no outbox to deliver" in err, (argv, err)
    assert not typo.parent.exists()
