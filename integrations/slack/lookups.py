"""Who and where in Slack: owner email -> user (users.lookupByEmail, cached in the database), the
bot's DM channel with a user, a caller's email (users.info, for owner-only lookups), channel names
-> ids (conversations.list) and user group members (usergroups.users.list), cached in memory."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Engine

from integrations.slack.api import SlackApi
from integrations.slack.config import SlackConfig
from integrations.slack.errors import PermanentSlackError
from storage import slack as store

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL_CACHE_TTL = 3600
GROUP_CACHE_TTL = 600


_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


def is_channel_id(value: str) -> bool:
    """Slack channel ids look like C0123ABCD (G: old private channels, D: DMs); names are lower case."""
    return _CHANNEL_ID.match(value) is not None


def _known_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class SlackDirectory:
    def __init__(self, api: SlackApi, engine: Engine, config: SlackConfig,
                 clock: Callable[[], int] = lambda: int(time.time())) -> None:
        self.api = api
        self.engine = engine
        self.config = config
        self.clock = clock
        self._channels: dict[str, str] = {}
        self._channels_at = -1
        self._groups: dict[str, tuple[int, frozenset[str]]] = {}

    # ------------------------------------------------------------------ users

    def user_id(self, email: str) -> str | None:
        """The Slack user with this email, None when there is none (both cached)."""
        email = email.strip().lower()
        if not email:
            return None
        hit = self._cached(email)
        if hit is not None:
            return hit.user_id
        return self._lookup_user(email)

    def _cached(self, email: str) -> store.CachedUser | None:
        return store.cached_user(self.engine, email, self.clock(), self.config.user_cache_ttl,
                                 self.config.negative_cache_ttl)

    def _lookup_user(self, email: str) -> str | None:
        """users.lookupByEmail, stored (None: no such user, stored as a negative lookup)."""
        now = self.clock()
        try:
            data = self.api.lookup_by_email(email)
        except PermanentSlackError as exc:
            if exc.error != "users_not_found":
                raise
            store.store_user(self.engine, email, None, now)
            log.info("no Slack user with the email of an account owner (%s)", email)
            return None
        user = data.get("user") or {}
        uid = str(user.get("id") or "") or None
        store.store_user(self.engine, email, uid, now, tz=str(user["tz"]) if user.get("tz") else None)
        return uid

    def user_tz(self, email: str, default: str = "UTC") -> str:
        """The IANA timezone of the Slack user with this email (the `tz` of users.lookupByEmail, else
        users.info, cached with the user), `default` when unknown or not on Slack.

        A cached user id that Slack no longer knows (users.info: user_not_found) is looked up by email
        once more, as in dm_channel, before the owner is taken as not on Slack."""
        email = email.strip().lower()
        if not email:
            return default
        hit = self._cached(email)
        cached = hit is not None
        uid = hit.user_id if hit is not None else self._lookup_user(email)
        if uid is None:
            return default
        if hit is None:  # just looked up: lookupByEmail may have stored the tz
            hit = self._cached(email)
        tz = hit.tz if hit is not None else None
        if tz is None:
            try:
                tz = str((self.api.user_info(uid).get("user") or {}).get("tz") or "")
            except PermanentSlackError as exc:
                if not self._stale_user(email, uid, exc, cached):
                    log.info("users.info for %s failed (%s): timezone %s assumed", email, exc.error, default)
                hit = self._cached(email)  # looked up afresh when stale: the new id's tz, or not on Slack
                if hit is None or hit.user_id is None:
                    return default
                tz = hit.tz or ""
            store.set_user_tz(self.engine, email, tz)
        return tz if tz and _known_zone(tz) else default

    def _stale_user(self, email: str, uid: str, exc: PermanentSlackError, cached: bool) -> bool:
        """True when `exc` says the user id `uid` CACHED for `email` is unknown to Slack now
        (user_not_found: the workspace migrated, the user left): the email is then looked up once
        more (the cache holds the new id, or a negative lookup)."""
        if exc.error not in ("user_not_found", "users_not_found") or not cached:
            return False
        log.info("the cached Slack user %s of %s is not found (%s); looking the email up again",
                 uid, email, exc.error)
        self._lookup_user(email)
        return True

    def dm_channel(self, email: str) -> str | None:
        """The bot's DM channel with the owner of `email` (conversations.open), None if not on Slack.

        A cached user id that Slack no longer knows (user_not_found: the workspace migrated) is
        looked up by email once more before the owner is taken as not on Slack."""
        email = email.strip().lower()
        if not email:
            return None
        hit = self._cached(email)  # one read of the cache when the user is known (the DM of every alert)
        cached = hit is not None
        uid = hit.user_id if hit is not None else self._lookup_user(email)
        if uid is None:
            return None
        if hit is None:  # just looked up: the stored row may still hold the DM channel
            hit = self._cached(email)
        if hit is not None and hit.dm_channel:
            return hit.dm_channel
        try:
            data = self.api.open_dm(uid)
        except PermanentSlackError as exc:
            if not self._stale_user(email, uid, exc, cached):
                raise
            hit = self._cached(email)
            if hit is None or hit.user_id is None:
                return None
            data = self.api.open_dm(hit.user_id)
        channel = str((data.get("channel") or {}).get("id") or "")
        if not channel:
            raise PermanentSlackError(f"conversations.open for the owner {email} returned no channel")
        store.set_dm_channel(self.engine, email, channel)
        return channel

    def reopen_dm(self, email: str) -> str | None:
        """Forget the stored DM channel of `email` and open it once more (conversations.open)."""
        store.clear_dm_channel(self.engine, email)
        return self.dm_channel(email)

    def post_dm(self, email: str, channel: str, post: Callable[[str], T]) -> T:
        """post(channel) to the owner's DM `channel`; when Slack answers channel_not_found for it (a
        stored id gone stale: the app was reinstalled, the workspace migrated), the DM is reopened
        and posted to ONCE more. A channel_not_found for the freshly opened DM is raised as it is."""
        return self._post_renewed(f"the DM of {email}", channel, post, lambda: self.reopen_dm(email))

    def post_channel(self, name: str, channel: str, post: Callable[[str], T]) -> T:
        """post(channel) to `channel`, the id of the channel `name`; when Slack answers channel_not_found
        for a cached name -> id (the channel was deleted and made anew), the name is looked up once more
        and posted to once more."""
        return self._post_renewed(f"channel {name}", channel, post, lambda: self.relookup_channel(name))

    def _post_renewed(self, what: str, channel: str, post: Callable[[str], T],
                      renew: Callable[[], str | None]) -> T:
        """post(channel), and once more to renew()'s channel when Slack did not find `channel`."""
        try:
            return post(channel)
        except PermanentSlackError as exc:
            if exc.error != "channel_not_found":
                raise
            fresh = renew()
            if fresh is None or fresh == channel:
                log.error("%s: Slack does not find channel %s, even looked up anew", what, channel)
                raise
        log.warning("%s: the cached channel %s was gone (channel_not_found); now %s", what, channel, fresh)
        return post(fresh)

    def email_of(self, user_id: str) -> str | None:
        """A Slack user's email (users.info; needs the users:read.email scope), cached."""
        now = self.clock()
        email = store.email_of_user(self.engine, user_id, now, self.config.user_cache_ttl)
        if email is not None:
            return email
        try:
            data = self.api.user_info(user_id)
        except PermanentSlackError as exc:
            if exc.error not in ("user_not_found", "users_not_found", "user_disabled"):
                raise
            log.info("users.info: no Slack user %s (%s): no email known", user_id, exc.error)
            return None  # a deleted or unknown user owns no accounts
        email = str(((data.get("user") or {}).get("profile") or {}).get("email") or "").strip().lower()
        if not email:
            return None
        store.store_user(self.engine, email, user_id, now)
        return email

    # --------------------------------------------------------------- channels

    def channel_id(self, channel: str) -> str:
        """A channel id for '#name' or an id (ids pass through)."""
        if is_channel_id(channel):
            return channel
        name = channel.lstrip("#").lower()
        now = self.clock()
        if name not in self._channels or now - self._channels_at > CHANNEL_CACHE_TTL:
            self._refresh_channels(now)
        cid = self._channels.get(name)
        if cid is None:
            raise PermanentSlackError(
                f"Slack channel {channel} not found: check the name in the rule routing or [slack] config, "
                f"and that the bot can see it (private channels: /invite @{self.config.app_name})",
                error="channel_not_found")
        return cid

    def relookup_channel(self, name: str) -> str | None:
        """The id of channel `name` listed anew (the cached one is stale), None if none or `name` is an id."""
        if is_channel_id(name):
            return None
        self._refresh_channels(self.clock())
        return self._channels.get(name.lstrip("#").lower())

    def _refresh_channels(self, now: int) -> None:
        found: dict[str, str] = {}
        cursor: str | None = None
        for _ in range(50):
            data = self.api.list_channels(cursor)
            for ch in data.get("channels") or []:
                found[str(ch.get("name", "")).lower()] = str(ch.get("id"))
            cursor = ((data.get("response_metadata") or {}).get("next_cursor")) or None
            if not cursor:
                break
        self._channels, self._channels_at = found, now

    # ------------------------------------------------------------------ groups

    def usergroup_members(self, group: str) -> frozenset[str]:
        now = self.clock()
        hit = self._groups.get(group)
        if hit is not None and now - hit[0] <= GROUP_CACHE_TTL:
            return hit[1]
        data = self.api.usergroup_members(group)
        members = frozenset(str(u) for u in data.get("users") or [])
        self._groups[group] = (now, members)
        return members
