"""One declaration per parameter, and everything derived from it.

A parameter is declared once, as a ``Decl``: its type, the values it allows (a check and
the words an error shows) and its help text. A dataclass field made by calling the ``Decl``
with a default (``epochs: int = EPOCHS(200)``) gives it its one default: the training
parameters are the fields of ``config.TrainConfig``, an entry point's own ones the fields of
its options type. An ``Entry`` says which of them an entry point takes, in MLproject order,
and where it differs: the ones it requires and the defaults it overrides. From an ``Entry``
come the parsing of ``--name value`` argv, the one-line errors, the MLproject entry and the
parameter table of docs/parameters.md (``scripts/gen_mlproject.py``; a test fails when the
committed files differ from what it generates).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping


class ParamError(ValueError):
    """A user-supplied parameter is invalid. The message is one line and names it."""


def one_line(e: BaseException) -> str:
    """The first line of an error; our own error types speak for themselves, others get their class."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    text = str(e).strip().splitlines()
    msg = text[0] if text else e.__class__.__name__
    own = isinstance(e, (ParamError, ConnectionError, FloatingPointError, TimeoutError)) or \
        e.__class__.__module__.startswith("weightspace")
    return msg if own else f"{e.__class__.__name__}: {msg}"


MLPROJECT_TYPES = {int: "int", float: "float", str: "string"}
REQUIRED = dataclasses.MISSING


@dataclass(frozen=True)
class Decl:
    """What a parameter is: its type, the values it allows and what it means.

    ``most``: an integer's largest allowed value, so that a larger one is named out of range.
    """

    kind: type
    allowed: str
    help: str
    check: Callable[[Any], bool] = field(default=lambda v: True, compare=False)
    most: int | None = None

    def __call__(self, default: Any = REQUIRED) -> Any:
        """The dataclass field of this parameter, with its default (none: required)."""
        return field(default=default, metadata={"decl": self})

    def parse(self, name: str, raw: Any) -> Any:
        """One value, from its text or already typed; raise ParamError naming the parameter.

        A value of the declared type is only checked, so a configuration derived from parsed
        values is never written out and read back.
        """
        typed = self.kind is not str and type(raw) is self.kind
        try:
            value = raw if typed else self._convert(str(raw).strip())
            if self.kind is float and not math.isfinite(value):
                raise ValueError
            if self.kind is int and abs(value) >= 2**62:
                raise OverflowError
        except OverflowError:
            raise ParamError(self._out_of_range(name, raw)) from None
        except ValueError:
            raise ParamError(f"parameter '{name}': expected {self.allowed}, got {show(raw)}") from None
        if self.most is not None and value > self.most:
            raise ParamError(self._out_of_range(name, raw))
        if not self.check(value):
            raise ParamError(f"parameter '{name}': expected {self.allowed}, got {show(raw)}")
        return value

    def _convert(self, text: str) -> Any:
        return _as_int(text) if self.kind is int else float(text) if self.kind is float else text

    def _out_of_range(self, name: str, raw: Any) -> str:
        most = f"the largest allowed is {self.most}" if self.most is not None else "too large for an integer"
        return f"parameter '{name}': {show(raw)} is out of range ({most}); expected {self.allowed}"


def _as_int(text: str) -> int:
    if text.lstrip("+-").isdigit():
        return int(text)
    f = float(text)  # 1e3 style only when it is an exact integer
    if not (math.isfinite(f) and f == int(f)):
        raise ValueError(text)
    if abs(f) >= 2**62:
        raise OverflowError(text)
    return int(f)


def show(raw: Any) -> str:
    s = str(raw)
    return repr(s if len(s) <= 40 else s[:37] + "...")


def one_of(*values: str, help: str, extra: str = "") -> Decl:
    return Decl(str, f"one of {', '.join(values)}{extra}", help, lambda v: v in values)


def int_range(lo: int, hi: int, help: str, allowed: str | None = None) -> Decl:
    return Decl(int, allowed or f"an integer from {lo} to {hi}", help, lambda v: lo <= v, most=hi)


def declared(cls: type) -> list[dataclasses.Field]:
    """The declared fields of a dataclass, in its order."""
    return [f for f in fields(cls) if "decl" in f.metadata]


def decl_of(f: dataclasses.Field) -> Decl:
    return f.metadata["decl"]


