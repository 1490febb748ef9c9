"""Parser for the QIR text form (see printer.py). Errors carry line and column."""
from __future__ import annotations

import json
import math
import re

import torch

from .graph import Graph, Node, Ref
from .printer import FORMAT_VERSION
from .types import NAME_DTYPES, OTHER_TYPES, TensorType, parse_dim


class QIRParseError(ValueError):
    def __init__(self, msg: str, line: int, col: int, text_line: str = ""):
        self.line, self.col = line, col
        caret = f"\n  {text_line}\n  {' ' * (col - 1)}^" if text_line else ""
        super().__init__(f"QIR parse error at line {line}, column {col}: {msg}{caret}")


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


class _Cursor:
    def __init__(self, text: str, line_no: int):
        self.text, self.pos, self.line_no = text, 0, line_no

    def error(self, msg: str) -> QIRParseError:
        return QIRParseError(msg, self.line_no, self.pos + 1, self.text)

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def eat(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.eat(s):
            found = self.text[self.pos : self.pos + 12] or "end of line"
            raise self.error(f"expected {s!r}, found {found!r}")

    def match(self, rx: re.Pattern, what: str) -> str:
        self.ws()
        m = rx.match(self.text, self.pos)
        if not m:
            found = self.text[self.pos : self.pos + 12] or "end of line"
            raise self.error(f"expected {what}, found {found!r}")
        self.pos = m.end()
        return m.group(0)

    def at_end(self) -> bool:
        self.ws()
        return self.pos >= len(self.text)

    # -- values ---------------------------------------------------------------------------
    def value(self):
        self.ws()
        c = self.text[self.pos : self.pos + 1]
        if c == "%":
            self.pos += 1
            return Ref(self.match(_NAME, "a value name after %"))
        if c == '"':
            return json.loads(self.match(_STRING, "a string"))
        if c == "[":
            return self._seq("[", "]")
        if c == "(":
            return tuple(self._seq("(", ")"))
        if c == "{":
            return self.dict_value()
        if self.eat("..."):
            return Ellipsis
        if c == "-" or c.isdigit() or c == "." or self.text.startswith(("inf", "nan"), self.pos):
            tok = self.match(_NUMBER, "a number")
            if tok in ("inf", "-inf", "nan") or any(ch in tok for ch in ".eE"):
                return math.nan if tok == "nan" else float(tok)
            return int(tok)
        start = self.pos
        word = self.match(_IDENT, "a value")
        if word in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[word]
        if word.startswith("dtype."):
            name = word[6:]
            if name not in NAME_DTYPES:
                self.pos = start
                raise self.error(f"unknown dtype {name!r}")
            return NAME_DTYPES[name]
        if word.startswith(("layout.", "memory_format.")):
            obj = getattr(torch, word.split(".", 1)[1], None)
            if not isinstance(obj, (torch.layout, torch.memory_format)):
                self.pos = start
                raise self.error(f"unknown enum {word!r}")
            return obj
        if word == "device":
            self.expect("(")
            s = json.loads(self.match(_STRING, "a device string"))
            self.expect(")")
            return torch.device(s)
        if word == "slice":
            a, b, c2 = self._seq("(", ")")
            return slice(a, b, c2)
        self.pos = start
        raise self.error(f"unknown value {word!r}")

    def _seq(self, open_: str, close: str) -> list:
        self.expect(open_)
        out = []
        while not self.eat(close):
            out.append(self.value())
            if not self.eat(","):
                self.expect(close)
                break
        return out

    def dict_value(self) -> dict:
        self.expect("{")
        out = {}
        while not self.eat("}"):
            self.ws()
            key = json.loads(self.match(_STRING, "a key")) if self.peek('"') else self.match(_NAME, "a key")
            self.expect(":")
            out[key] = self.value()
            if not self.eat(","):
                self.expect("}")
                break
        return out

    def call_args(self) -> tuple[tuple, dict]:
        self.expect("(")
        args, kwargs = [], {}
        while not self.eat(")"):
            save = self.pos
            self.ws()
            m = _NAME.match(self.text, self.pos)
            if m and self.text[m.end() : m.end() + 1] == "=":
                self.pos = m.end() + 1
                kwargs[m.group(0)] = self.value()
            else:
                self.pos = save
                if kwargs:
                    raise self.error("positional argument after keyword argument")
                args.append(self.value())
            if not self.eat(","):
                self.expect(")")
                break
        return tuple(args), kwargs

    def qtype(self):
        self.ws()
        word = self.match(_NAME, "a type (e.g. f32[2, s0] or any)")
        if word in OTHER_TYPES:
            return OTHER_TYPES[word]
        if word not in NAME_DTYPES:
            raise self.error(f"unknown dtype {word!r}")
        self.expect("[")
        dims, depth, start = [], 0, self.pos
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated shape: expected ']'")
            ch = self.text[self.pos]
            if ch in "([":
                depth += 1
            elif ch in ")]" and depth:
                depth -= 1
            elif (ch == "," or ch == "]") and depth == 0:
                piece = self.text[start : self.pos].strip()
                if piece:
                    try:
                        dims.append(parse_dim(piece))
                    except Exception as e:  # sympy raises many kinds
                        raise QIRParseError(f"bad dimension {piece!r}: {e}", self.line_no, start + 1, self.text) from None
                elif ch == ",":
                    raise self.error("empty dimension")
                self.pos += 1
                start = self.pos
                if ch == "]":
                    break
                continue
            self.pos += 1
        return TensorType(word, tuple(dims))


def _check_end(cur: _Cursor) -> None:
    if not cur.at_end():
        raise cur.error(f"unexpected text {cur.text[cur.pos:cur.pos + 12]!r}")


def parse_graph(text: str) -> Graph:
    """Parse QIR text into a Graph (parameters empty: they travel separately)."""
    lines = text.split("\n")
    body = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise QIRParseError("empty QIR text: expected 'qir 1'", 1, 1)
    ln, line = body[0]
    cur = _Cursor(line, ln)
    cur.expect("qir")
    version = cur.match(_NUMBER, "a format version")
    if version != str(FORMAT_VERSION):
        raise QIRParseError(f"QIR format version {version} is not supported (this qcomp reads {FORMAT_VERSION})", ln, 5, line)
    _check_end(cur)
    if len(body) < 2:
        raise QIRParseError("expected a 'graph' line", ln + 1, 1)
    ln, line = body[1]
    cur = _Cursor(line, ln)
    cur.expect("graph")
    name = json.loads(cur.match(_STRING, "a graph name string"))
    attrs = cur.dict_value()
    _check_end(cur)
    g = Graph(name, attrs)
    for ln, line in body[2:]:
        cur = _Cursor(line, ln)
        cur.expect("%")
        nname = cur.match(_NAME, "a value name")
        cur.expect("=")
        op = cur.match(_NAME, "an op name")
        args, kwargs = cur.call_args()
        nattrs = cur.dict_value()
        cur.expect(":")
        qt = cur.qtype()
        _check_end(cur)
        if nname in g:
            raise QIRParseError(f"value %{nname} is defined twice", ln, 2, line)
        g.add(Node(nname, op, args, kwargs, nattrs, qt))
    return g
