"""Stacks written as text: `"FindSinks(); VAR(p=0.6, rho=0.8)"`, for the command line and stack files.

A spec is members separated by `;` (or `+`), each a name with optional keyword
arguments in Python literal syntax (`VAR`, `VAR()` and `VAR(rho=0.8)` all
parse). Names are sinklens' class names, ignoring case, `-` and `_`
(`find-sinks`, `FindSinks` and `findsinks` are one member). The empty spec, `baseline` and
`none` are the empty stack. A member that reads the sinks FindSinks finds (VAR,
SinkAblation, RandomAblation, HeadScores) gets a `FindSinks` of its own
convention in front when the spec has none, so `"VAR"` means what the paper
means. Every problem is a `ParameterError` that names the spec and the fix,
raised before any model is loaded.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

from sinklens.errors import ParameterError

# spec name (lower case, no - or _) -> the attribute of sinklens.interventions
MEMBERS = {
    "findsinks": "FindSinks",
    "var": "VAR",
    "pai": "PAI",
    "vcd": "VCD",
    "sinkablation": "SinkAblation",
    "randomablation": "RandomAblation",
    "headscores": "HeadScores",
    "vaf": "VAF",
    "spin": "SPIN",
    "hgai": "HGAI",
    "testtimeregisters": "TestTimeRegisters",
}
# members that read ctx.sinks: they need a FindSinks before them
_READS_SINKS = frozenset({"VAR", "SinkAblation", "RandomAblation", "HeadScores"})
_EMPTY = frozenset({"", "baseline", "none"})
_MEMBER = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_stack(spec: str) -> list[Any]:
    """The interventions a spec names, in order (FindSinks added in front where a member needs it)."""
    if spec.strip().lower() in _EMPTY:
        return []
    members = [_member(part, spec) for part in _split(spec)]
    names = [type(member).__name__ for member in members]
    needs = [member for member in members if type(member).__name__ in _READS_SINKS]
    if needs and "FindSinks" not in names:
        from sinklens import interventions

        convention = getattr(needs[0], "convention", "paper")
        members.insert(0, interventions.FindSinks(convention=convention))
    return members


def describe(members: list[Any]) -> str:
    """A spec that parses back to `members`: each member with the fields that differ from its defaults."""
    if not members:
        return ""
    parts = []
    for member in members:
        changed = [f"{f.name}={getattr(member, f.name)!r}" for f in dataclasses.fields(member)
                   if f.init and f.default is not dataclasses.MISSING and getattr(member, f.name) != f.default]  # fmt: skip
        parts.append(type(member).__name__ + (f"({', '.join(changed)})" if changed else ""))
    return "; ".join(parts)


def _split(spec: str) -> list[str]:
    """The members of a spec: split at `;` or `+` outside parentheses."""
    parts, depth, current = [], 0, []
    for char in spec:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ParameterError(f"stack spec {spec!r} closes a parenthesis it never opened")
        if char in ";+" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ParameterError(f"stack spec {spec!r} leaves a parenthesis open")
    parts.append("".join(current))
    return parts


def _member(text: str, spec: str) -> Any:
    from sinklens import interventions

    match = _MEMBER.match(text)
    if match is None:
        shown = text.strip() or "an empty member (two separators in a row, or one at an end)"
        raise ParameterError(f"stack spec {spec!r}: could not read {shown!r}; write NAME or NAME(key=value, ...)")
    name, arguments = match.group(1), match.group(2)
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MEMBERS or not hasattr(interventions, MEMBERS[key]):
        known = ", ".join(MEMBERS[k] for k in MEMBERS if hasattr(interventions, MEMBERS[k]))
        raise ParameterError(f"stack spec {spec!r}: unknown member {name!r}; the members are {known}")
    cls = getattr(interventions, MEMBERS[key])
    kwargs = _arguments(arguments or "", cls, spec)
    try:
        return cls(**kwargs)
    except TypeError as e:
        fields = ", ".join(f.name for f in dataclasses.fields(cls) if f.init)
        raise ParameterError(f"stack spec {spec!r}: {cls.__name__} takes {fields} ({e})") from e


def _arguments(text: str, cls: type, spec: str) -> dict[str, Any]:
    """`key=value, ...` as keyword arguments, the values Python literals (numbers, strings, lists, None)."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as e:
        raise ParameterError(f"stack spec {spec!r}: could not read {cls.__name__}({text}); write key=value, ... "
                             f"({e.msg})") from e  # fmt: skip
    assert isinstance(call, ast.Call)
    if call.args:
        raise ParameterError(f"stack spec {spec!r}: {cls.__name__} takes keyword arguments only (key=value)")
    kwargs = {}
    for keyword in call.keywords:
        try:
            value = ast.literal_eval(keyword.value)
        except ValueError as e:
            raise ParameterError(
                f"stack spec {spec!r}: {cls.__name__}'s {keyword.arg} must be a literal (a number, a string, a "
                "list, True/False/None)"
            ) from e
        kwargs[keyword.arg] = tuple(value) if isinstance(value, list) else value
    return kwargs