def names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in declared(cls))


# -- an entry point's parameters ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """An entry point's parameters: declared fields of ``sources``, in MLproject order (``order``).

    Each keeps its declared default except where the entry point requires it (``required``) or
    sets its own (``defaults``).
    """

    name: str
    summary: str
    sources: tuple[type, ...]
    order: tuple[str, ...]
    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, tuple[Decl, Any]]:
        """name -> (declaration, this entry point's default or REQUIRED), in MLproject order."""
        found = {f.name: f for cls in reversed(self.sources) for f in declared(cls)}
        def default(n: str) -> Any:
            return REQUIRED if n in self.required else self.defaults.get(n, found[n].default)

        return {n: (decl_of(found[n]), default(n)) for n in self.order}


def parse(entry: Entry, argv: list[str]) -> dict[str, Any]:
    """An entry point's argv into typed values, defaults filled in, in MLproject order."""
    return parse_values(entry, parse_argv(argv, entry))


def parse_values(entry: Entry, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Raw ``name -> value`` pairs into typed values; ParamError names an unknown or missing one."""
    params = entry.params()
    unknown = [k for k in raw if k not in params]
    if unknown:
        raise ParamError(f"unknown parameter '{unknown[0]}' for entry point {entry.name}; "
                         f"allowed: {', '.join(params)}")
    values = {}
    for name, (decl, default) in params.items():
        if name in raw:
            values[name] = decl.parse(name, raw[name])
        elif default is REQUIRED:
            raise ParamError(f"parameter '{name}': required by entry point {entry.name} ({decl.allowed})")
        else:
            values[name] = default
    return values


def parse_argv(argv: list[str], entry: Entry) -> dict[str, str]:
    """``--name value`` (or ``--name=value``) pairs, as MLproject commands pass them, into raw strings."""
    allowed = entry.order
    out: dict[str, str] = {}
    it = iter(argv)
    for tok in it:
        if not tok.startswith("--"):
            raise ParamError(f"entry point {entry.name}: unexpected argument {tok!r}; "
                             "parameters are --name value")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ParamError(f"parameter '{name}': missing value")
        if name not in allowed:
            raise ParamError(f"unknown parameter '{name}' for entry point {entry.name}; "
                             f"allowed: {', '.join(allowed)}")
        out[name] = value
    return out


def pick(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that are fields of ``cls``."""
    own = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in own}


def as_strings(values: Mapping[str, Any] | Any) -> dict[str, str]:
    """Parameter values (a mapping, or a dataclass of declared fields) as MLflow stores them."""
    if dataclasses.is_dataclass(values):
        values = {f.name: getattr(values, f.name) for f in declared(type(values))}
    return {k: fmt(v) for k, v in values.items()}


def fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# -- what is generated from the declarations --------------------------------------------------

def mlproject_entry(entry: Entry, module: str) -> str:
    """One MLproject entry point, in the layout ``scripts/gen_mlproject.py`` writes."""
    lines = [f"  {entry.name}:", "    parameters:"]
    for name, (d, default) in entry.params().items():
        kind = MLPROJECT_TYPES[d.kind]
        if default is REQUIRED:
            lines.append(f"      {name}: {{type: {kind}}}")
        else:
            lines.append(f"      {name}: {{type: {kind}, default: {_yaml_scalar(fmt(default))}}}")
    args = " ".join(f"--{n} {{{n}}}" for n in entry.order)
    lines.append(f'    command: "python -m {module} {args}"')
    return "\n".join(lines)


def _yaml_scalar(text: str) -> str:
    """A default as YAML reads it back unchanged: bare when plain, else double-quoted.

    Inside MLproject's flow mappings a bare ``0,10,50`` is cut at the first comma.
    """
    return text if re.fullmatch(r"[A-Za-z0-9_.+-]+", text) else json.dumps(text)


def markdown_table(entry: Entry) -> str:
    """The docs table of one entry point's parameters."""
    rows = ["| parameter | default | allowed | what it does |", "|---|---|---|---|"]
    for name, (d, default) in entry.params().items():
        shown = "(required)" if default is REQUIRED else f"`{fmt(default)}`" if default != "" else '`""`'
        rows.append(f"| `{name}` | {shown} | {d.allowed} | {d.help} |")
    return "\n".join(rows)
