"""Owner email -> Slack user (cached in the database, also when not found), DM channels, channel
names -> ids with paging, user groups and a caller's email."""

from __future__ import annotations

from dataclasses import replace

import pytest

from integrations.slack.api import SlackApi
from integrations.slack.errors import PermanentSlackError
from integrations.slack.lookups import SlackDirectory


def _directory(engine, config, clock):
    return SlackDirectory(SlackApi.from_config(config), engine, config, clock)


def test_user_lookup_is_cached_with_ttls(engine, fake, config, clock):
    d = _directory(engine, replace(config, user_cache_ttl=3600, negative_cache_ttl=600), clock)
    assert d.user_id("Alice@Example.com ") == "U0ALICE01"
    assert d.user_id("alice@example.com") == "U0ALICE01"
    assert d.user_id("ghost@example.com") is None
    assert d.user_id("ghost@example.com") is None
    assert len(fake.calls_of("users.lookupByEmail")) == 2
    fake.add_user("U0GHOST01", "ghost@example.com")
    clock.now += 601  # the negative entry expires first
    assert d.user_id("ghost@example.com") == "U0GHOST01"
    assert d.user_id("alice@example.com") == "U0ALICE01"
    assert len(fake.calls_of("users.lookupByEmail")) == 3
    clock.now += 3600
    d.user_id("alice@example.com")
    assert len(fake.calls_of("users.lookupByEmail")) == 4
    # the cache is shared through the database: a new process does not ask again
    d2 = _directory(engine, config, clock)
    assert d2.user_id("alice@example.com") == "U0ALICE01"
    assert len(fake.calls_of("users.lookupByEmail")) == 4


def test_dm_channel_opened_once(engine, fake, config, clock):
    d = _directory(engine, config, clock)
    c1 = d.dm_channel("alice@example.com")
    assert c1 == _directory(engine, config, clock).dm_channel("alice@example.com")
    assert c1 == fake.dm_with("U0ALICE01").id and len(fake.calls_of("conversations.open")) == 1
    assert d.dm_channel("nobody@example.com") is None


def test_channel_names_resolve_across_pages(engine, fake, config, clock):
    for i in range(7):
        fake.add_channel(f"team-{i}")
    fake.page_size = 3
    d = _directory(engine, config, clock)
    assert d.channel_id("#team-6") == fake.channel("#team-6").id
    assert d.channel_id("usage-alerts") == "C0ALERTS1"
    assert d.channel_id("C0ALREADY1") == "C0ALREADY1"  # ids pass through
    assert len(fake.calls_of("conversations.list")) == 3  # one refresh, three pages
    with pytest.raises(PermanentSlackError, match="#nope not found.*/invite @usagebot") as exc:
        d.channel_id("#nope")
    assert exc.value.error == "channel_not_found"


def test_usergroup_members_and_caller_email(engine, fake, config, clock):
    fake.add_usergroup("S0CSTEAM1", ["U0BOBBY01"])
    d = _directory(engine, config, clock)
    assert d.usergroup_members("S0CSTEAM1") == frozenset({"U0BOBBY01"})
    d.usergroup_members("S0CSTEAM1")
    assert len(fake.calls_of("usergroups.users.list")) == 1
    assert d.email_of("U0BOBBY01") == "bob@example.com"
    assert d.email_of("U0BOBBY01") == "bob@example.com"
    assert len(fake.calls_of("users.info")) == 1
    # and the reverse direction is now cached too
    assert d.user_id("bob@example.com") == "U0BOBBY01" and not fake.calls_of("users.lookupByEmail")


def test_token_never_in_errors(engine, fake, config, clock):
    from rules.config import Secret

    bad = replace(config, bot_token=Secret("xoxb-wrong-SECRET"))
    d = _directory(engine, bad, clock)
    with pytest.raises(Exception) as exc:
        d.user_id("alice@example.com")
    assert "invalid_auth" in str(exc.value) and "SECRET" not in str(exc.value) and "slack.bot_token" in str(exc.value)


