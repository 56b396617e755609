"""[health] -> HealthModel: every key optional, problems with file:line and field."""

from __future__ import annotations

import pytest

from bot.config.health import parse_health_model
from rules.config import ConfigError, document_from_text
from rules.health import DEFAULT_MODEL, HealthModel
from rules.kinds import KINDS


def parse(text: str) -> HealthModel:
    doc = document_from_text(text, "usagebot.toml")
    model = parse_health_model(doc.section("health"))
    doc.raise_if_problems()
    return model


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return [str(p) for p in e.value.problems]


def test_no_section_is_the_default_model():
    assert parse("") == DEFAULT_MODEL


def test_every_setting():
    m = parse("""
[health]
primary_metric = "events"
window_days = 28
[health.weights]
trend = 40
active_days = 20
quota_use = 20
open_alerts = 20
[health.trend]
full_ratio = 1.2
zero_ratio = 0.6
growing = 1.2
declining = 0.8
[health.quota]
target = 0.7
no_quota_share = 0.4
[health.alerts]
risk_kinds = ["drop"]
penalty = { critical = 15, warning = 5, info = 0 }
[health.bands]
healthy = 75
watch = 45
[health.expansion]
kinds = ["expansion", "spike"]
quota_at = false
""")
    assert m.primary_metric == "events" and m.window_days == 28
    assert dict(m.weights) == {"trend": 40, "active_days": 20, "quota_use": 20, "open_alerts": 20}
    assert (m.trend_full_ratio, m.trend_zero_ratio, m.growing_ratio, m.declining_ratio) == (1.2, 0.6, 1.2, 0.8)
    assert (m.quota_target, m.no_quota_share) == (0.7, 0.4)
    assert m.risk_kinds == ("drop",) and dict(m.alert_penalty) == {"critical": 15, "warning": 5, "info": 0}
    assert (m.healthy_at, m.watch_at) == (75, 45)
    assert m.expansion_kinds == ("expansion", "spike") and m.expansion_quota_at is None


def test_weights_must_add_up_to_100():
    assert problems("[health.weights]\ntrend = 50\n") == [
        "usagebot.toml:1: health.weights: weights must add up to 100 so the score is 0-100 (they add up to 115)"]


def test_problems_name_file_line_and_field():
    out = problems('[health]\nwindow_days = 0\n[health.trend]\nzero_ratio = 2.0\n[health.alerts]\n'
                   'risk_kinds = ["drops"]\n[health.bands]\nhealthy = 30\n[health.weigths]\n')
    assert out == [
        "usagebot.toml:9: health.weigths: unknown key; did you mean 'weights'?",
        "usagebot.toml:2: health.window_days: must be between 1 and 365 (got 0)",
        f"usagebot.toml:6: health.alerts.risk_kinds: unknown rule kind(s) drops; kinds are {', '.join(KINDS)}",
        "usagebot.toml:4: health.trend.zero_ratio: must be below trend_full_ratio (2 >= 1)",
        "usagebot.toml:7: health.bands.watch: must not be above healthy_at (40 > 30)",
    ]
