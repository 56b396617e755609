"""Field values from health, record matching, and the diff against the last written values (pure)."""

from __future__ import annotations

from integrations.salesforce.config import DEFAULT_FIELDS, SalesforceConfig
from integrations.salesforce.diff import (
    UNKNOWN,
    DesiredRecord,
    FieldChange,
    align_read_value,
    diff_records,
    format_change,
)
from integrations.salesforce.mapping import field_values, is_salesforce_id, match_key, source_values
from rules.health import Factor, Health
from rules.model import AccountFacts
from rules.periods import iso

H = Health(score=64, band="Watch", trend="Declining", trend_ratio=0.7349, quota_utilization=0.4567,
           active_days=21, expansion_signal=False, last_alert="x" * 300, last_alert_at=1_795_478_400,
           factors=(Factor("trend", 10.2, 35, ""), Factor("active_days", 20.0, 25, "")))


def test_source_values_are_what_salesforce_receives():
    v = source_values(H, iso, text_limit=255)
    assert v["score"] == 64 and v["trend_ratio"] == 0.73 and v["quota_utilization"] == 45.7
    assert len(v["last_alert"]) == 255 and v["last_alert"].endswith("…")
    assert v["last_alert_at"] == "2026-11-24T00:00:00Z"
    assert v["explanation"] == "trend 10/35 · active days 20/25"


def test_field_values_follow_the_mapping():
    assert list(field_values(H, DEFAULT_FIELDS, iso)) == list(DEFAULT_FIELDS.values())
    assert field_values(H, {"band": "Band__c", "active_days": "Days__c"}, iso) == {"Band__c": "Watch",
                                                                                   "Days__c": 21}


def test_match_key():
    cfg = SalesforceConfig()
    assert match_key(AccountFacts("a", "A", crm_id="0015g00000AbCdE"), cfg) == ("0015g00000AbCdE", "")
    assert match_key(AccountFacts("a", "A", crm_id=" 0015g00000AbCdEAAZ "), cfg) == ("0015g00000AbCdEAAZ", "")
    assert match_key(AccountFacts("a", "A"), cfg)[0] is None
    assert "not a Salesforce Id" in match_key(AccountFacts("a", "A", crm_id="acme"), cfg)[1]
    ext = SalesforceConfig(match="external_id", external_id_field="Ext__c")
    assert match_key(AccountFacts("acme", "A"), ext) == ("acme", "")
    assert is_salesforce_id("001000000000001") and not is_salesforce_id("001-00000000001")


def test_diff_sends_changed_fields_only_and_unknown_for_another_record():
    desired = [DesiredRecord("b", "B", "001B", {"S__c": 70, "T__c": "Stable", "Q__c": 45.5}),
               DesiredRecord("a", "A", "001A", {"S__c": 60, "T__c": None}),
               DesiredRecord("c", "C", "001C", {"S__c": 1})]
    written = {"a": ("001A", {"S__c": 60, "T__c": "Growing"}),
               "b": ("001OLD", {"S__c": 70, "T__c": "Stable", "Q__c": 45.5}),
               "c": ("001C", {"S__c": 1})}
    changes = diff_records(desired, written, errors={"a": "LOCKED: x", "b": "old error"})
    assert [c.account_id for c in changes] == ["a", "b"]
    assert changes[0].changes == (FieldChange("T__c", "Growing", None),) and changes[0].retry_of == "LOCKED: x"
    assert changes[0].values() == {"T__c": None}
    assert all(fc.old is UNKNOWN for fc in changes[1].changes) and changes[1].retry_of is None


def test_diff_tells_true_from_one_and_int_from_float():
    desired = [DesiredRecord("a", "A", "k", {"E__c": True, "S__c": 5.0})]
    changes = diff_records(desired, {"a": ("k", {"E__c": 1, "S__c": 5})})
    assert [c.field for c in changes[0].changes] == ["E__c", "S__c"]


def test_format_change():
    assert format_change(FieldChange("S__c", UNKNOWN, 72)) == "S__c: (unknown) -> 72"
    assert format_change(FieldChange("T__c", "Stable", "Declining")) == 'T__c: "Stable" -> "Declining"'
    assert format_change(FieldChange("E__c", False, True)) == "E__c: false -> true"
    assert format_change(FieldChange("Q__c", 45.5, None)) == "Q__c: 45.5 -> (empty)"


def test_align_values_read_back_from_salesforce():
    assert align_read_value(72.0, 72) == 72 and isinstance(align_read_value(72.0, 72), int)
    assert align_read_value(72.5, 72) == 72.5
    assert align_read_value(3, 2.5) == 3.0 and isinstance(align_read_value(3, 2.5), float)
    assert align_read_value("2026-11-24T09:00:00.000+0000", "2026-11-23T00:00:00Z") == "2026-11-24T09:00:00Z"
    assert align_read_value("Stable", "Growing") == "Stable" and align_read_value(None, 5) is None
    assert align_read_value(True, 1) is True
