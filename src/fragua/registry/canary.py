"""Gradual rollout: a ``canary`` alias that takes a share of production's requests.

The canary is an alias like ``production``, moved by compare-and-swap after the version's
checksums are verified, and its state carries the share (``AliasState.traffic_percent``). A
server reads the aliases and splits requests for ``production`` with :func:`split_share` and
:func:`pick_version`. Promoting moves production to the canary's version (so ``previous`` keeps
what production was) and then removes the canary; ending it only removes it. Every move is an
event in the registry's history.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Callable, Mapping, NamedTuple

from fragua.registry.versions import PRODUCTION, AliasConflict, AliasState, Registry, RegistryError

logger = logging.getLogger("fragua.registry")

CANARY = "canary"


class NoCanary(RegistryError):
    """There is no canary to promote or end."""


class TrafficSplit(NamedTuple):
    """How requests for ``production`` are shared: ``canary_percent`` of them go to ``canary``."""

    production: str | None
    canary: str | None
    canary_percent: float


def split_share(aliases: Mapping[str, AliasState]) -> TrafficSplit:
    """The traffic split the registry's aliases describe (``Registry.aliases()``). A canary without a
    share, or on production's own version, takes nothing."""
    production = aliases.get(PRODUCTION)
    canary = aliases.get(CANARY)
    production_version = production.version if production else None
    if canary is None or canary.traffic_percent is None or production_version is None or canary.version == production_version:
        return TrafficSplit(production_version, None, 0.0)
    return TrafficSplit(production_version, canary.version, canary.traffic_percent)


def user_bucket(canary_version: str, user: str) -> float:
    """A user's fixed place in [0, 100) for one canary: the same user keeps the same version for the
    canary's life, and a new canary draws its users afresh."""
    digest = hashlib.sha256(f"{canary_version}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def pick_version(split: TrafficSplit, user: str | None = None, draw: Callable[[], float] = random.random) -> str | None:
    """The version that serves one request for ``production``: sticky per ``user`` when given, else
    drawn at random (``draw`` returns a number in [0, 1))."""
    if split.canary is None:
        return split.production
    place = user_bucket(split.canary, user) if user else draw() * 100
    return split.canary if place < split.canary_percent else split.production


def check_percent(percent: float) -> float:
    if not 0 < percent < 100:
        raise RegistryError(f"a canary's traffic share must be above 0 and below 100 percent, got {percent:g}; to send it everything, promote it")
    return percent


def start_canary(registry: Registry, version: str, percent: float, *, reason: str, actor: str | None = None) -> AliasState:
    """Point ``canary`` at ``version`` with ``percent`` of production's requests, after verifying its
    checksums; refused when there is no production or ``version`` already is production."""
    check_percent(percent)
    production = registry.production()
    if production is None:
        raise RegistryError(
            f"no production version in {registry.describe()}: a canary takes a share of production's requests; deploy {version} without --canary first"
        )
    if production.version == version:
        raise RegistryError(f"{version} already is production; a canary must be another version")
    return registry.set_alias(CANARY, version, reason=f"{reason}: canary at {percent:g}% of production's requests", actor=actor, traffic_percent=percent)


def _expected_canary(registry: Registry, expected_version: str | None, doing: str) -> tuple[AliasState, str | None]:
    """The canary as it is now; NoCanary without one, RegistryError when it is not ``expected_version``."""
    state, etag = registry.alias(CANARY)
    if state is None:
        raise NoCanary(f"no canary in {registry.describe()} to {doing}; start one with `fragua deploy --canary PERCENT`")
    if expected_version is not None and state.version != expected_version:
        raise RegistryError(f"the canary is now {state.version}, not {expected_version}; nothing was changed, judge the new canary first")
    return state, etag


def promote_canary(registry: Registry, *, reason: str, actor: str | None = None, expected_version: str | None = None) -> AliasState:
    """Move production to the canary's version (``previous`` keeps what production was), then end the
    canary; returns production's new state. Raises NoCanary when there is none, and RegistryError when
    the canary is no longer ``expected_version`` (a new one started after it was judged)."""
    expected = _expected_canary(registry, expected_version, "promote")
    canary = expected[0]
    production = registry.production()
    if production is not None and production.version == canary.version:
        state = production  # production already moved there (a retried call): only the canary is left to end
    else:
        state = registry.promote(canary.version, reason=f"{reason}: canary {canary.version} promoted", actor=actor)
    _remove_if_unchanged(registry, expected, reason=f"{reason}: promoted to production", actor=actor)
    return state


def end_canary(registry: Registry, *, reason: str, actor: str | None = None, expected_version: str | None = None) -> AliasState | None:
    """Remove the canary (production is untouched); returns what it was, None when there was none.
    Raises RegistryError when the canary is no longer ``expected_version``."""
    try:
        expected = _expected_canary(registry, expected_version, "end")
    except NoCanary:
        return None
    _remove_if_unchanged(registry, expected, reason=reason, actor=actor)
    return expected[0]


def _remove_if_unchanged(registry: Registry, expected: tuple[AliasState | None, str | None], *, reason: str, actor: str | None) -> None:
    try:
        registry.remove_alias(CANARY, reason=reason, actor=actor, expected=expected)
    except AliasConflict:
        # A new canary started meanwhile: it is someone else's rollout, not the one this call ends.
        logger.warning("the canary changed while %s was being ended; the new one is left as it is", expected[0].version if expected[0] else "it")
