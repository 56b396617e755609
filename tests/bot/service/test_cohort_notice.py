"""The admin notice of a cohort event says what was counted: accounts meeting the condition, or
(the share test of movers, rules.engine._settle_moves) accounts moving one way together."""

from __future__ import annotations

from bot.service.alerts import cohort_notice
from rules.engine import CohortEvent

AT = 1_700_006_400  # a bucket close (2023-11-15 00:00 UTC)


def test_a_firing_share_event_says_the_accounts_met_the_condition() -> None:
    ev = CohortEvent("drop-api", AT, "all accounts", 40, 100, ("a1", "a2"))
    notice = cohort_notice(ev, None)
    assert "Rule drop-api: 40 of 100 accounts (40%, all accounts) met the condition at once" in notice.message
    assert "direction" not in notice.details and notice.details["accounts"] == 40


def test_a_movers_event_says_how_many_moved_and_how_many_fired() -> None:
    ev = CohortEvent("anomaly-api", AT, "plan pro", 24, 40, ("a1",), direction=-1, firing=10)
    notice = cohort_notice(ev, None)
    assert "24 of 40 accounts (60%, plan pro) moved down together by the rule's recovery score" in notice.message
    assert "(10 of them past its firing score)" in notice.message
    assert "met the condition" not in notice.message and "no account alert was sent for that bucket" not in notice.message
    assert "no alert was sent for the accounts that moved down in that bucket; the others were judged" in notice.message
    assert notice.details["direction"] == "down" and notice.details["firing"] == 10
    up = cohort_notice(CohortEvent("anomaly-api", AT, "all accounts", 12, 20, ("a1",), direction=1, firing=0), None)
    assert "moved up together" in up.message and "(0 of them past its firing score)" in up.message


def test_an_up_and_a_down_event_of_one_bucket_are_two_notices() -> None:
    """A bucket can hold an up and a down event of one rule and cohort; the outbox keeps the first
    notice of a key, so each needs its own."""
    down = cohort_notice(CohortEvent("anomaly-api", AT, "all accounts", 13, 40, ("a1",), direction=-1), None)
    up = cohort_notice(CohortEvent("anomaly-api", AT, "all accounts", 13, 40, ("a2",), direction=1), None)
    plain = cohort_notice(CohortEvent("drop-api", AT, "all accounts", 13, 40, ("a2",)), None)
    assert down.idempotency_key != up.idempotency_key
    assert plain.idempotency_key == f'cohort:["drop-api","all accounts",{AT}]'
    # the parts are JSON-encoded: rule 'r:a' of cohort 'b' and rule 'r' of cohort 'a:b' were one key
    ab = cohort_notice(CohortEvent("r:a", AT, "b", 13, 40, ("a2",)), None)
    assert ab.idempotency_key != cohort_notice(CohortEvent("r", AT, "a:b", 13, 40, ("a2",)), None).idempotency_key
