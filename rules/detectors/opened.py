"""Open episodes handed to a detector: which block rows they are."""

from __future__ import annotations

from collections.abc import Sequence

from rules.model import MetricBlock, OpenEpisode


def open_rows(block: MetricBlock, open_episodes: Sequence[OpenEpisode]) -> dict[int, OpenEpisode]:
    """Block row -> open episode, for the open episodes of accounts in the block."""
    if not open_episodes:
        return {}
    index = {a: i for i, a in enumerate(block.account_ids)}
    return {index[e.account_id]: e for e in open_episodes if e.account_id in index}
