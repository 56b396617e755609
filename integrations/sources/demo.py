"""A deterministic synthetic book of B2B accounts with ground-truth anomaly labels.

Used by ``usagebot demo``, by the precision/recall measurement of the shipped
rules and by benchmarks. Everything is drawn from one seeded numpy Generator,
so the same arguments always give the same book.

The model, per account (daily, then split into sub-daily buckets if asked):

* a plan (starter / growth / enterprise) setting the weekday volume of the
  first metric (tens to tens of thousands per day), plus a few *tiny* accounts
  with single-digit daily usage;
* weekly seasonality (weekends at 30-60% of weekdays, per account), a trend
  (flat, growing 1-4%/week, or slowly declining) and lognormal noise, then
  Poisson counts;
* further metrics follow the first: ``events``-like metrics are the first
  metric times a per-account factor (with their own noise); ``exports``-like
  metrics (names containing export/report/download) are small counts with
  many zero days;
* monthly quotas on ``api_calls`` and ``events`` (or on the first metric) set
  against each account's recent volume so a realistic share crosses 80% and
  100% of quota, some only by projection; billing day mostly 1, some 15; a
  few accounts in non-UTC timezones;
* one global data-outage day (NaN for every account) and a couple of
  late-onboarded accounts (NaN before their first day);
* optionally (``holidays``) two-day holidays on which every account runs at 15-25% of
  its normal level (a calendar event shared by the whole book; labels of kind
  "holiday", account and metric "*"), and further pipeline gaps (``gaps``:
  days with no data at all, which may fall inside an injected anomaly).

Injected anomalies (ground truth, see :class:`Label`), never in the first 35
days and never over the outage day, at most one per account, never on tiny or
late-onboarded accounts: spikes (one metric, 1-2 days at 3-8x), drops (all
metrics to 15-40% of normal for >= 5 days), inactivity (all metrics zero for
>= 10 days) and expansion (all metrics growing >= 15%/week for >= 4 weeks,
then staying at the new level).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from integrations.sources.records import UsageRecord, is_metric_name
from rules.model import DAY, AccountFacts, MetricBlock

DEFAULT_END = 1_795_392_000  # 2026-11-23T00:00:00Z: fixed so the default book is reproducible
BASELINE_DAYS = 35  # no anomaly starts before this many days into the book
LABEL_KINDS: tuple[str, ...] = ("spike", "drop", "inactivity", "expansion")

PLANS: tuple[str, ...] = ("starter", "growth", "enterprise")
_PLAN_SHARE = (0.45, 0.35, 0.20)
# Weekday volume of the first metric per day, drawn log-uniformly in these ranges.
_PLAN_LEVEL = {"starter": (20.0, 400.0), "growth": (300.0, 4_000.0), "enterprise": (3_000.0, 40_000.0)}
_TINY_LEVEL = (1.5, 8.0)
_QUOTA_FLOOR = 1_000.0
_SPARSE_HINTS = ("export", "report", "download")
_QUOTA_METRICS = ("api_calls", "events")

# Anomalous accounts per account in the book (at anomaly_rate 1.0).
_ANOMALY_SHARE = {"spike": 0.08, "drop": 0.05, "inactivity": 0.04, "expansion": 0.04}

_PREFIXES = (
    "Northwind", "Bluefin", "Cobalt", "Granite", "Summit", "Lumen", "Harbor", "Vertex", "Pioneer", "Juniper",
    "Redwood", "Silverline", "Keystone", "Meridian", "Atlas", "Beacon", "Cascade", "Evergreen", "Falcon",
    "Horizon", "Ironclad", "Kestrel", "Lakeshore", "Maple", "Nimbus", "Orchard", "Polaris", "Quarry", "Riverbend",
    "Sequoia", "Tidewater", "Upland", "Vanguard", "Willow", "Zephyr", "Aurora", "Bramble", "Copperleaf", "Driftwood",
    "Emberly", "Foxglove", "Greystone", "Hollis", "Indigo", "Larkspur", "Mosaic", "Oakridge", "Pinecrest",
)  # fmt: skip
_MIDDLES = (
    "Data", "Cloud", "Digital", "Bio", "Green", "Smart", "Blue", "Global", "Urban", "Quantum", "Rapid", "Open",
    "Prime", "True", "Bright", "Clear", "Deep", "First", "Next", "North", "Solid", "Swift", "Wide", "Core",
    "Metro", "Peak", "Pure", "Signal", "Vector", "Harvest",
)  # fmt: skip
_SUFFIXES = (
    "Analytics", "Logistics", "Health", "Labs", "Systems", "Robotics", "Foods", "Capital", "Software", "Energy",
    "Media", "Freight", "Insurance", "Retail", "Networks", "Security", "Learning", "Studios", "Biotech", "Payments",
    "Mobility", "Dynamics", "Partners", "Works", "Solutions", "Commerce", "Travel", "Pharma", "Aerospace",
    "Outfitters", "Legal", "Realty", "Telecom", "Manufacturing", "Consulting", "Gaming", "Marine", "Apparel",
    "Hospitality", "Ventures",
)  # fmt: skip
_OWNERS = ("maya.patel", "jordan.reyes", "sam.okafor", "lena.fischer", "chris.nakamura", "priya.raman")
_OWNER_DOMAIN = "example.com"
_TIMEZONES = (
    "America/New_York", "America/Los_Angeles", "Europe/Berlin", "Europe/London", "Asia/Tokyo",
    "Australia/Sydney",
)  # fmt: skip
_CRM_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


_CSMS = ("ana.silva", "tom.becker", "yuki.tanaka")
# ARR per plan (whole thousands, log-uniform in these ranges) for the demo's "why it matters".
_PLAN_ARR = {"starter": (3_000.0, 15_000.0), "growth": (20_000.0, 90_000.0), "enterprise": (100_000.0, 600_000.0)}


def _revenue(n: int, plan_idx: np.ndarray, unowned: np.ndarray, end: int, seed: int
             ) -> tuple[list[float], list[int], list[str]]:
    """ARR, renewal date (5..365 days after the book's end, a UTC midnight) and CSM per account. A
    generator of its own, so the rest of the book is what it was before these facts existed."""
    rng = np.random.default_rng([seed, 17])
    lo = np.log([_PLAN_ARR[PLANS[int(k)]][0] for k in plan_idx])
    hi = np.log([_PLAN_ARR[PLANS[int(k)]][1] for k in plan_idx])
    arr = np.round(np.exp(rng.uniform(lo, hi)) / 1000.0) * 1000.0
    days = rng.integers(5, 366, size=n)
    csm = rng.integers(0, len(_CSMS), size=n)
    midnight = end - end % DAY
    return ([float(a) for a in arr], [int(midnight + d * DAY) for d in days],
            ["" if unowned[i] else f"{_CSMS[int(csm[i])]}@{_OWNER_DOMAIN}" for i in range(n)])


@dataclass(frozen=True)
class Label:
    """Ground truth: an injected anomaly of `kind` in `account`'s `metric`.

    The anomaly is present exactly in [start, end) (epoch seconds, whole days).
    """

    kind: str  # spike | drop | inactivity | expansion; holiday | gap for the whole book
    account: str
    metric: str
    start: int
    end: int
    note: str


@dataclass
class DemoBook:
    accounts: list[AccountFacts]
    metrics: tuple[str, ...]
    start: int
    end: int
    step: int
    account_ids: list[str]
    values: dict[str, np.ndarray]  # metric -> float64 [accounts x buckets]; NaN = not delivered
    labels: list[Label]

    @property
    def n_buckets(self) -> int:
        return (self.end - self.start) // self.step

    def block(self, metric: str) -> MetricBlock:
        """The metric's values as a MetricBlock (shares the array, no copy)."""
        return MetricBlock(metric, self.start, self.step, self.account_ids, self.values[metric])

    def records(self) -> Iterator[UsageRecord]:
        """One record per observed cell (zeros included), skipping NaN; metric, account, time order."""
        start, step = self.start, self.step
        for metric in self.metrics:
            values = self.values[metric]
            observed = ~np.isnan(values)
            for i, account in enumerate(self.account_ids):
                cols = np.flatnonzero(observed[i])
                stamps = (start + cols * step).tolist()
                for ts, v in zip(stamps, values[i, cols].tolist(), strict=True):
                    yield UsageRecord(account, metric, ts, v)


# -------------------------------------------------------------------- generation


def _validate(
    n_accounts: int, days: int, end: int, step: int, metrics: Sequence[str], anomaly_rate: float
) -> None:
    if n_accounts < 1:
        raise ValueError(f"n_accounts must be >= 1, got {n_accounts}")
    if days < 7:
        raise ValueError(f"days must be >= 7, got {days}")
    if not 60 <= step <= DAY or DAY % step:
        raise ValueError(f"step must be 60..86400 seconds and divide a day, got {step}")
    if end % step:
        raise ValueError(f"end ({end}) must be a multiple of step ({step}) so buckets align")
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct, got {tuple(metrics)}")
    for m in metrics:
        if not is_metric_name(m):
            raise ValueError(f"invalid metric name {m!r}: letters, digits and _ . : - only")
    if not anomaly_rate >= 0:
        raise ValueError(f"anomaly_rate must be >= 0, got {anomaly_rate}")


def _is_sparse(metric: str) -> bool:
    low = metric.lower()
    return any(h in low for h in _SPARSE_HINTS)


def _names(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct company names; two-word names first, then three-word ones."""
    p, m, s = len(_PREFIXES), len(_MIDDLES), len(_SUFFIXES)
    two = p * s
    picks = rng.permutation(two)[: min(n, two)].tolist()
    names = [f"{_PREFIXES[k // s]} {_SUFFIXES[k % s]}" for k in picks]
    if n > two:
        three = p * m * s
        more = rng.permutation(three)[: min(n - two, three)].tolist()
        names += [f"{_PREFIXES[k // (m * s)]} {_MIDDLES[k // s % m]} {_SUFFIXES[k % s]}" for k in more]
    base = len(names)
    for k in range(n - base):  # beyond every combination: number them
        names.append(f"{names[k % base]} {k // base + 2}")
    return names


def _slug(name: str) -> str:
    return "-".join(name.lower().split())


def _nice(x: np.ndarray) -> np.ndarray:
    """Round up to a "price list" number: 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8 x 10^k."""
    steps = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 8.0, 10.0])
    x = np.maximum(x, 1.0)
    mag = 10.0 ** np.floor(np.log10(x))
    idx = np.searchsorted(steps, x / mag - 1e-9)
    return steps[np.minimum(idx, len(steps) - 1)] * mag


def _lognormal_noise(rng: np.random.Generator, sigma: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """exp(N(-s^2/2, s)) per cell (mean 1), s per row."""
    z = rng.standard_normal(shape)
    z *= sigma[:, None]
    z -= (0.5 * sigma**2)[:, None]
    return np.exp(z, out=z)


@dataclass
class _Window:
    start: int  # day index
    length: int  # days
    to_end: bool


def _place(
    rng: np.random.Generator, days: int, outage: int, lengths: tuple[int, int], to_end: bool
) -> _Window | None:
    """A window of whole days in [BASELINE_DAYS, days) that does not contain the outage day."""
    lo_len, hi_len = lengths
    if to_end:
        first = max(BASELINE_DAYS, outage + 1)
        last = days - lo_len
        if first <= last:
            s = int(rng.integers(first, last + 1))
            return _Window(s, days - s, True)
    for length in (int(rng.integers(lo_len, hi_len + 1)), lo_len):
        starts = np.arange(BASELINE_DAYS, days - length + 1)
        starts = starts[(starts > outage) | (starts + length <= outage)]
        if starts.size:
            return _Window(int(rng.choice(starts)), length, False)
    return None


def _book_days(rng: np.random.Generator, days: int, outage: int, avoid: set[int], count: int) -> list[int]:
    """`count` distinct days after the first BASELINE_DAYS, not the outage day nor in `avoid`."""
    if count <= 0:
        return []
    candidates = [d for d in range(BASELINE_DAYS, days) if d != outage and d not in avoid]
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return sorted(int(candidates[int(i)]) for i in picked)


def generate_book(
    n_accounts: int = 60,
    days: int = 120,
    end: int | None = None,
    seed: int = 7,
    step: int = 86_400,
    metrics: Sequence[str] = ("api_calls", "events", "exports"),
    anomaly_rate: float = 1.0,
    holidays: int = 0,
    gaps: int = 0,
) -> DemoBook:
    """Generate the book; see the module docstring for the model.

    The book covers [end - days*86400, end) in buckets of `step` seconds;
    `end` defaults to 2026-11-23T00:00:00Z (fixed, for reproducibility).
    `anomaly_rate` scales the number of injected anomalies (0 = none);
    `holidays` / `gaps` add book-wide quiet days / missing days after the
    first 35 days (0 = none: the book is exactly as without them).
    """
    end = DEFAULT_END if end is None else int(end)
    metrics = tuple(metrics)
    _validate(n_accounts, days, end, step, metrics, anomaly_rate)
    if holidays < 0 or gaps < 0:
        raise ValueError(f"holidays and gaps must be >= 0, got {holidays} and {gaps}")
    rng = np.random.default_rng(seed)
    n = n_accounts
    start = end - days * DAY
    per_day = DAY // step

    # ------------------------------------------------------------ roles
    order = rng.permutation(n)
    n_tiny = max(round(0.05 * n), min(2, n // 4))
    n_late = max(round(0.02 * n), min(2, n // 8))
    tiny = np.zeros(n, dtype=bool)
    tiny[order[:n_tiny]] = True
    late_rows = order[n_tiny : n_tiny + n_late]
    eligible = order[n_tiny + n_late :].tolist()  # may carry an injected anomaly
    late_first = {int(row): int(rng.integers(int(days * 0.3), int(days * 0.6) + 1)) for row in late_rows}

    # ------------------------------------------------------------ account facts
    plan_idx = rng.choice(len(PLANS), size=n, p=_PLAN_SHARE)
    plan_idx[tiny] = 0
    names = _names(rng, n)
    ids = [_slug(name) for name in names]
    owner_idx = rng.integers(0, len(_OWNERS), size=n)
    unowned = rng.random(n) < 0.04
    billing_day = np.where(rng.random(n) < 0.2, 15, 1)
    tz_idx = np.where(rng.random(n) < 0.12, rng.integers(0, len(_TIMEZONES), size=n), -1)
    crm = _CRM_ALPHABET[rng.integers(0, len(_CRM_ALPHABET), size=(n, 15))]
    crm_ids = ["001" + "".join(row) for row in crm.tolist()]

    # ------------------------------------------------------------ daily latent activity
    lo = np.array([_PLAN_LEVEL[PLANS[k]][0] for k in range(len(PLANS))])[plan_idx]
    hi = np.array([_PLAN_LEVEL[PLANS[k]][1] for k in range(len(PLANS))])[plan_idx]
    lo[tiny], hi[tiny] = _TINY_LEVEL
    level = np.exp(rng.uniform(np.log(lo), np.log(hi)))
    weekend_factor = rng.uniform(0.3, 0.6, size=n)
    trend_kind = rng.choice(3, size=n, p=(0.5, 0.3, 0.2))  # flat, growing, declining
    weekly_growth = np.select(
        [trend_kind == 0, trend_kind == 1],
        [rng.normal(0.0, 0.003, size=n), rng.uniform(0.01, 0.04, size=n)],
        rng.uniform(-0.02, -0.005, size=n),
    )
    sigma = rng.uniform(0.06, 0.20, size=n)

    day_index = np.arange(days)
    epoch_day = (start + day_index * DAY) // DAY
    weekend = (epoch_day + 3) % 7 >= 5  # 1970-01-01 was a Thursday; Monday = 0
    season = np.where(weekend[None, :], weekend_factor[:, None], 1.0)
    trend = np.exp(np.log1p(weekly_growth)[:, None] * (day_index[None, :] / 7.0))
    expected = level[:, None] * season * trend  # noise-free daily volume of the first metric
    latent = expected * _lognormal_noise(rng, sigma, (n, days))

    # ------------------------------------------------------------ per-metric daily means
    lam: dict[str, np.ndarray] = {}
    factors: dict[str, np.ndarray] = {}
    for k, metric in enumerate(metrics):
        if _is_sparse(metric):
            c = rng.uniform(0.004, 0.03, size=n)
            factors[metric] = np.zeros(n)
            lam[metric] = c[:, None] * np.sqrt(latent)
        elif k == 0:
            factors[metric] = np.ones(n)
            lam[metric] = latent.copy()
        else:
            centre = 3.0 if metric.lower().startswith("event") else 1.0
            f = np.clip(rng.lognormal(np.log(centre), 0.45, size=n), 0.2 * centre, 5.0 * centre)
            factors[metric] = f
            lam[metric] = latent * f[:, None] * _lognormal_noise(rng, np.full(n, 0.1), (n, days))

    # ------------------------------------------------------------ quotas
    quota_metrics = [m for m in _QUOTA_METRICS if m in metrics] or (
        [metrics[0]] if not _is_sparse(metrics[0]) else []
    )
    quotas: dict[str, np.ndarray] = {}
    recent = expected[:, -28:].mean(axis=1)
    for metric in quota_metrics:
        monthly = recent * factors[metric] * 30.4
        band = rng.choice(4, size=n, p=(0.62, 0.20, 0.11, 0.07))
        lows = np.array([0.25, 0.75, 1.0, 1.35])[band]
        highs = np.array([0.75, 1.0, 1.35, 1.8])[band]
        utilisation = rng.uniform(lows, highs)
        quotas[metric] = np.maximum(_nice(monthly / utilisation), _QUOTA_FLOOR)

    # ------------------------------------------------------------ anomalies (daily multipliers)
    outage = int(rng.integers(days // 2, max(days // 2 + 1, int(days * 0.65)) + 1))
    outage = min(outage, days - 2)
    activity = np.ones((n, days))  # applies to every metric of the account
    bursts: list[tuple[str, int, int, int, float]] = []  # (metric, row, first day, stop day, factor)
    inactive: list[tuple[int, int, int]] = []  # (row, first day, last day exclusive)
    labels: list[Label] = []
    dense = [m for m in metrics if not _is_sparse(m)] or [metrics[0]]

    def day_ts(d: int) -> int:
        return start + d * DAY

    pool = iter(eligible)
    if anomaly_rate > 0:
        for kind in LABEL_KINDS:
            count = max(1, round(_ANOMALY_SHARE[kind] * n * anomaly_rate))
            for _ in range(count):
                row = next(pool, None)
                if row is None:
                    break
                acc = ids[row]
                if kind == "spike":
                    w = _place(rng, days, outage, (1, 2), to_end=False)
                    if w is None:
                        continue
                    factor = float(rng.uniform(3.0, 8.0))
                    metric = dense[int(rng.integers(0, len(dense)))]
                    bursts.append((metric, row, w.start, w.start + w.length, factor))
                    note = f"spike x{factor:.1f} for {w.length} day{'s' if w.length > 1 else ''}"
                    labels.append(Label(kind, acc, metric, day_ts(w.start), day_ts(w.start + w.length), note))
                    continue
                if kind == "drop":
                    w = _place(rng, days, outage, (5, 21), to_end=bool(rng.random() < 0.5))
                    if w is None:
                        continue
                    factor = float(rng.uniform(0.15, 0.40))
                    activity[row, w.start : w.start + w.length] *= factor
                    note = f"drop to {factor:.0%} of normal for {w.length} days"
                elif kind == "inactivity":
                    w = _place(rng, days, outage, (10, 25), to_end=bool(rng.random() < 0.6))
                    if w is None:
                        continue
                    inactive.append((row, w.start, w.start + w.length))
                    note = f"inactive (no usage at all) for {w.length} days"
                else:
                    w = _place(rng, days, outage, (28, 42), to_end=False)
                    if w is None:
                        continue
                    growth = float(rng.uniform(0.15, 0.30))
                    t = np.arange(1, w.length + 1) / 7.0
                    activity[row, w.start : w.start + w.length] *= (1.0 + growth) ** t
                    activity[row, w.start + w.length :] *= (1.0 + growth) ** (w.length / 7.0)
                    note = f"growth +{growth:.0%}/week for {w.length // 7} weeks, then steady"
                if w.to_end:
                    note += " (until the end of the book)"
                for metric in metrics:
                    labels.append(Label(kind, acc, metric, day_ts(w.start), day_ts(w.start + w.length), note))

    # ------------------------------------------------------------ book-wide days
    spike_days = {d for _, _, first, stop, _ in bursts for d in range(first, stop)}
    avoid = spike_days | {d - 1 for d in spike_days}  # a holiday is two days: its second one is no spike day either
    book_days = _book_days(rng, days - 1, outage, avoid | {outage - 1}, holidays + gaps)
    for d in book_days[:holidays]:  # two days, like Christmas Eve and Day
        activity[:, d : d + 2] *= rng.uniform(0.15, 0.25, size=(n, 1))  # every account at 15-25% of normal
        labels.append(Label("holiday", "*", "*", day_ts(d), day_ts(d + 2), "every account at 15-25% of normal"))
    gap_days = book_days[holidays:]
    for d in gap_days:
        labels.append(Label("gap", "*", "*", day_ts(d), day_ts(d + 1), "no data delivered for anyone"))

    # ------------------------------------------------------------ buckets and counts
    if per_day > 1:
        offsets = np.zeros(n)
        at = datetime.fromtimestamp(end, UTC)
        for k, zone in enumerate(_TIMEZONES):
            utc_offset = at.astimezone(ZoneInfo(zone)).utcoffset()
            assert utc_offset is not None
            offsets[tz_idx == k] = utc_offset.total_seconds() / 3600.0
        hours = ((start % DAY) + (np.arange(per_day) + 0.5) * step) / 3600.0
        local = (hours[None, :] + offsets[:, None]) % 24.0
        profile = 0.15 + np.exp(-(((local - 14.0) / 4.0) ** 2))  # business hours, peak mid-afternoon
        profile /= profile.sum(axis=1, keepdims=True)
    values: dict[str, np.ndarray] = {}
    for metric in metrics:
        daily = lam.pop(metric)
        daily *= activity
        for burst_metric, row, first, stop, factor in bursts:
            if burst_metric != metric:
                continue
            if _is_sparse(metric):
                daily[row, first:stop] *= factor
            else:  # extra traffic on top of the usual: factor x the normal level for that day
                daily[row, first:stop] += (factor - 1.0) * expected[row, first:stop] * factors[metric][row]
        if per_day > 1:
            mean = (daily[:, :, None] * profile[:, None, :]).reshape(n, days * per_day)
        else:
            mean = daily
        counts = rng.poisson(mean).astype(np.float64)
        for row, first, stop in inactive:
            counts[row, first * per_day : stop * per_day] = 0.0
        counts[:, outage * per_day : (outage + 1) * per_day] = np.nan
        for d in gap_days:
            counts[:, d * per_day : (d + 1) * per_day] = np.nan
        for row, first in late_first.items():
            counts[row, : first * per_day] = np.nan
        values[metric] = counts

    arr, renewal_at, csm = _revenue(n, plan_idx, unowned, end, seed)
    accounts = [
        AccountFacts(
            id=ids[i],
            name=names[i],
            plan=PLANS[int(plan_idx[i])],
            owner_email="" if unowned[i] else f"{_OWNERS[int(owner_idx[i])]}@{_OWNER_DOMAIN}",
            crm_id=crm_ids[i],
            quotas={m: float(q[i]) for m, q in quotas.items()},
            billing_day=int(billing_day[i]),
            timezone="UTC" if tz_idx[i] < 0 else _TIMEZONES[int(tz_idx[i])],
            csm_email=csm[i],
            arr=arr[i],
            renewal_at=renewal_at[i],
        )
        for i in range(n)
    ]
    labels.sort(key=lambda lb: (lb.start, lb.account, lb.metric))
    return DemoBook(accounts, metrics, start, end, step, ids, values, labels)
