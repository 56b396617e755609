"""Hypothesis settings for the input fuzz suite: a fixed number of cases per surface, no example
database on disk (CI starts clean), no per-example deadline (machines are shared and noisy).
`--hypothesis-show-statistics` prints the cases each test ran."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("usagebot", deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                 HealthCheck.data_too_large])
settings.load_profile("usagebot")
