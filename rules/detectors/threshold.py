"""Threshold detector: the current value above or below a limit (a fixed number, or a share of quota).

Evaluated at at = block.end; NaN means "not observed", never zero.

Current value v
    Mean of the last `smooth` buckets; if any of them is missing (or the block
    is shorter) the row is undecided.

Limit L
    `above` (or `below`) itself, or with of = "quota" that fraction of the
    account's quota for the rule's metric (account.quotas[metric]); a missing,
    NaN or <= 0 quota leaves the row undecided.

Condition
    above: v > L;  below: v < L  (strictly: `below = 1` is "no usage at all").
    Finding: value v, baseline None, threshold L, discriminator "", once False.
    details: limit, direction ("above" / "below"), recovery (the level that
    ends it), smooth, and with of = "quota" also quota.

Open episodes (given by the caller)
    Judged with hysteresis. Pending: holds while the firing condition holds.
    Firing: holds until the value is back at or inside the recovery level R
    (above: v <= R; below: v >= R). R = `recovery` (a number, or a fraction of
    quota with of = "quota"); default 0.9 x L above, 1.1 x L below, so a value
    hovering at the limit does not flap. Holding -> a finding (threshold = the
    level that ends it); not holding -> a Recovery stating the value against R.
    Decided when v and L are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.config import values as v
from rules.detectors import format as fmt
from rules.detectors.baseline import smoothed
from rules.detectors.finding import make_finding
from rules.detectors.opened import open_rows
from rules.detectors.quota import quota_array
from rules.detectors.scan import Scanned, at_least, trailing_mean
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.model import AccountFacts, DetectorResult, Finding, MetricBlock, OpenEpisode, Recovery, Rule

DEFAULT_BAND = 0.1  # default recovery: 10% back inside the limit (0.9 x L above, 1.1 x L below)


@dataclass(frozen=True)
class ThresholdParams:
    """Fires when the value is above `above` (or below `below`); of = "quota": fractions of quota."""

    above: float | None = None
    below: float | None = None
    of: str | None = None  # "quota": above / below / recovery are fractions of the account's quota
    recovery: float | None = None  # an open alert resolves once the value is back at or inside this
    smooth: int = 1  # value = mean of the last `smooth` buckets

    @property
    def direction(self) -> str:
        return "below" if self.below is not None else "above"

    @property
    def limit(self) -> float:
        """The limit: a number, or a fraction of quota (of = "quota")."""
        return self.below if self.below is not None else (self.above or 0.0)

    @property
    def recovery_limit(self) -> float:
        """The level that ends an open alert, in the same terms as `limit`."""
        if self.recovery is not None:
            return self.recovery
        return self.limit * (1 + DEFAULT_BAND if self.direction == "below" else 1 - DEFAULT_BAND)


def _params(rule: Rule) -> ThresholdParams:
    if not isinstance(rule.params, ThresholdParams):
        raise TypeError(f"{fmt.rule_location(rule)}: threshold rule has {type(rule.params).__name__} params")
    return rule.params


def required_history(rule: Rule) -> int:
    return max(1, _params(rule).smooth) * rule.bucket


def _scale(params: ThresholdParams, block: MetricBlock, accounts: Sequence[AccountFacts]) -> np.ndarray:
    """Per row: what `limit` and `recovery` are multiplied by (1, or the quota; NaN = no quota)."""
    if params.of != "quota":
        return np.ones(len(block.account_ids))
    q = quota_array(accounts, block.metric)
    with np.errstate(invalid="ignore"):
        return np.where(q > 0, q, np.nan)


def detect_threshold(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts],
                     open_episodes: Sequence[OpenEpisode] = ()) -> DetectorResult:
    params = _params(rule)
    rows, n = block.values.shape
    smooth = max(1, params.smooth)
    if rows == 0 or n == 0:
        return DetectorResult([], np.zeros(rows, dtype=bool))
    value = smoothed(block.values, n, smooth)
    scale = _scale(params, block, accounts)
    limit = params.limit * scale
    recovery = params.recovery_limit * scale
    decided = ~np.isnan(value) & ~np.isnan(scale)
    above = params.direction == "above"
    with np.errstate(invalid="ignore"):
        fire = decided & ((value > limit) if above else (value < limit))
    opened = open_rows(block, open_episodes)
    if opened:
        fire[list(opened)] = False  # judged with hysteresis below
    result = DetectorResult([], decided)
    for i in np.flatnonzero(fire):
        result.found.append(_finding(rule, params, block, int(i), float(value[i]), float(limit[i]),
                                        float(recovery[i]), float(scale[i]), smooth))
    for i, episode in opened.items():
        if not decided[i]:
            continue
        x, lim, rec = float(value[i]), float(limit[i]), float(recovery[i])
        if episode.firing:
            holds = x > rec if above else x < rec
        else:
            holds = x > lim if above else x < lim
        if holds:
            result.found.append(_finding(rule, params, block, i, x, lim, rec, float(scale[i]), smooth,
                                            firing=episode.firing))
        else:
            result.recoveries[(block.account_ids[i], "")] = _recovery(params, block, x, lim, rec, smooth)
    return result


def scan_threshold(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts]) -> Scanned:
    """Rows that may cross the limit at each bucket close (rules.detectors.scan): the detector's test
    on the trailing mean, up to rounding."""
    params = _params(rule)
    value = trailing_mean(block.values, max(1, params.smooth))
    scale = _scale(params, block, accounts)[:, None]
    limit = params.limit * scale
    decided = ~np.isnan(value) & ~np.isnan(scale)  # the detector's, exactly
    return Scanned(at_least(value, limit) if params.direction == "above" else at_least(limit, value), decided)


def _when(block: MetricBlock, smooth: int) -> str:
    return fmt.when(block.end, block.step, smooth)


def _level(params: ThresholdParams, level: float, fraction: float, shown: str | None = None) -> str:
    """A level as the rule states it: "1,000", or "900 (90% of the quota)" (`shown`: its number as written
    beside the value, fmt.apart)."""
    text = fmt.number(level) if shown is None else shown
    if params.of == "quota":
        return f"{text} ({fmt.percent(fraction)} of the quota)"
    return text


def _finding(rule: Rule, params: ThresholdParams, block: MetricBlock, i: int, value: float, limit: float,
             recovery: float, scale: float, smooth: int, firing: bool = False) -> Finding:
    direction = params.direction

    def message() -> str:
        past = value > limit if direction == "above" else value < limit
        if firing and not past:  # held open by the recovery band: inside the limit, not yet back past recovery
            shown, rec = fmt.apart(value, recovery)
            text = (f"{block.metric} is {shown} {_when(block, smooth)}: back within the limit of"
                    f" {_level(params, limit, params.limit)} but still {direction}"
                    f" {_level(params, recovery, params.recovery_limit, rec)}")
        else:
            shown, lim = fmt.apart(value, limit)
            text = (f"{block.metric} is {shown} {_when(block, smooth)}: {direction} the limit of"
                    f" {_level(params, limit, params.limit, lim)}")
        if firing:
            back = "at or below" if direction == "above" else "at or above"
            text += f"; it resolves {back} {_level(params, recovery, params.recovery_limit)}"
        return text + "."

    details: dict[str, object] = {"limit": limit, "direction": direction, "recovery": recovery, "smooth": smooth}
    if params.of == "quota":
        details["quota"] = scale
    return make_finding(rule, block, i, value=value, baseline=None, threshold=recovery if firing else limit,
                        window_start=block.end - smooth * block.step, message=message, details=details)


def _recovery(params: ThresholdParams, block: MetricBlock, value: float, limit: float, recovery: float,
              smooth: int) -> Recovery:
    back = "at or below" if params.direction == "above" else "at or above"
    message = (f"{block.metric} back to {fmt.number(value)} {_when(block, smooth)}: {back}"
               f" {_level(params, recovery, params.recovery_limit)}; the limit is {fmt.number(limit)}.")
    return Recovery(block.end, value, None, message, {"limit": limit, "recovery": recovery})


# ------------------------------------------------------------------------------- the kind


def _check(t: Threshold) -> None:
    """Exactly one of above / below; a limit usage can cross; a recovery level on the right side."""
    if not t.given("above") and not t.given("below"):
        t.error(None, "needs above or below, e.g. above = 1000 (or above = 0.9 with of = \"quota\")")
        return
    if t.given("above") and t.given("below"):
        t.error("below", "give either above or below, not both")
        return
    below = t.got.get("below")
    if below is not None and below <= 0:
        t.error("below", f"must be > 0: usage is never below 0, so the rule could never fire (got {t.shown('below')})")
    recovery = t.got.get("recovery")
    params = t.params
    if recovery is None or ("above" not in t.got and "below" not in t.got):
        return
    if params.direction == "above" and not 0 <= recovery <= params.limit:
        t.error("recovery", f"must be between 0 and above ({params.limit:g}): an open alert resolves once the value"
                            f" is back at or below recovery (got {t.shown('recovery')})")
    if params.direction == "below" and recovery < params.limit:
        t.error("recovery", f"must be at least below ({params.limit:g}): an open alert resolves once the value is"
                            f" back at or above recovery (got {t.shown('recovery')})")


KIND = Kind(
    name="threshold",
    title="Usage threshold",
    summary="the current value is above or below a fixed number, or a share of the account's quota",
    params=ThresholdParams,
    fields=(
        Field("above", v.number(0), "number ≥ 0", "none", "Fires when the value is above this (strictly). Give"
              " `above` or `below`."),
        Field("below", v.number(), "number > 0", "none", "Fires when the value is below this (strictly): `below = 1`"
              " = no usage at all."),
        Field("of", v.choice(("quota",)), '`"quota"`', "none", "`above`, `below` and `recovery` are fractions of the"
              " account's quota for the metric (`above = 0.9` = above 90% of it). Accounts without a quota for the"
              " metric are skipped."),
        Field("recovery", v.number(0), "number; ≤ `above`, or ≥ `below`", "0.9 × `above`, or 1.1 × `below`",
              "An open alert resolves once the value is back at or below (above) this (see [how alerts"
              " end](#how-alerts-end-recovery)); the band keeps a value hovering at the limit from flapping."),
        Field("smooth", v.integer(1), "integer ≥ 1", "`1`", "The value is the mean of the last `smooth` buckets (all"
              " must be observed)."),
    ),
    detect=detect_threshold,
    scan=scan_threshold,
    required_history=required_history,
    endings=(Ending("threshold", "the value is beyond `recovery` (above: > `recovery`; below: < `recovery`)",
                    "the value is back at or inside `recovery`"),),
    check=_check,
    resolve_buckets=2,  # the value must stay back for a second bucket, as for drops and quotas
    cohort="optional",
    needs_quota=lambda params: params.of == "quota",
)
