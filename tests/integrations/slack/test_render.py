"""Block Kit rendering from the sandboxed templates: content, escaping, limits, admin overrides."""

from __future__ import annotations

import json
import logging

import pytest

from integrations.slack.blocks import fit_blocks, validate_blocks
from integrations.slack.config import SlackConfig
from integrations.slack.errors import TemplateProblem
from integrations.slack.render import EpisodeView, SlackRenderer, strip_trailing_commas, url_from_template
from integrations.slack.template_check import sample_alert, template_problems
from tests.integrations.slack.scenario import assert_valid_message

CFG = SlackConfig(crm_url="https://crm.example.com/{crm_id}", dashboard_url="https://d.example.com/{account}/{metric}")
VIEW = EpisodeView(7, "firing", "fired", 1_795_478_400)


def _msg(content) -> dict:
    return {"text": content.text, "blocks": content.blocks}


def _texts(blocks) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_alert_has_header_sentence_numbers_sparkline_quota_links_and_buttons():
    m = SlackRenderer(CFG).alert(sample_alert(), VIEW, "<@U0ALICE01>")
    assert_valid_message(_msg(m))
    assert validate_blocks(m.blocks) == []
    assert m.blocks[0]["type"] == "header" and "Acme Corp" in m.blocks[0]["text"]["text"]
    flat = _texts(m.blocks)
    for expected in ("api_calls 5,230 is 2.9x the usual 1,800", "*Usual level*\\n1,800", "*Threshold*\\n4,500",
                     "<@U0ALICE01>", "`▃▃ ▄▃█`", "*83%* of 100,000", "projected to reach it *2026-11-28*",
                     "https://crm.example.com/001000000000001", "https://d.example.com/acme/api_calls",
                     "usagebot_ack", "usagebot_snooze", "7:30d", "usagebot_not_useful", "Firing since"):
        assert expected in flat, expected
    assert m.text.startswith("🔔 [WARNING] Acme Corp:")


def test_state_shows_on_the_parent():
    view = EpisodeView(7, "resolved", "resolved", 1_795_478_400, acknowledged_by="U0BOBBY01 (bob)",
                       acknowledged_at=1_795_470_000, snoozed_until=1_796_000_000, resolved_at=1_795_478_400,
                       not_useful_by=("U0ALICE01",), now=1_795_478_400)
    m = SlackRenderer(CFG).alert(sample_alert(), view)
    flat = _texts(m.blocks)
    assert "✅ Resolved" in flat and "Acknowledged by <@U0BOBBY01>" in flat and "Snoozed until" in flat
    assert "Not useful: <@U0ALICE01>" in flat
    assert "usagebot_ack" not in flat and m.blocks[0]["text"]["text"].startswith("✅")
    assert "usagebot_snooze" not in flat  # nothing left to snooze on a resolved alert
    assert "usagebot_not_useful" in flat  # feedback on a past alert still counts
    assert_valid_message(_msg(m))


def test_user_data_is_escaped_and_cannot_mention_or_link():
    a = {**sample_alert(), "account_name": "<!channel> Evil & <https://x.io|Co>", "message": "a <@U123> b"}
    m = SlackRenderer(CFG).alert(a, VIEW)
    flat = _texts(m.blocks)
    assert "<!channel>" not in flat.replace("plain_text", "")[flat.find('"section"'):]
    assert "&lt;!channel&gt; Evil &amp; &lt;https://x.io|Co&gt;" in flat
    assert "a &lt;@U123&gt; b" in flat and "&lt;!channel&gt;" in m.text
    # plain_text (the header) is shown literally by Slack, so it is not escaped
    assert m.blocks[0]["text"]["text"].endswith("<!channel> Evil & <https://x.io|Co>")


