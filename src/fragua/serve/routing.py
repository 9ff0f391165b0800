"""Which version answers a request: aliases followed as they move, version names, the canary's share.

The router reads the registry's aliases every serve.watch_interval_s (and when ``POST
/admin/reload`` asks). When an alias in use moves, the new version is loaded first and the alias
switches only once it is ready, so no request waits on a load or fails during a swap; a request
already running finishes on the version it started on (the engine keeps it while it runs). A
version that cannot be loaded leaves the alias where it was, and the failure is reported.

An alias is in use when it is the default model, the canary, or any request has named it;
the others switch at once and are loaded by their first request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from fragua.registry.canary import CANARY, TrafficSplit, pick_version, split_share
from fragua.registry.versions import PRODUCTION, AliasState, Registry, RegistryError, VersionManifest
from fragua.serve.engine import Engine, EngineError, ModelUnavailable
from fragua.storage.store import StoreError

logger = logging.getLogger("fragua.serve")

# A version that failed to load is tried again by the watcher after this long (a reload request
# tries at once): loading means downloading and verifying it, too costly for every tick.
RETRY_FAILED_LOAD_S = 60.0


class UnknownModel(LookupError):
    """The request names no alias or published version."""


@dataclass(frozen=True)
class Route:
    version: str
    alias: str | None  # the alias the request named; None when it named the version


@dataclass(frozen=True)
class PendingMove:
    """An alias in use that moved to a version not loaded yet (or that failed to load)."""

    version: str
    error: str | None


class Router:
    def __init__(
        self, registry: Registry, engine: Engine, *, default_model: str, load_failed: Callable[[str], Any] = lambda version: None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.default_model = default_model
        self.load_failed = load_failed
        self.draw = draw
        self.routes: dict[str, str] = {}  # alias -> the version requests for it get
        self.pending: dict[str, PendingMove] = {}
        self.canary_percent = 0.0
        self.aliases: dict[str, AliasState] = {}  # as last read
        self._requested: set[str] = set()
        self._versions: set[str] = set()  # published versions seen
        self._failed: dict[str, float] = {}  # version -> when its load failed (monotonic)
        self._errors: dict[str, str] = {}  # version -> why it failed to load
        self._loaded_default: str | None = None
        self._lock = asyncio.Lock()

    # Reading the registry --------------------------------------------------------------

    async def refresh(self, *, retry_failed: bool = False) -> None:
        """Read the aliases and move the routes; in-use aliases move only onto a loaded version."""
        async with self._lock:
            aliases = await asyncio.to_thread(self.registry.aliases)
            self.aliases = aliases
            split = split_share(aliases)
            share_version, share = split.canary, split.canary_percent
            in_use = {self.default_model, *self._requested} | ({CANARY} if share_version else set())
            routes = {alias: version for alias, version in self.routes.items() if alias in aliases}
            for alias, state in sorted(aliases.items(), key=lambda item: item[0] != self.default_model):
                if routes.get(alias) == state.version:
                    self.pending.pop(alias, None)
                    continue
                if alias not in in_use or await self._load(state.version, retry_failed):
                    routes[alias] = state.version
                    self.pending.pop(alias, None)
                    logger.info("alias %s -> %s", alias, state.version)
                else:
                    self.pending[alias] = PendingMove(state.version, self._errors.get(state.version))
            for alias in set(self.pending) - set(aliases):
                del self.pending[alias]
            self.routes = routes
            self._versions.update(routes.values())
            canary_routed = routes.get(CANARY) == share_version
            self.canary_percent = share if share_version and canary_routed else 0.0
            default_is_version = self.default_model not in aliases and self.default_model != PRODUCTION
            # a version as the default is loaded up front, like an alias in use
            if default_is_version and self._loaded_default != self.default_model and await self._load(self.default_model, retry_failed):
                self._loaded_default = self.default_model
                self._versions.add(self.default_model)

    async def _load(self, version: str, retry_failed: bool) -> bool:
        failed_at = self._failed.get(version)
        if failed_at is not None and not retry_failed and time.monotonic() - failed_at < RETRY_FAILED_LOAD_S:
            return False
        try:
            await self.engine.load(version)
        except EngineError as exc:
            self._failed[version] = time.monotonic()
            self._errors[version] = str(exc)
            self.load_failed(version)
            logger.error("cannot load %s: %s; requests keep the version they had", version, exc)
            return False
        self._failed.pop(version, None)
        self._errors.pop(version, None)
        return True

    async def watch(self, interval_s: float) -> None:
        """Refresh forever, every ``interval_s``; a registry that cannot be read leaves the routes as they are."""
        while True:
            try:
                await self.refresh()
            except (RegistryError, StoreError, OSError) as exc:
                logger.warning("cannot read the registry's aliases (%s); routes unchanged, trying again in %gs", exc, interval_s)
            except Exception:  # keep following the registry whatever one read raised; the traceback is logged
                logger.exception("reading the registry's aliases failed; routes unchanged")
            await asyncio.sleep(interval_s)

    # Answering requests ----------------------------------------------------------------

    async def resolve(self, model: str | None, user: str | None) -> Route:
        """The version for a request naming ``model`` (an alias or a version; the default when None)."""
        name = model or self.default_model
        if name in self.routes:
            self._requested.add(name)
            version = self.routes[name]
            if name == PRODUCTION and self.canary_percent:
                version = self._split(version, user)
            return Route(version, name)
        if name in self.pending:
            pending = self.pending[name]
            raise ModelUnavailable(f"alias {name!r} points to {pending.version}, which is not loaded yet" + (f": {pending.error}" if pending.error else ""))
        if name in self._versions:
            return Route(name, None)
        if await asyncio.to_thread(self._published, name):
            self._versions.add(name)
            return Route(name, None)
        if name == PRODUCTION:
            raise UnknownModel(f"no version is deployed yet in {self.registry.describe()} (alias 'production' is unset); deploy one with `fragua deploy`")
        raise UnknownModel(f"the model {name!r} does not exist: name an alias ({', '.join(sorted(self.routes)) or 'none yet'}) or a published version")

    def _published(self, name: str) -> bool:
        try:
            self.registry.manifest(name)
        except RegistryError:  # no such version, or a name with path tricks (InvalidName)
            return False
        except StoreError as exc:
            raise ModelUnavailable(f"cannot read the registry to look up {name!r}: {exc}") from exc
        return True

    def _split(self, production_version: str, user: str | None) -> str:
        canary = self.routes.get(CANARY)
        if canary is None:
            return production_version
        return pick_version(TrafficSplit(production_version, canary, self.canary_percent), user, self.draw) or production_version

    # State -------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the default model's version is loaded."""
        version = self.routes.get(self.default_model) or self._loaded_default
        return version is not None and version in self.engine.stats().loaded

    def describe(self) -> dict[str, Any]:
        return {
            "default_model": self.default_model,
            "routes": dict(sorted(self.routes.items())),
            "pending": {alias: {"version": move.version, "error": move.error} for alias, move in sorted(self.pending.items())},
            "canary_percent": self.canary_percent,
            "ready": self.ready(),
        }

    async def published(self) -> list[VersionManifest]:
        """Every published version, oldest first (and remembered, so naming one costs no registry read)."""
        manifests = await asyncio.to_thread(self.registry.versions)
        self._versions.update(m.version for m in manifests)
        return manifests
