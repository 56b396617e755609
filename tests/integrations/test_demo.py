"""The synthetic demo book: determinism, shape, realism properties and exact labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from integrations.sources.csv_rows import (
    read_accounts_csv,
    read_usage_csv,
    write_accounts_csv,
    write_usage_csv,
)
from integrations.sources.demo import BASELINE_DAYS, DEFAULT_END, LABEL_KINDS, DemoBook, generate_book
from rules.model import DAY
from rules.periods import billing_period


@pytest.fixture(scope="module")
def book() -> DemoBook:
    return generate_book()


def weekend_mask(b: DemoBook) -> np.ndarray:
    day = (b.start + np.arange(b.n_buckets) * b.step) // DAY
    return (day + 3) % 7 >= 5


def test_deterministic_for_a_seed() -> None:
    a, b = generate_book(seed=11), generate_book(seed=11)
    assert a.accounts == b.accounts and a.labels == b.labels and a.account_ids == b.account_ids
    for m in a.metrics:
        assert np.array_equal(a.values[m], b.values[m], equal_nan=True)
    c = generate_book(seed=12)
    assert not np.array_equal(a.values["api_calls"], c.values["api_calls"], equal_nan=True)


def test_shapes_and_range(book: DemoBook) -> None:
    assert book.end == DEFAULT_END == 1_795_392_000
    assert book.start == book.end - 120 * DAY and book.step == DAY
    assert book.metrics == ("api_calls", "events", "exports")
    assert book.account_ids == [a.id for a in book.accounts]
    assert len(set(book.account_ids)) == 60
    for m in book.metrics:
        v = book.values[m]
        assert v.shape == (60, 120) and v.dtype == np.float64
        observed = v[~np.isnan(v)]
        assert (observed >= 0).all() and (observed == np.round(observed)).all()
    block = book.block("events")
    assert block.values is book.values["events"] and block.end == book.end


def test_custom_end_and_validation() -> None:
    b = generate_book(5, 14, end=DEFAULT_END - 7 * DAY, seed=1)
    assert b.end == DEFAULT_END - 7 * DAY and b.values["api_calls"].shape == (5, 14)
    with pytest.raises(ValueError, match="step"):
        generate_book(step=7000)
    with pytest.raises(ValueError, match="multiple of step"):
        generate_book(end=DEFAULT_END + 1)
    with pytest.raises(ValueError, match="invalid metric name"):
        generate_book(metrics=("api calls",))


def test_one_global_outage_day_and_late_onboarding(book: DemoBook) -> None:
    api = book.values["api_calls"]
    all_missing = np.flatnonzero(np.isnan(api).all(axis=0))
    assert all_missing.size == 1
    outage = int(all_missing[0])
    assert BASELINE_DAYS <= outage < 119
    for m in book.metrics:
        assert np.isnan(book.values[m][:, outage]).all()
    # Apart from the outage, data is missing only before a late account's first day.
    missing = np.isnan(api)
    missing[:, outage] = False
    late = np.flatnonzero(missing.any(axis=1))
    assert len(late) == 2
    for row in late:
        gaps = set(np.flatnonzero(missing[row]).tolist())
        first = max(gaps) + 1
        assert first > 20 and gaps | {outage} >= set(range(first))  # one run from day 0, bar the outage


def test_labels_in_range_clear_of_baseline_and_outage(book: DemoBook) -> None:
    assert {lb.kind for lb in book.labels} == set(LABEL_KINDS)
    api = book.values["api_calls"]
    outage_ts = book.start + int(np.flatnonzero(np.isnan(api).all(axis=0))[0]) * DAY
    ids = set(book.account_ids)
    for lb in book.labels:
        assert lb.account in ids and lb.metric in book.metrics and lb.note
        assert book.start + BASELINE_DAYS * DAY <= lb.start < lb.end <= book.end
        assert (lb.start - book.start) % DAY == 0 and (lb.end - book.start) % DAY == 0
        assert not lb.start <= outage_ts < lb.end
        length = (lb.end - lb.start) // DAY
        assert {"spike": 1 <= length <= 2, "drop": length >= 5, "inactivity": length >= 10}.get(
            lb.kind, length >= 28
        )
    # one anomaly per account
    kinds_by_account: dict[str, set[str]] = {}
    for lb in book.labels:
        kinds_by_account.setdefault(lb.account, set()).add(lb.kind)
    assert all(len(k) == 1 for k in kinds_by_account.values())


def test_labels_are_exact(book: DemoBook) -> None:
    row_of = {a: i for i, a in enumerate(book.account_ids)}
    for lb in book.labels:
        v = book.values[lb.metric][row_of[lb.account]]
        s, e = (lb.start - book.start) // DAY, (lb.end - book.start) // DAY
        before = v[s - 28 : s]
        if lb.metric == "exports":
            continue  # too sparse to check day by day
        if lb.kind == "spike":  # compared with the same weekday in the 4 weeks before
            for d in range(s, e):
                assert v[d] >= 2.0 * np.nanmedian(v[d - 28 : d : 7])
            if e < len(v):
                assert not v[e] >= 2.0 * np.nanmedian(v[e - 28 : e : 7])
        elif lb.kind == "inactivity":
            assert (v[s:e] == 0).all() and np.nanmean(v[s - 7 : s]) > 1
        elif lb.kind == "drop":
            assert np.nanmean(v[s:e]) <= 0.5 * np.nanmean(before)
            assert np.nanmean(v[s - 7 : s]) >= 0.6 * np.nanmean(before)
        else:  # expansion: each full week in the window grew on the week before
            weeks = np.array([np.nanmean(v[k : k + 7]) for k in range(s - 7, e - 6, 7)])
            growth = weeks[1:] / weeks[:-1]
            assert len(growth) >= 4 and np.exp(np.log(growth).mean()) >= 1.10
            assert growth.min() > 0.8  # daily noise can hide a week's growth, not reverse the trend
            if e + 7 <= len(v):  # then stays at the new level
                assert np.nanmean(v[e : e + 7]) >= 0.85 * weeks[-1]


def test_anomaly_rate_scales_labels() -> None:
    assert generate_book(anomaly_rate=0.0).labels == []
    few = {lb.account for lb in generate_book(200, 90).labels}
    many = {lb.account for lb in generate_book(200, 90, anomaly_rate=2.0).labels}
    assert len(many) > 1.6 * len(few)


def test_tiny_accounts_exist_and_carry_no_anomaly(book: DemoBook) -> None:
    median = np.nanmedian(book.values["api_calls"], axis=1)
    tiny = {book.account_ids[i] for i in np.flatnonzero(median < 10)}
    assert len(tiny) >= 2
    assert not tiny & {lb.account for lb in book.labels}
    assert {book.accounts[book.account_ids.index(a)].plan for a in tiny} == {"starter"}


def test_volumes_by_plan_and_weekly_seasonality(book: DemoBook) -> None:
    api = book.values["api_calls"]
    median = np.nanmedian(api, axis=1)
    by_plan = {p: np.median([m for a, m in zip(book.accounts, median, strict=True) if a.plan == p]) for p in
               ("starter", "growth", "enterprise")}  # fmt: skip
    assert by_plan["starter"] < by_plan["growth"] < by_plan["enterprise"]
    assert median.max() >= 5_000 and median.min() < 10
    weekend = weekend_mask(book)
    assert np.nanmean(api[:, ~weekend]) > 1.4 * np.nanmean(api[:, weekend])
    per_account = np.nanmean(api[:, weekend], axis=1) / np.nanmean(api[:, ~weekend], axis=1)
    assert np.median(per_account[median > 100]) == pytest.approx(0.45, abs=0.12)


def test_metric_correlations(book: DemoBook) -> None:
    api, events, exports = (np.nansum(book.values[m], axis=1) for m in book.metrics)
    assert np.corrcoef(np.log1p(api), np.log1p(events))[0, 1] > 0.8
    assert (events > api).mean() > 0.6  # events ~ api_calls x factor (around 3)
    observed = book.values["exports"][~np.isnan(book.values["exports"])]
    assert (observed == 0).mean() > 0.3 and exports.sum() < 0.01 * api.sum()


def test_account_facts_are_realistic(book: DemoBook) -> None:
    accounts = book.accounts
    assert {a.plan for a in accounts} == {"starter", "growth", "enterprise"}
    assert len({a.name for a in accounts}) == len(accounts)
    assert all(len(a.name.split()) >= 2 for a in accounts)
    owners = {a.owner_email for a in accounts if a.owner_email}
    assert 2 <= len(owners) <= 6 and all(o.endswith("@example.com") for o in owners)
    assert all(len(a.crm_id) == 18 and a.crm_id.startswith("001") for a in accounts)
    assert {a.billing_day for a in accounts} == {1, 15}
    assert sum(a.billing_day == 1 for a in accounts) > len(accounts) / 2
    non_utc = [a for a in accounts if a.timezone != "UTC"]
    assert 1 <= len(non_utc) < len(accounts) / 3


def test_quotas_exist_and_some_accounts_cross_them(book: DemoBook) -> None:
    assert all(set(a.quotas) == {"api_calls", "events"} for a in book.accounts)
    t = book.start + np.arange(book.n_buckets) * book.step
    crossed_100 = crossed_80_only = under_80 = 0
    for i, acct in enumerate(book.accounts):
        # the last completed billing period of this account
        current = billing_period(book.end - 1, acct.billing_day, acct.timezone)
        prev = billing_period(current.start - 1, acct.billing_day, acct.timezone)
        for metric, quota in acct.quotas.items():
            assert quota >= 1_000
            used = np.nansum(book.values[metric][i, (t >= prev.start) & (t < prev.end)])
            crossed_100 += used >= quota
            crossed_80_only += 0.8 * quota <= used < quota
            under_80 += used < 0.8 * quota
    assert 5 <= crossed_100 <= 40  # of 120 account-metric quotas
    assert crossed_80_only >= 5
    assert under_80 >= 60


def test_records_cover_every_observed_cell(book: DemoBook) -> None:
    recs = list(book.records())
    observed = sum(int((~np.isnan(book.values[m])).sum()) for m in book.metrics)
    assert len(recs) == observed
    assert any(r.value == 0.0 for r in recs)
    first = recs[0]
    row = book.account_ids.index(first.account)
    col = int(np.flatnonzero(~np.isnan(book.values["api_calls"][row]))[0])
    assert first.metric == "api_calls" and first.ts == book.start + col * DAY
    assert first.value == book.values["api_calls"][row, col]


def test_sub_daily_buckets() -> None:
    b = generate_book(20, 21, step=3600, metrics=("api_calls",), anomaly_rate=0)
    v = b.values["api_calls"]
    assert v.shape == (20, 21 * 24)
    daily = v.reshape(20, 21, 24)
    outage_days = np.flatnonzero(np.isnan(daily).all(axis=(0, 2)))
    assert outage_days.size == 1  # a whole day is missing for everyone
    hourly = np.nanmean(daily, axis=1)
    utc = [i for i, a in enumerate(b.accounts) if a.timezone == "UTC" and np.nanmedian(v[i]) > 5]
    assert all(10 <= int(np.argmax(hourly[i])) <= 18 for i in utc)  # business hours, UTC


def test_scales_to_thousands_of_accounts() -> None:  # its speed is bench/'s (no timed unit tests)
    b = generate_book(2_000, 90, metrics=("api_calls", "events", "exports", "seats"))
    assert all(v.shape == (2_000, 90) for v in b.values.values())
    assert len({lb.account for lb in b.labels}) >= 300
    assert len(set(b.account_ids)) == 2_000


def test_book_round_trips_through_csv_files(tmp_path: Path) -> None:
    b = generate_book(12, 40, seed=3)
    usage, accounts = tmp_path / "usage.csv", tmp_path / "accounts.csv"
    assert write_usage_csv(usage, b.records()) == sum(int((~np.isnan(v)).sum()) for v in b.values.values())
    write_accounts_csv(accounts, b.accounts)
    assert read_usage_csv(usage).records == list(b.records())
    assert read_accounts_csv(accounts).records == b.accounts