def test_long_texts_are_cut_to_block_kit_limits():
    a = {**sample_alert(), "account_name": "A" * 400, "message": "m" * 5000, "description": "d" * 100}
    m = SlackRenderer(CFG).alert(a, VIEW)
    assert validate_blocks(m.blocks) == []
    assert len(m.blocks[0]["text"]["text"]) == 150 and m.blocks[0]["text"]["text"].endswith("…")
    assert len(m.blocks[1]["text"]["text"]) <= 3000
    assert all(len(f["text"]) <= 2000 for f in m.blocks[1]["fields"])
    assert len(m.text) <= 3000


def test_followups_and_resolution():
    r = SlackRenderer(CFG)
    re_ = r.followup({**sample_alert(), "event": "renotified"}, VIEW)
    res = r.followup({**sample_alert(), "event": "resolved", "message": "Resolved (condition no longer holds): x"},
                     VIEW)
    assert re_.text.startswith("🔁 Still firing") and "5,230" in _texts(re_.blocks)
    assert res.text.startswith("✅ Resolved") and "Quota" not in _texts(res.blocks)
    for m in (re_, res):
        assert_valid_message(_msg(m))


def test_quota_and_missing_values_render():
    a = {**sample_alert(), "baseline": None, "threshold": None, "recent": [None, None], "details": {}}
    m = SlackRenderer(CFG).alert(a, VIEW)
    flat = _texts(m.blocks)
    assert "*Usual level*" not in flat and "*Quota*" not in flat and "buckets*" not in flat
    assert_valid_message(_msg(m))


def test_fields_and_quota_line_show_the_sentences_numbers():
    """Seen: a value of 0.003 over a usual 0.001 showed "*Value*\\n0" and "*Usual level*\\n0"; a quota used
    29% showed "*28%*" (0.29 * 100 is 28.999999999999996); the pct filter rounded 89.96% up to "90%"."""
    a = {**sample_alert(), "value": 0.003, "baseline": 0.001, "threshold": 0.002, "recent": [0.001, 0.003],
         "details": {"quota": 10_000.0, "utilization": 0.29}}
    flat = _texts(SlackRenderer(CFG).alert(a, VIEW).blocks)
    for expected in ("*Value*\\n0.003", "*Usual level*\\n0.001", "*Threshold*\\n0.002", "latest 0.003",
                     "*29%* of 10,000"):
        assert expected in flat, expected
    env = SlackRenderer(CFG).env
    assert env.filters["pct"](0.8996) == "89%" and env.filters["pct"](float("inf")) == "n/a"


def test_digest_never_exceeds_fifty_blocks():
    items = [{**sample_alert(), "account_name": f"Account {i}"} for i in range(60)]
    m = SlackRenderer(CFG).digest("alice@example.com", items, "2026-11-24")
    assert len(m.blocks) <= 50 and "… and 40 more" in _texts(m.blocks)
    assert_valid_message(_msg(m))


def test_admin_template_overrides_and_rule_template(tmp_path):
    d = tmp_path / "slack"
    d.mkdir()
    (d / "alert.json.j2").write_text('{"text": {{ ("Custom: " ~ a.account_name) | json }}, "blocks": ['
                                     '{"type": "section", "text": {"type": "mrkdwn", "text": {{ a.message | json }}}},'
                                     ']}')
    (d / "big.json.j2").write_text('{"text": "big deal", "blocks": []}')
    r = SlackRenderer(SlackConfig(template_dir=str(tmp_path)))
    assert r.alert(sample_alert(), VIEW).text == "Custom: Acme Corp"
    assert r.alert({**sample_alert(), "template": "big"}, VIEW).text == "big deal"
    assert r.alert({**sample_alert(), "template": "unknown"}, VIEW).text == "Custom: Acme Corp"


