"""A setting's value as SQL, both ways: the constants of SET and set_config read from the parse
tree, and `SettingChange.as_sql()`, the statement that re-applies a change exactly.

Owns how PostgreSQL spells a value: a SET argument as it was written (an identifier is cut to 63
bytes, a string is not), a search_path list split the server's way, booleans as boolin reads
them, names quoted where a keyword would clash, string literals safe whatever
standard_conforming_strings is. Pure: values in, text out.

Must not: parse SQL text itself, decide anything, or cache (router.sql.analysis caches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pglast import keywords as _keywords

from router.sql.tree import Node, node_strings

__all__ = [
    "Dynamic",
    "SettingChange",
    "bool_constant",
    "literal",
    "render_config_value",
    "render_set_arg",
    "text_constant",
]


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One setting changed by the text.

    `value` is a SQL fragment, not the setting's string: `SET {name} TO {value}` re-applies it
    exactly (`a, "B c"` for a search_path list, `'UTC'`, `8`, `on`). None means back to the default
    (RESET x, SET x TO DEFAULT, set_config(x, NULL, ...)). `local` means SET LOCAL or
    set_config(..., true): it lasts until the end of the transaction. `as_sql()` builds the statement
    with the name quoted where it needs to be."""

    name: str
    value: str | None
    local: bool

    def as_sql(self) -> str:
        name = ".".join(_name_part(part) for part in self.name.split("."))
        scope = "LOCAL " if self.local else ""
        if self.value is None:
            return f"SET {scope}{name} TO DEFAULT"
        return f"SET {scope}{name} TO {self.value}"


class Dynamic(Exception):
    """A value the router cannot know from the text alone."""


def text_constant(node: Node) -> str | None:
    """A text argument: 'x', 'x'::text, NULL; else Dynamic."""
    if "TypeCast" in node:
        cast = node["TypeCast"]
        type_name = cast.get("typeName", {})
        if _type_name(type_name) not in ("text", "varchar") or "typmods" in type_name:
            raise Dynamic
        return text_constant(cast.get("arg", {}))
    constant = node.get("A_Const")
    if constant is None:
        raise Dynamic
    if constant.get("isnull", False):
        return None
    if "sval" not in constant:
        raise Dynamic
    return str(constant["sval"].get("sval", ""))


def bool_constant(node: Node) -> bool:
    """A boolean argument: true, 'on', 'yes'::bool, 1::boolean, NULL (false); else Dynamic."""
    cast = node.get("TypeCast")
    if cast is not None:
        if _type_name(cast.get("typeName", {})) != "bool":
            raise Dynamic
        inner = cast.get("arg", {}).get("A_Const", {})
        if "ival" in inner:  # 1::boolean
            return bool(inner["ival"].get("ival", 0))
        return bool_constant(cast.get("arg", {}))
    constant = node.get("A_Const")
    if constant is None:
        raise Dynamic
    if constant.get("isnull", False):
        return False
    if "boolval" in constant:
        return bool(constant["boolval"].get("boolval", False))
    if "sval" in constant:
        return _parse_bool(str(constant["sval"].get("sval", "")))
    raise Dynamic


def _type_name(type_name: Node) -> str:
    names = node_strings(type_name.get("names", []))
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1]
    return ""


# The spellings PostgreSQL's boolin accepts (any case, surrounded by white space).
_TRUE_WORDS: Final = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})
_SCANNER_SPACE: Final = " \t\n\r\v\f"


def _parse_bool(text: str) -> bool:
    word = text.strip(_SCANNER_SPACE).lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise Dynamic  # the call fails; whether the router should care is not ours to say


# --- rendering values back to SQL ------------------------------------------------------------------

# Settings whose SET arguments the server quotes as identifiers and joins into one list.
_IDENTIFIER_LIST_SETTINGS: Final = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}
)
_BARE_WORD: Final = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
# In a SET value, any identifier or keyword but the reserved ones, which are words too: ON, TRUE, FALSE.
_RESERVED_IN_VALUE: Final = frozenset(_keywords.RESERVED_KEYWORDS) - {"on", "true", "false"}
# In a setting name (ColId), reserved and type-or-function keywords need quotes.
_RESERVED_IN_NAME: Final = frozenset(_keywords.RESERVED_KEYWORDS | _keywords.TYPE_FUNC_NAME_KEYWORDS)
_NAMEDATALEN: Final = 64


