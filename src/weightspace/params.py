"""One declaration per parameter, and everything derived from it.

A parameter is declared once, as a ``Decl``: its type, the values it allows (a check and
the words an error shows) and its help text. An entry point's parameters are one typed,
frozen dataclass whose fields are made by calling a ``Decl`` with that entry point's
default (``epochs: int = EPOCHS(200)``); a field without a default is required.
From the dataclass come the parsing of ``--name value`` argv, the one-line errors, the
MLproject entry and the parameter tables of docs/parameters.md (``scripts/gen_mlproject.py``; a test
fails when the committed files differ from what it generates).
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

    def __call__(self, default: Any = dataclasses.MISSING) -> Any:
        """A dataclass field of this parameter, with an entry point's own default (none: required)."""
        return field(default=default, metadata={"decl": self})

    def parse(self, name: str, raw: Any) -> Any:
        """Convert one raw (string) value and check it; raise ParamError naming the parameter."""
        text = str(raw).strip()
        try:
            if self.kind is int:
                value: Any = _as_int(text)
            elif self.kind is float:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = text
        except OverflowError:
            raise ParamError(self._out_of_range(name, raw)) from None
        except ValueError:
            raise ParamError(f"parameter '{name}': expected {self.allowed}, got {show(raw)}") from None
        if self.most is not None and value > self.most:
            raise ParamError(self._out_of_range(name, raw))
        if not self.check(value):
            raise ParamError(f"parameter '{name}': expected {self.allowed}, got {show(raw)}")
        return value


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


# -- reading a dataclass of declarations -------------------------------------------------------

def declared(cls: type) -> list[dataclasses.Field]:
    """The declared fields of a parameter dataclass, the entry point's own ones first."""
    own = set(cls.__dict__.get("__annotations__", {}))
    fs = [f for f in fields(cls) if "decl" in f.metadata]
    return [f for f in fs if f.name in own] + [f for f in fs if f.name not in own]


def decl_of(f: dataclasses.Field) -> Decl:
    return f.metadata["decl"]


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING


def names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in declared(cls))


def parse(cls: type, raw: Mapping[str, Any], entry: str) -> Any:
    """Validate raw ``name -> string`` values into an instance of ``cls`` (defaults for the rest)."""
    fs = {f.name: f for f in declared(cls)}
    unknown = [k for k in raw if k not in fs]
    if unknown:
        raise ParamError(f"unknown parameter '{unknown[0]}' for entry point {entry}; allowed: {', '.join(fs)}")
    values = {}
    for name, f in fs.items():
        if name in raw:
            values[name] = decl_of(f).parse(name, raw[name])
        elif required(f):
            raise ParamError(f"parameter '{name}': required by entry point {entry} ({decl_of(f).allowed})")
    return cls(**values)


def parse_argv(argv: list[str], cls: type, entry: str) -> dict[str, str]:
    """``--name value`` (or ``--name=value``) pairs, as MLproject commands pass them, into raw strings."""
    allowed = names(cls)
    out: dict[str, str] = {}
    it = iter(argv)
    for tok in it:
        if not tok.startswith("--"):
            raise ParamError(f"entry point {entry}: unexpected argument {tok!r}; parameters are --name value")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ParamError(f"parameter '{name}': missing value")
        if name not in allowed:
            raise ParamError(f"unknown parameter '{name}' for entry point {entry}; allowed: {', '.join(allowed)}")
        out[name] = value
    return out


def as_strings(params: Any) -> dict[str, str]:
    """A parameter dataclass as MLflow stores params (strings; floats as repr)."""
    return {f.name: fmt(getattr(params, f.name)) for f in declared(type(params))}


def fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# -- what is generated from the declarations --------------------------------------------------

def mlproject_entry(name: str, cls: type, module: str) -> str:
    """One MLproject entry point, in the layout ``scripts/gen_mlproject.py`` writes."""
    lines = [f"  {name}:", "    parameters:"]
    for f in declared(cls):
        d = decl_of(f)
        kind = MLPROJECT_TYPES[d.kind]
        if required(f):
            lines.append(f"      {f.name}: {{type: {kind}}}")
        else:
            lines.append(f"      {f.name}: {{type: {kind}, default: {_yaml_scalar(fmt(f.default))}}}")
    args = " ".join(f"--{f.name} {{{f.name}}}" for f in declared(cls))
    lines.append(f'    command: "python -m {module} {args}"')
    return "\n".join(lines)


def _yaml_scalar(text: str) -> str:
    """A default as YAML reads it back unchanged: bare when plain, else double-quoted.

    Inside MLproject's flow mappings a bare ``0,10,50`` is cut at the first comma.
    """
    return text if re.fullmatch(r"[A-Za-z0-9_.+-]+", text) else json.dumps(text)


def markdown_table(cls: type) -> str:
    """The docs table of one entry point's parameters."""
    rows = ["| parameter | default | allowed | what it does |", "|---|---|---|---|"]
    for f in declared(cls):
        d = decl_of(f)
        default = "(required)" if required(f) else f"`{fmt(f.default)}`" if f.default != "" else '`""`'
        rows.append(f"| `{f.name}` | {default} | {d.allowed} | {d.help} |")
    return "\n".join(rows)