@pytest.mark.parametrize("body,expected", [
    ('{"text": {{ a.nope | json }}, "blocks": []}', "alert.json.j2:1: UndefinedError"),
    ('{% if %}', "alert.json.j2:1"),
    ('{"text": "x" "blocks": []}', "not JSON"),
    ('{"text": "x", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}]}', "invalid Block Kit"),
    ('{{ a.__class__.__mro__ }}', "SecurityError"),
])
def test_broken_admin_template_is_reported_and_the_builtin_used(tmp_path, caplog, body, expected):
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "alert.json.j2").write_text(body)
    cfg = SlackConfig(template_dir=str(tmp_path))
    with caplog.at_level(logging.ERROR):
        m = SlackRenderer(cfg).alert(sample_alert(), VIEW)
    assert m.blocks[0]["type"] == "header"  # the built-in template
    assert expected in caplog.text and str(tmp_path) in caplog.text
    problems = template_problems(cfg)
    assert len(problems) == 1 and expected in problems[0]


def test_builtin_templates_have_no_problems():
    assert template_problems(SlackConfig()) == []


def test_broken_builtin_render_raises():
    r = SlackRenderer(SlackConfig())
    with pytest.raises(TemplateProblem, match="alert.json.j2"):
        r.render(["slack/alert.json.j2"], {"a": {}})


def test_strip_trailing_commas_leaves_strings_alone():
    assert json.loads(strip_trailing_commas('{"a": [1, 2, ], "b": "x, ]", "c": {"d": "\\", }",\n },\n}')) == {
        "a": [1, 2], "b": "x, ]", "c": {"d": '", }'}}


def test_url_templates_quote_values_and_skip_missing():
    a = {"account": "a b/c", "crm_id": "", "metric": "m&x"}
    assert url_from_template("https://x/{account}?m={metric}", a) == "https://x/a%20b%2Fc?m=m%26x"
    assert url_from_template("https://crm/{crm_id}", a) is None


def test_fit_and_validate_blocks():
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 60
    fitted = fit_blocks(blocks)
    assert len(fitted) == 50 and "11 more block(s)" in fitted[-1]["elements"][0]["text"]
    assert validate_blocks(fitted) == []
    assert "unknown block type" in validate_blocks([{"type": "nope"}])[0]
    assert "unknown field blocks[0].colour" in validate_blocks(
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}, "colour": "red"}])[0]
    assert "cannot exceed 150" in validate_blocks([{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}])[0]
    assert len(validate_blocks([{"type": "divider"}] * 51)) == 1
    long_url = {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "b" * 90},
                                                 "url": "https://x/" + "u" * 3100, "action_id": "a"}]}
    fitted = fit_blocks([long_url])[0]["elements"][0]
    assert "url" not in fitted and len(fitted["text"]["text"]) == 75


def test_an_accounts_simultaneous_alerts_are_one_valid_message():
    """Grouping: the other alerts of the account that fired together ride in one message."""
    also = [{"rule": "events-drop", "kind": "drop", "metric": "events", "discriminator": "", "severity": "warning",
             "message": "events dropped to 0 <@U123> in the 1d bucket", "value": 0.0, "baseline": 900.0,
             "threshold": 450.0}]
    m = SlackRenderer(CFG).alert({**sample_alert(), "grouped": also}, VIEW, "<@U0ALICE01>")
    assert_valid_message(_msg(m))
    assert validate_blocks(m.blocks) == []
    flat = _texts(m.blocks)
    assert "*Also on this account now*" in flat and "events dropped to 0 &lt;@U123&gt;" in flat
    assert "rule `events-drop`" in flat


def test_kind_titles_come_from_the_kinds_registry():
    from rules.kinds import KINDS

    for kind in KINDS.values():
        a = {**sample_alert(), "kind": kind.name, "details": {"limit": 50.0, "direction": "above", "recovery": 45.0}}
        m = SlackRenderer(CFG).alert(a, VIEW)
        assert_valid_message(_msg(m))
        assert m.blocks[0]["text"]["text"].startswith(f"🔔 {kind.title} · ")
    assert SlackRenderer(CFG).alert({**sample_alert(), "kind": "retired"}, VIEW).blocks[0]["text"]["text"].startswith(
        "🔔 Retired · ")
