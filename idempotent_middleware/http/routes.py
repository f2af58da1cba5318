"""Which requests are covered, and with which options: methods, path globs, per-route rules."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..config import IdempotencyConfig, RouteOptions
from .request import normalise_method


@dataclass(frozen=True, slots=True)
class Rule:
    """The options in force for one method and path."""

    key_required: bool
    expires_after_seconds: int


class RouteTable:
    """The configuration's coverage, compiled once; nothing derived from a request is cached
    (a cache keyed by the raw path let unauthenticated clients pin hundreds of MiB per worker).
    """

    __slots__ = (
        "_exclude",
        "_include",
        "_patterns",
        "_routable_methods",
        "_routes",
        "default",
        "method_spellings",
        "methods",
    )

    def __init__(self, config: IdempotencyConfig) -> None:
        self.methods = frozenset(normalise_method(m) for m in config.methods)
        self.default = Rule(config.raise_on_no_idempotency_key, config.expires_after_seconds)
        self._exclude = tuple(_glob(p) for p in config.exclude_paths)
        self._include = (
            None if config.include_paths is None else tuple(_glob(p) for p in config.include_paths)
        )
        self._routes: tuple[tuple[_Glob, Rule | None, frozenset[str]], ...] = tuple(
            (_glob(pattern), *self._route_rule(config, options))
            for pattern, options in config.routes.items()
        )
        #: The configured patterns, for event labels: ``routes`` first, then ``include_paths``.
        self._patterns = tuple(
            (_glob(p), p) for p in (*config.routes, *(config.include_paths or ()))
        )
        #: Every method some path may take: any other is passed through before the path is read.
        self._routable_methods = self.methods.union(*(methods for _, _, methods in self._routes))
        #: Those methods and their lower-case spellings (where upper-casing gives the method
        #: back): ``post`` is POST, and an adapter tells without upper-casing the usual two.
        self.method_spellings = self._routable_methods.union(
            m.lower() for m in self._routable_methods if m.lower().upper() == m
        )

    @property
    def has_path_rules(self) -> bool:
        return bool(self._exclude or self._include is not None or self._routes)

    def rule(self, method: str, path: str) -> Rule | None:
        """``method`` is normalised. Exclusions first, then inclusions, then the first route
        whose pattern matches (in ``routes`` order), else the middleware-wide rule."""
        if _matches_any(self._exclude, path):
            return None
        if self._include is not None and not _matches_any(self._include, path):
            return None
        for match, rule, methods in self._routes:
            if match(path):
                return rule if method in methods else None
        return self.default if method in self.methods else None

    def pattern(self, path: str) -> str | None:
        """The configured pattern covering ``path`` (a ``routes`` key, else an
        ``include_paths`` glob), or None: a bounded label, never the path itself."""
        for match, pattern in self._patterns:
            if match(path):
                return pattern
        return None

    def for_options(self, config: IdempotencyConfig, options: RouteOptions) -> Rule | None:
        """The rule of a view that carries its own options (a framework decorator)."""
        return self._route_rule(config, options)[0]

    def takes(self, options: RouteOptions, method: str) -> bool:
        """Whether a view with ``options`` covers ``method`` (normalised)."""
        if not options.enabled:
            return False
        if options.methods is None:
            return method in self.methods
        return method in frozenset(normalise_method(m) for m in options.methods)

    def routable(self, method: str) -> bool:
        """Whether any path takes ``method`` (normalised): a GET never costs a path match."""
        return method in self._routable_methods

    def _route_rule(
        self, config: IdempotencyConfig, options: RouteOptions
    ) -> tuple[Rule | None, frozenset[str]]:
        """A route's rule and methods, computed once (a disabled route takes no method)."""
        if not options.enabled:
            return None, frozenset()
        methods = (
            self.methods
            if options.methods is None
            else frozenset(normalise_method(m) for m in options.methods)
        )
        rule = Rule(
            config.raise_on_no_idempotency_key
            if options.raise_on_no_idempotency_key is None
            else options.raise_on_no_idempotency_key,
            config.expires_after_seconds
            if options.expires_after_seconds is None
            else options.expires_after_seconds,
        )
        return rule, methods


class PassFilter:
    """What an adapter needs to pass a request through before it builds anything from it:
    the method spellings any path takes, the one rule every path has (None when paths have
    rules of their own) and the key header whose absence alone means "pass through" (None
    unless the key comes from a header, one rule covers every path and it requires no key).
    """

    __slots__ = ("header", "rule", "spellings")

    def __init__(self, routes: RouteTable, header: bytes | None) -> None:
        self.spellings = routes.method_spellings
        self.rule = None if routes.has_path_rules else routes.default
        self.header = None if self.rule is None or self.rule.key_required else header


_Glob = Callable[[str], re.Match[str] | None]


def _glob(pattern: str) -> _Glob:
    """A shell-style path pattern, compiled as ``fnmatch.fnmatchcase`` would compile it."""
    return re.compile(fnmatch.translate(pattern)).match


def _matches_any(patterns: tuple[_Glob, ...], path: str) -> bool:
    # A plain loop: any() over a generator costs three times as much on this path.
    for match in patterns:  # noqa: SIM110
        if match(path):
            return True
    return False