def test_a_cached_user_id_slack_no_longer_knows_is_looked_up_once_more(engine, fake, config, clock):
    """alice's cached id is user_not_found now (a migrated workspace gave her a new one): her email is
    looked up again and her DM opened with the new id, instead of taking her as not on Slack."""
    d = _directory(engine, config, clock)
    assert d.user_id("alice@example.com") == "U0ALICE01"
    fake.move_user("U0ALICE01", "U0ALICE02")
    dm = d.dm_channel("alice@example.com")
    assert dm is not None and dm == fake.dm_with("U0ALICE02").id
    assert d.user_id("alice@example.com") == "U0ALICE02"
    assert len(fake.calls_of("users.lookupByEmail")) == 2 and len(fake.calls_of("conversations.open")) == 2


def _alice_left(engine, fake, config, clock) -> SlackDirectory:  # noqa: ANN001
    """A directory that cached alice's id, then alice left the workspace (her id is user_not_found)."""
    d = _directory(engine, config, clock)
    assert d.user_id("alice@example.com") == "U0ALICE01"
    with fake.lock:
        del fake.users["U0ALICE01"]
    return d


def test_a_cached_user_id_of_someone_who_left_is_not_on_slack_after_one_more_lookup(engine, fake, config, clock):
    d = _alice_left(engine, fake, config, clock)
    assert d.dm_channel("alice@example.com") is None
    assert d.user_id("alice@example.com") is None and len(fake.calls_of("conversations.open")) == 1


def test_a_cached_channel_id_slack_no_longer_finds_is_looked_up_and_posted_once_more(engine, fake, config,
                                                                                   clock):
    """#usage-alerts was deleted and made anew within the channel cache's hour: the post to the cached
    id answers channel_not_found, the name is listed again and the post goes to the new id, once."""
    from integrations.slack.delivery import Poster
    from integrations.slack.render import SlackMessageContent

    d = _directory(engine, config, clock)
    poster = Poster(d.api, engine, clock)
    old = d.channel_id("#usage-alerts")
    new = fake.remake_channel("#usage-alerts")
    content = SlackMessageContent("alert for acme", [])
    cid, _ = d.post_channel("#usage-alerts", old, lambda ch: poster.post_once("step-1", ch, None, content))
    assert cid == new and len(fake.channel(new).messages) == 1
    assert d.channel_id("#usage-alerts") == new
    with pytest.raises(PermanentSlackError) as exc:  # an id named in the config is not looked up again
        d.post_channel(old, old, lambda ch: poster.post_once("step-2", ch, None, content))
    assert exc.value.error == "channel_not_found"


def test_user_tz_of_a_cached_user_id_slack_no_longer_knows_looks_the_email_up_again(engine, fake, config, clock):
    """alice's cached id (no timezone cached yet) is user_not_found in users.info now (a migration gave
    her a new id): her email is looked up again and the new id's timezone is used and cached, instead
    of caching "no timezone" for her for good."""
    d = _directory(engine, config, clock)
    assert d.user_id("alice@example.com") == "U0ALICE01"
    fake.move_user("U0ALICE01", "U0ALICE02")
    fake.users["U0ALICE02"].update(tz="Asia/Tokyo")
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "Asia/Tokyo"
    assert d.user_id("alice@example.com") == "U0ALICE02"
    assert len(fake.calls_of("users.lookupByEmail")) == 2 and len(fake.calls_of("users.info")) == 1
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "Asia/Tokyo"  # cached with the new id
    assert len(fake.calls_of("users.info")) == 1 and len(fake.calls_of("users.lookupByEmail")) == 2


def test_user_tz_of_a_cached_user_who_left_is_the_default_after_one_more_lookup(engine, fake, config, clock):
    d = _alice_left(engine, fake, config, clock)
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "Europe/Berlin"
    assert d.user_id("alice@example.com") is None  # the stale id is gone: negative lookup cached
    assert len(fake.calls_of("users.lookupByEmail")) == 2 and len(fake.calls_of("users.info")) == 1
    fake.add_user("U0ALICE03", "alice@example.com", "alice", tz="America/New_York")  # she is back
    clock.now += config.negative_cache_ttl + 1
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "America/New_York"
