"""The canary alias and its decision: registry moves on the local directory and the S3 server (``store``),
the traffic split a server reads, and the promote / drop / wait table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fragua.registry.canary import (
    CANARY, NoCanary, TrafficSplit, end_canary, pick_version, promote_canary, split_share, start_canary, user_bucket,
)
from fragua.registry.canary_decision import VersionStats, canary_decision
from fragua.registry.versions import PREVIOUS, PRODUCTION, RegistryError, VersionDamaged
from fragua.settings import CanarySettings, Settings

from .test_alias_verification import WEIGHTS, flip_a_byte
from .test_registry import published, registry


def test_a_canary_takes_a_share_and_promoting_it_keeps_previous(store, tmp_path):
    reg = registry(store)
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    reg.promote(v1, reason="first deploy")
    state = start_canary(reg, v2, 10, reason="manual canary", actor="tester")
    assert (state.alias, state.version, state.traffic_percent) == (CANARY, v2, 10)
    assert split_share(reg.aliases()) == TrafficSplit(v1, v2, 10.0) == (v1, v2, 10.0)
    production = promote_canary(reg, reason="manual promote", actor="tester")
    assert (production.version, production.previous) == (v2, v1)
    aliases = reg.aliases()
    assert CANARY not in aliases and aliases[PREVIOUS].version == v1
    assert split_share(aliases) == (v2, None, 0.0)
    moves = [(e.alias, e.from_version, e.to_version, e.traffic_percent) for e in reg.history()]
    assert moves[-4:] == [(CANARY, None, v2, 10), (PRODUCTION, v1, v2, None), (PREVIOUS, None, v1, None), (CANARY, v2, None, None)]
    assert "canary at 10% of production's requests" in reg.history()[-4].reason and "promoted" in reg.history()[-1].reason


def test_ending_a_canary_leaves_production_and_a_second_end_finds_none(store, tmp_path):
    reg = registry(store)
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    reg.promote(v1, reason="first deploy")
    start_canary(reg, v2, 25, reason="manual canary")
    ended = end_canary(reg, reason="rollback during the canary")
    assert ended is not None and ended.version == v2
    assert reg.production().version == v1 and CANARY not in reg.aliases()
    assert end_canary(reg, reason="again") is None
    with pytest.raises(NoCanary, match="no canary .* to promote"):
        promote_canary(reg, reason="manual promote")


def test_a_canary_is_refused_without_production_on_production_or_with_a_bad_share(store, tmp_path):
    reg = registry(store)
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    with pytest.raises(RegistryError, match=f"no production version .* deploy {v2} without --canary first"):
        start_canary(reg, v2, 10, reason="r")
    reg.promote(v1, reason="first deploy")
    with pytest.raises(RegistryError, match=f"{v1} already is production"):
        start_canary(reg, v1, 10, reason="r")
    for share in (0, 100, -5, 150):
        with pytest.raises(RegistryError, match="above 0 and below 100 percent"):
            start_canary(reg, v2, share, reason="r")
    assert CANARY not in reg.aliases()


def test_a_damaged_version_never_becomes_the_canary(store, tmp_path):
    reg = registry(store)
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    reg.promote(v1, reason="first deploy")
    flip_a_byte(store, f"{reg.version_prefix(v2)}/{WEIGHTS}")
    with pytest.raises(VersionDamaged):
        start_canary(reg, v2, 10, reason="r")
    assert CANARY not in reg.aliases()


def test_the_canary_judged_is_the_one_promoted_or_dropped(store, tmp_path):
    reg = registry(store)
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="first deploy")
    start_canary(reg, v2, 10, reason="r")
    start_canary(reg, v3, 10, reason="a newer canary replaces it")
    for move in (promote_canary, end_canary):
        with pytest.raises(RegistryError, match=f"the canary is now {v3}, not {v2}"):
            move(reg, reason="canary flow", expected_version=v2)
    assert reg.alias(CANARY)[0].version == v3 and reg.production().version == v1


def test_promoting_a_canary_production_already_reached_only_ends_it(tmp_path):
    """A retried promote whose first attempt moved production but failed before removing the canary."""
    from fragua.storage.store import LocalStore

    reg = registry(LocalStore(tmp_path / "store"))
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    reg.promote(v1, reason="first deploy")
    start_canary(reg, v2, 10, reason="r")
    reg.promote(v2, reason="the first attempt's move")
    state = promote_canary(reg, reason="retry")
    assert (state.version, state.previous) == (v2, v1) and CANARY not in reg.aliases()
    assert split_share(reg.aliases()) == (v2, None, 0.0)


def test_a_server_splits_production_traffic_by_the_share_sticky_per_user():
    split = TrafficSplit("acme-tiny-v1", "acme-tiny-v2", 10.0)
    users = [f"user-{n}" for n in range(4000)]
    chosen = {user: pick_version(split, user) for user in users}
    assert all(pick_version(split, user) == chosen[user] for user in users[:200])  # sticky
    share = sum(version == "acme-tiny-v2" for version in chosen.values()) / len(users)
    assert 0.08 < share < 0.12
    assert pick_version(split, None, draw=lambda: 0.05) == "acme-tiny-v2"
    assert pick_version(split, None, draw=lambda: 0.10) == "acme-tiny-v1"
    assert pick_version(TrafficSplit("acme-tiny-v1", None, 0.0), "anyone") == "acme-tiny-v1"
    # a new canary draws its users afresh
    assert user_bucket("acme-tiny-v2", "user-1") != user_bucket("acme-tiny-v3", "user-1")


def test_the_canary_share_is_a_constrained_setting_and_section():
    settings = Settings.load(registry={"canary": {"min_requests": 50, "max_rating_drop": 0.2}})
    assert settings.registry.canary.min_requests == 50
    with pytest.raises(ValueError, match="registry.canary.max_error_rate_increase"):
        Settings.load(registry={"canary": {"max_error_rate_increase": 2}})


SETTINGS = CanarySettings(min_requests=100, max_error_rate_increase=0.01, min_ratings=10, max_rating_drop=0.1, max_duration_hours=24)


def stats(version: str, requests: int, errors: int = 0, ratings: int = 0, mean: float | None = None) -> VersionStats:
    return VersionStats(version=version, requests=requests, errors=errors, ratings=ratings, mean_rating=mean)


@pytest.mark.parametrize(("canary", "production", "elapsed_hours", "action", "phrase"), [
    (stats("c", 99), stats("p", 900), 1, "wait", "served 99 of the 100 requests needed"),
    (stats("c", 99), stats("p", 900), 24, "drop", "past registry.canary.max_duration_hours (24)"),
    (stats("c", 100), stats("p", 900), 1, "promote", "ratings not compared"),
    (stats("c", 100, errors=2), stats("p", 1000, errors=10), 1, "promote", "error rate 2.00% against production's 1.00%, within"),
    (stats("c", 100, errors=3), stats("p", 1000, errors=10), 1, "drop", "above registry.canary.max_error_rate_increase"),
    (stats("c", 200, ratings=10, mean=0.5), stats("p", 900, ratings=50, mean=0.55), 1, "promote", "within registry.canary.max_rating_drop"),
    (stats("c", 200, ratings=10, mean=0.3), stats("p", 900, ratings=50, mean=0.55), 1, "drop", "more than registry.canary.max_rating_drop"),
    (stats("c", 200, ratings=9, mean=-1.0), stats("p", 900, ratings=50, mean=1.0), 1, "promote", "canary has 9, production 50, each needs 10"),
    (stats("c", 200, errors=200), stats("p", 0), 1, "drop", "error rate 100.00% against production's 0.00%"),
])
def test_canary_decision_table(canary, production, elapsed_hours, action, phrase):
    decision = canary_decision(canary, production, SETTINGS, elapsed=timedelta(hours=elapsed_hours))
    assert decision.action == action, decision.reasons
    assert any(phrase in reason for reason in decision.reasons), decision.reasons
