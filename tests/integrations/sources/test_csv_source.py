"""csv source: a folder of drops (or one file), file by file, stored whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.csv_source import CsvSource
from storage.outbox import list_outbox
from storage.sources import get_source_state
from tests.integrations.sources.helpers import DAY, T0, config_problems, count, points, source_config

HEADER = "timestamp,account,metric,value\n"


def _source(path: Path, extra: str = "") -> CsvSource:
    return CsvSource(source_config(f"""
[[sources]]
id = "drops"
type = "csv"
path = "{path}"
min_age = "0"
{extra}
"""))


def _write(path: Path, rows: str, mtime: int | None = None) -> Path:
    path.write_text(HEADER + rows)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_new_files_are_read_once_and_changed_files_replace(engine: Engine, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    _write(drops / "2026-11-01.csv", "2026-11-01T00:00:00Z,acme,api_calls,10\n", mtime=1_000_000_000)
    src = _source(drops)
    r1 = poll_source(engine, src, T0 + DAY)
    r2 = poll_source(engine, src, T0 + DAY + 60)  # nothing new
    _write(drops / "2026-11-02.csv", "2026-11-02T00:00:00Z,acme,api_calls,4\n", mtime=1_000_000_100)
    _write(drops / "2026-11-01.csv", "2026-11-01T00:00:00Z,acme,api_calls,11\n", mtime=1_000_000_200)  # corrected
    r3 = poll_source(engine, src, T0 + 2 * DAY)
    assert (r1.batches, r2.batches, r3.batches) == (1, 0, 2)
    assert points(engine) == {("acme", "api_calls", T0): 11.0, ("acme", "api_calls", T0 + DAY): 4.0}
    state = get_source_state(engine, "drops")
    assert state is not None and state.watermark == T0 + DAY and state.last_success_at == T0 + 2 * DAY


def test_a_bad_file_is_rejected_whole_reported_to_admin_and_not_retried_until_changed(
        engine: Engine, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    _write(drops / "a.csv", "2026-11-01T00:00:00Z,acme,api_calls,10\n")
    bad = _write(drops / "b.csv", "2026-11-01T00:00:00Z,globex,api_calls,5\n2026-11-01,globex,api_calls,x\n")
    src = _source(drops)
    report = poll_source(engine, src, T0 + DAY, admin_channel="#ops")
    assert report.ok and len(report.rejected) == 1
    assert f"{bad}:3: column 'value': 'x' is not a number" in report.rejected[0]
    assert points(engine) == {("acme", "api_calls", T0): 10.0}  # nothing from b.csv, not even its good row
    notices = [r.payload for r in list_outbox(engine)]
    assert len(notices) == 1 and notices[0]["routing"] == {"owner": False, "channels": ["#ops"]}
    assert notices[0]["event"] == "rejected" and "b.csv" in notices[0]["message"]
    assert poll_source(engine, src, T0 + DAY + 60).batches == 0  # remembered as rejected
    _write(bad, "2026-11-01T00:00:00Z,globex,api_calls,5\n", mtime=1_500_000_000)  # fixed
    assert poll_source(engine, src, T0 + DAY + 120).batches == 1
    assert points(engine)[("globex", "api_calls", T0)] == 5.0


def test_skip_mode_stores_good_rows_and_reports_bad_ones(engine: Engine, tmp_path: Path) -> None:
    f = _write(tmp_path / "u.csv", "2026-11-01T00:00:00Z,acme,api_calls,10\nnope,acme,api_calls,1\n")
    report = poll_source(engine, _source(f, 'on_error = "skip"'), T0 + DAY)
    assert report.ok and points(engine) == {("acme", "api_calls", T0): 10.0}
    assert "1 bad row(s) skipped in u.csv" in report.rejected[0] and f"{f}:3" in report.rejected[0]
    # counted as skipped rows (usagebot_source_skipped_total), not as a rejected part: the file was stored
    assert (report.skipped, report.rejections) == (1, 0)


def test_files_still_being_written_wait_for_min_age(engine: Engine, tmp_path: Path) -> None:
    f = _write(tmp_path / "u.csv", "2026-11-01T00:00:00Z,acme,api_calls,10\n")
    src = CsvSource(source_config(f'[[sources]]\nid = "d"\ntype = "csv"\npath = "{tmp_path}"\nmin_age = "1h"\n'))
    assert poll_source(engine, src, T0).batches == 1  # only the empty cursor batch
    assert count(engine, "usage_points") == 0
    os.utime(f, (1_000_000_000, 1_000_000_000))
    assert poll_source(engine, src, T0 + 60).batches == 1 and count(engine, "usage_points") == 1


def test_accounts_file_is_loaded_when_it_changes(engine: Engine, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("id,name,owner_email,plan,crm_id,quota.api_calls\nacme,Acme,ae@acme.test,pro,001,1000\n")
    (tmp_path / "drops").mkdir()
    src = _source(tmp_path / "drops", f'accounts = "{accounts}"')
    assert poll_source(engine, src, T0).ok
    assert poll_source(engine, src, T0 + 60).batches == 0
    from storage.accounts import list_accounts

    [acme] = list_accounts(engine)
    assert acme.name == "Acme" and dict(acme.quotas) == {"api_calls": 1000.0}


def test_a_missing_path_fails_the_poll_with_the_path(engine: Engine, tmp_path: Path) -> None:
    report = poll_source(engine, _source(tmp_path / "nowhere"), T0)
    assert not report.ok and f"path {tmp_path / 'nowhere'} does not exist" in (report.error or "")


def test_config_requires_path_and_knows_its_keys() -> None:
    problems = config_problems('[[sources]]\nid = "d"\ntype = "csv"\npattern = "*.csv"\nonerror = "skip"\n')
    assert "test.toml:1: sources[0].path: is required" in problems
    assert any(p.startswith("test.toml:5: sources") and "onerror: unknown key; did you mean 'on_error'?" in p
               for p in problems)


# ----------------------------------------------------------- links, FIFOs, content from outside


SECRET_LINE = "root:x:0:0:sk_live_TOPSECRET:/root:/bin/bash"


def _notices(engine: Engine) -> str:
    return "\n".join(str(r.payload.get("message")) for r in list_outbox(engine))


def test_links_fifos_and_hard_links_in_a_drop_folder_are_refused_never_read(engine: Engine,
                                                                           tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_text(SECRET_LINE + "\n")
    usage_elsewhere = _write(outside / "good.csv", "2026-11-01T00:00:00Z,mallory,api_calls,999\n")
    drops = tmp_path / "drops"
    drops.mkdir()
    _write(drops / "a.csv", "2026-11-01T00:00:00Z,acme,api_calls,10\n")
    (drops / "x.csv").symlink_to(secret)
    (drops / "y.csv").symlink_to(usage_elsewhere)  # a valid usage file, but from outside the folder
    (drops / "z.csv").symlink_to(drops / "a.csv")  # even a link within the folder
    os.mkfifo(drops / "pipe.csv")  # would block a plain open() forever
    os.link(secret, drops / "hard.csv")
    src = _source(drops)
    report = poll_source(engine, src, T0 + DAY, admin_channel="#ops")
    assert report.ok
    assert points(engine) == {("acme", "api_calls", T0): 10.0}
    text = _notices(engine) + "\n".join(report.rejected)
    assert "sk_live" not in text and "root:x" not in text and "mallory" not in text
    for name, why in (("x.csv", "is a symbolic link"), ("y.csv", "is a symbolic link"),
                      ("pipe.csv", "is not a regular file"), ("hard.csv", "has 2 hard links")):
        assert f"{name} {why}" in text or f"{name}: {why}" in text, (name, text)
    assert poll_source(engine, src, T0 + DAY + 60).batches == 0  # told once, not at every poll


def test_a_configured_file_may_link_only_within_its_folder(engine: Engine, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    (cfg / "..2026_11_01").mkdir(parents=True)
    _write(cfg / "..2026_11_01" / "usage.csv", "2026-11-01T00:00:00Z,acme,api_calls,3\n")
    (cfg / "..data").symlink_to("..2026_11_01")  # how a Kubernetes ConfigMap is mounted
    (cfg / "usage.csv").symlink_to("..data/usage.csv")
    assert poll_source(engine, _source(cfg / "usage.csv"), T0 + DAY).ok
    assert points(engine) == {("acme", "api_calls", T0): 3.0}
    secret = tmp_path / "passwd"
    secret.write_text(SECRET_LINE + "\n")
    (cfg / "evil.csv").symlink_to(secret)
    report = poll_source(engine, _source(cfg / "evil.csv"), T0 + DAY)
    assert not report.ok and "is a link to a file outside its folder" in (report.error or "")
    assert "sk_live" not in (report.error or "")


def test_a_file_that_is_no_usage_file_is_never_quoted(engine: Engine, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "keys.csv").write_text(SECRET_LINE + "\nsecond line\n")
    (drops / "env.csv").write_text("DB_PASSWORD=hunter2,API_KEY=sk_live_abc\n")
    (drops / "typo.csv").write_text("timestamp,account,metrik,value\n")
    report = poll_source(engine, _source(drops), T0 + DAY, admin_channel="#ops")
    text = _notices(engine)
    assert len(report.rejected) == 3
    assert "sk_live" not in text and "hunter2" not in text and "root:x" not in text, text
    assert "column 'header cell 1': not a column name (not shown)" in text
    assert "unknown column 'metrik'" in text  # a near-miss of a column name is still named