def render_set_arg(node: Node, source: bytes) -> str:
    """One argument of SET as the text had it: the parser turns `x`, `"x"` and `'x'` alike into the
    string x, and the server does not tell them apart either, but an identifier is cut to 63 bytes
    and cannot be empty, so each is rendered in the form it was written in."""
    constant = node.get("A_Const")
    if constant is None:  # SET TIME ZONE INTERVAL '...' HOUR TO MINUTE: normalised by the server
        raise Dynamic
    if "ival" in constant:
        return str(int(constant["ival"].get("ival", 0)))
    if "fval" in constant:
        return str(constant["fval"]["fval"])
    if "sval" in constant:
        text = str(constant["sval"].get("sval", ""))
        if _written_as_string(source, int(constant.get("location", -1))):
            return literal(text)
        return _identifier(text)
    raise Dynamic


def _written_as_string(source: bytes, location: int) -> bool:
    if not 0 <= location < len(source):
        return True  # unknown: a literal is right for any text
    head = source[location : location + 3].lower()
    return head[:1] in (b"'", b"$") or head[:2] == b"e'" or head == b"u&'"


def render_config_value(name: str, raw: str) -> str:
    """The SET fragment for a value given to set_config as a plain string. For search_path and its
    kind, SET would quote a single string as one identifier, so the list is split the server's way
    and each element rendered as an identifier."""
    if name not in _IDENTIFIER_LIST_SETTINGS:
        return literal(raw)
    elements = _split_identifiers(raw)
    if elements is None:  # the server rejects it and the call fails
        raise Dynamic
    if not elements:
        return "''"
    return ", ".join(_identifier(element) if element else "''" for element in elements)


def _split_identifiers(raw: str) -> list[str] | None:
    """PostgreSQL's SplitIdentifierString(raw, ','): unquoted names are lower-cased (ASCII only),
    "quoted" ones keep their case with "" for a quote, all are cut to 63 bytes; None if invalid."""
    names: list[str] = []
    end = len(raw)
    i = _skip_space(raw, 0)
    if i == end:
        return names
    while True:
        if raw[i] == '"':
            parts: list[str] = []
            start = i + 1
            while True:
                close = raw.find('"', start)
                if close < 0:
                    return None
                if raw.startswith('"', close + 1):
                    parts.append(raw[start : close + 1])
                    start = close + 2
                    continue
                parts.append(raw[start:close])
                i = close + 1
                break
            name = "".join(parts)
        else:
            start = i
            while i < end and raw[i] != "," and raw[i] not in _SCANNER_SPACE:
                i += 1
            if i == start:
                return None
            name = _ascii_lower(raw[start:i])
        names.append(_truncate_identifier(name))
        i = _skip_space(raw, i)
        if i == end:
            return names
        if raw[i] != ",":
            return None
        i = _skip_space(raw, i + 1)
        if i == end:
            return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SCANNER_SPACE:
        i += 1
    return i


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _truncate_identifier(name: str) -> str:
    encoded = name.encode("utf-8")
    if len(encoded) < _NAMEDATALEN:
        return name
    return encoded[: _NAMEDATALEN - 1].decode("utf-8", errors="ignore")  # never splits a character


def _identifier(text: str) -> str:
    """`text` as an identifier in a SET value (not empty, at most 63 bytes: the caller's guarantee)."""
    if _BARE_WORD.fullmatch(text) and text not in _RESERVED_IN_VALUE:
        return text
    return '"' + text.replace('"', '""') + '"'


def _name_part(text: str) -> str:
    if _BARE_WORD.fullmatch(text) and text not in _RESERVED_IN_NAME:
        return text
    return '"' + text.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A string literal whatever standard_conforming_strings is: E'' when there are backslashes."""
    quoted = text.replace("'", "''")
    if "\\" in text:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"
