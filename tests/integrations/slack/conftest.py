"""Fixtures for the Slack tests: a running fake Slack, a controllable clock, a config pointing at
the fake, and a scenario that drives the real evaluation cycle (rules -> lifecycle -> outbox)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.slack_server import FakeSlack
from tests.integrations.slack.scenario import TestClock, slack_config


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
def fake(clock: TestClock) -> Iterator[FakeSlack]:
    with FakeSlack.running(clock=clock) as f:
        f.add_user("U0ALICE01", "alice@example.com", "alice")
        f.add_user("U0BOBBY01", "bob@example.com", "bob")
        f.add_channel("usage-alerts", "C0ALERTS1")
        f.add_channel("usage-critical", "C0CRIT001")
        yield f


@pytest.fixture
def config(fake: FakeSlack):  # noqa: ANN201
    return slack_config(fake)
