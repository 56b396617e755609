from __future__ import annotations

import pytest

from rules.config import ConfigError, Secret, document_from_text, load_document

TEXT = """
[slack]
bot_token = "${SLACK_BOT_TOKEN}"
signing_secret = "${MISSING_SECRET}"
channel = "${CHAN:-#usage-alerts}"
retries = 3
timeout = "abc"
rate = "1s"
chanel = "typo"

[[sources]]
id = "csv"
every = "5x"
onerror = "skip"
"""


def test_section_getters_problems_and_env():
    doc = document_from_text(TEXT, "config.toml", env={"SLACK_BOT_TOKEN": "xoxb-very-secret"})
    s = doc.section("slack")
    tok = s.secret("bot_token", required=True)
    assert isinstance(tok, Secret) and tok.reveal() == "xoxb-very-secret"
    assert "xoxb" not in repr(tok) and "xoxb" not in str(tok)
    assert s.secret("signing_secret") is None
    assert s.str("channel") == "#usage-alerts"
    assert s.int("retries", min=0, max=10) == 3
    assert s.duration("rate") == 1
    assert s.int("timeout", default=5) == 5
    s.check_keys({"bot_token", "signing_secret", "channel", "retries", "timeout", "rate"})
    src = doc.sections("sources")[0]
    assert src.duration("every", default=60) == 60
    src.check_keys({"id", "every", "on_error"})
    msgs = [str(p) for p in doc.problems]
    assert "config.toml:4: slack.signing_secret: environment variable MISSING_SECRET is not set" in msgs
    assert any(m.startswith("config.toml:7: slack.timeout: must be an integer") for m in msgs)
    assert "config.toml:9: slack.chanel: unknown key; did you mean 'channel'?" in msgs
    assert any(m.startswith("config.toml:13: sources[0].every: invalid duration") for m in msgs)
    assert "config.toml:14: sources[0].onerror: unknown key; did you mean 'on_error'?" in msgs
    assert all("xoxb" not in m for m in msgs)
    with pytest.raises(ConfigError):
        doc.raise_if_problems()


def test_secret_from_file_and_syntax_errors(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    doc = document_from_text(f'[x]\ntoken_file = "{secret}"\n', "c.toml")
    assert doc.section("x").secret("token").reveal() == "s3cr3t"
    bad = tmp_path / "bad.toml"
    bad.write_text("[x]\na = \n")
    with pytest.raises(ConfigError) as e:
        load_document(bad)
    assert str(e.value).startswith(f"{bad}:2: TOML syntax error")
    with pytest.raises(ConfigError, match="no such file"):
        load_document(tmp_path / "nope.toml")


@pytest.mark.parametrize(("raw", "want"), [("$${X}", "${X}"), ("a$${X:-y}b", "a${X:-y}b"), ("$$${X}", "$x"),
                                           ("$$$${X}", "$${X}"), ("$${X} ${X}", "${X} x"), ("$$", "$$"),
                                           ("pa$$word$", "pa$$word$"), ("$${", "${"), ("$X $$X", "$X $$X")])
def test_a_doubled_dollar_is_a_literal_env_reference(raw, want):
    """There was no way to write the text `${`: an API's own URL template was a config problem."""
    doc = document_from_text(f'[s]\nplain = "{raw}"\ntoken = "{raw}"\n', env={"X": "x"})
    sec = doc.section("s")
    assert sec.str("plain") == want and sec.secret("token").reveal() == want and not doc.problems


@pytest.mark.parametrize("raw", ["${TOKEN", "$${X} ${Y", "$${X:-${Y}}x${", "${X:-${Y}}", "abc${1X}", "${}", "${X:?must be set}"])
def test_a_malformed_env_reference_is_a_problem_not_literal_text(raw):
    """'${BILLING_API_TOKEN' (a brace missing) was kept as the literal value: the API got that text
    as its token and config check said nothing. The value itself is not quoted (it may be a secret)."""
    doc = document_from_text(f'[s]\nplain = "{raw}"\ntoken = "{raw}"\nfine = "${{X:-ok}} $5"\n', env={"X": "x"})
    sec = doc.section("s")
    assert sec.str("plain") is None and sec.secret("token") is None and sec.str("fine") == "x $5"
    said = [str(p) for p in doc.problems]
    assert len(said) == 2 and all("unterminated or malformed ${...} reference" in p for p in said), said
    assert not any(raw in p for p in said)
