"""Reads one rule body into model items, left to right, by the vocabulary tables (vocabulary.py).

Input is the token list of one rule (shapes.TOKEN_RE) where masked values (shapes.MASK_RE) are opaque: the
reader decides structure only from words that are part of the shape key, so its result — a template whose
masked values are `Slot`s — holds for every rule of that shape. What the tables do not describe becomes an
`Unknown` item (its words up to the next known statement or expression), never an error and never dropped.
Values written out (not masked) are normalised here, once per shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.errors import ParseError
from iptrace.nftables import values
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Counter,
    Ct,
    Element,
    Fib,
    Flags,
    Hash,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Numgen,
    Payload,
    Reject,
    Selector,
    SetRef,
    SetUpdate,
    Unknown,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.normalise import make_nat, make_reject, make_statement, nat_from_text, normalise_items
from iptrace.nftables.shapes import Call, Slot, join_tokens
from iptrace.nftables.tokens import Tok
from iptrace.nftables.types import ANY, expr_type, is_bitmask, key_types
from iptrace.nftables.vocabulary import (
    BINARY_OPS,
    CHAIN_VERDICTS,
    CT,
    CT_DIRECTIONS,
    ELEMENT_OPTIONS,
    EXPRESSION_WORDS,
    FIB_FLAGS,
    FIB_RESULTS,
    ITEM_WORDS,
    META,
    META_UNQUALIFIED,
    NAT_FLAGS,
    NAT_WORDS,
    NUMGEN_MODES,
    OPTION_STATEMENTS,
    PAYLOAD,
    REJECT_TYPES,
    RELATIONAL_OPS,
    SELECTORS,
    SET_STATEMENT_OPS,
    VERDICT_WORDS,
)

_PUNCT = frozenset({"{", "}", ",", ":", ";"})


class NotUnderstood(Exception):
    """The tables do not describe what follows: the reader falls back to an Unknown item."""


class RuleReader:
    def __init__(self, toks: list[Tok], family: str, *, error: Callable[[str, int], ParseError],
                 quoted: bool = True) -> None:
        self.toks = toks
        self.family = family
        self.pos = 0
        self.error = error  # (why, column0) -> ParseError for values that cannot be right
        self.quoted = quoted  # whether a masked name may be a quoted string
        # Masked values whose tail is structure (slot → ":word"): every rule of the shape must end them so.
        self.tails: dict[int, str] = {}

    # -- cursor ------------------------------------------------------------------------------------------
    def peek(self, k: int = 0) -> Tok | None:
        i = self.pos + k
        return self.toks[i] if i < len(self.toks) else None

    def word(self, k: int = 0) -> str | None:
        t = self.peek(k)
        return t.word if t is not None else None

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise NotUnderstood
        self.pos += 1
        return t

    def expect(self, word: str) -> None:
        if self.word() != word:
            raise NotUnderstood
        self.pos += 1

    def value(self, fn: Callable[[str], Any] | None) -> Any:
        """The next token as a value read with `fn` (a Slot when the shape masks it)."""
        t = self.take()
        if t.text in _PUNCT:
            raise NotUnderstood
        if t.slot >= 0:
            return Slot(t.slot, fn)
        if fn is None:
            return t.text
        try:
            return fn(t.text)
        except ValueError as exc:
            raise self.error(str(exc), t.col) from None

    def name(self) -> Any:
        """A chain or set name (quotes removed)."""
        return self.value(values.unquote if self.quoted else None)

    # -- rules -------------------------------------------------------------------------------------------
    def read_rule(self) -> tuple[tuple[Any, ...], Any]:
        items: list[Any] = []
        comment: Any = None
        while self.pos < len(self.toks):
            start = self.pos
            if self.word() == "comment" and self.peek(1) is not None:
                self.pos += 1
                try:
                    comment = self.value(values.unquote)
                    continue
                except NotUnderstood:  # (`comment` followed by punctuation: kept verbatim as what follows is)
                    self.pos = start
            try:
                items.append(self.read_item())
            except NotUnderstood:
                self.pos = start
                items.append(self.read_unknown())
        return normalise_items(tuple(items)), comment

    def read_unknown(self) -> Any:
        parts = [self.take()]
        depth = 1 if parts[0].text == "{" else 0
        while (t := self.peek()) is not None:
            if depth == 0 and t.word in ITEM_WORDS:
                break
            depth += (t.text == "{") - (t.text == "}")
            parts.append(t)
            self.pos += 1
        texts = tuple(Slot(t.slot, (lambda s: "@" + s) if t.ref else None) if t.slot >= 0 else t.text
                      for t in parts)
        return Unknown(Call(join_tokens, (texts,)))

    def read_item(self) -> Any:
        t = self.peek()
        assert t is not None
        w = t.word
        if w is None:
            raise NotUnderstood
        if w.startswith("#"):  # `# xt_conntrack`: nft did not say whether a match or a target
            self.pos += 1
            return Xt("", w.lstrip("# \t")[3:])
        if w in VERDICT_WORDS:
            self.pos += 1
            return Verdict(w)
        if w in CHAIN_VERDICTS:
            self.pos += 1
            return Verdict(w, self.name())
        if w == "reject":
            return self.read_reject()
        if w == "counter":
            return self.read_counter()
        if w in NAT_WORDS:
            return self.read_nat(w)
        if w in SET_STATEMENT_OPS and self.peek(1) is not None and self.peek(1).text.startswith("@"):
            return self.read_set_update(w)
        if w == "xt":
            self.pos += 1
            kind = self.word()
            if kind not in ("match", "target", "watcher"):
                raise NotUnderstood
            self.pos += 1
            return Xt(kind, self.value(values.unquote))
        if w in OPTION_STATEMENTS:
            return self.read_option_statement(w)
        if w == "tcp" and self.word(1) == "option" and self.word(4) == "set":
            return self.read_tcp_option()
        if w in EXPRESSION_WORDS:
            return self.read_expression_item()
        raise NotUnderstood

    # -- statements --------------------------------------------------------------------------------------
    def read_reject(self) -> Reject:
        self.pos += 1
        if self.word() != "with":
            return Reject()
        self.pos += 1
        kind = self.word()
        if kind == "tcp":
            self.pos += 1
            self.expect("reset")
            return Reject("tcp reset")
        if kind not in REJECT_TYPES:
            raise NotUnderstood
        self.pos += 1
        if self.word() == "type":
            self.pos += 1
        code = self.value(values.symbol)
        if isinstance(code, Slot):
            return Call(make_reject, (kind, code, self.family))
        return make_reject(kind, code, self.family)

    def read_counter(self) -> Counter:
        self.pos += 1
        if self.word() == "packets":
            self.pos += 1
            packets = self.value(values.integer)
            self.expect("bytes")
            return Counter(None, packets, self.value(values.integer))
        if self.word() == "name":
            self.pos += 1
            return Counter(self.value(values.unquote))
        return Counter()

    def _address_type(self, family: str | None) -> str:
        fam = family or self.family
        return "ipv4_addr" if fam == "ip" else "ipv6_addr" if fam == "ip6" else "ct_addr"

    def read_nat(self, kind: str) -> Any:
        self.pos += 1
        family = None
        if kind in ("dnat", "snat") and self.word() in ("ip", "ip6"):
            family = self.word()
            self.pos += 1
        addr_port = False
        if self.word() == "addr" and self.word(1) == "." and self.word(2) == "port":
            self.pos += 3
            addr_port = True
        addr_type = self._address_type(family)
        target: Any = (None, None)
        target_tok: Tok | None = None
        if self.word() == "to":
            self.pos += 1
            if self.word() in EXPRESSION_WORDS:
                data = (addr_type, "inet_service") if addr_port else (addr_type,)
                target = (self.read_value_expression(data), None)
                if (t := self.peek()) is not None and t.text.startswith(":"):
                    target = (target[0], self._nat_port(t))
            else:
                target_tok = self.take()
                if target_tok.text in _PUNCT:
                    raise NotUnderstood
                # `dnat to 10.0.0.1:numgen random mod 2 map { … }` (the kernel glues the port expression's first word
                # to the address), `dnat to 10.0.0.1 : 8080` (nft reads a port written apart): an address, a port
                host, glued, word = target_tok.text.rpartition(":")
                if glued and host and word in EXPRESSION_WORDS:
                    self.pos -= 1
                    self.toks[self.pos] = Tok(":" + word, target_tok.col + len(host))
                elif (t := self.peek()) is not None and t.text.startswith(":"):
                    host = target_tok.text
                else:
                    host = ""
                if host:
                    address = self._glued_address(target_tok, host, addr_type)
                    target, target_tok = (address, self._nat_port(self.toks[self.pos])), None
        flags: list[Any] = []
        while self.word() in NAT_FLAGS:
            flags.append(self.take().text)
            if self.word() == ",":
                self.pos += 1
        if family == self.family:
            family = None  # `dnat ip to` in an ip table: the kernel lists it as `dnat to`
        if target_tok is None:
            return Call(make_nat, (kind, family, target, tuple(flags)))
        if target_tok.slot >= 0:  # the target is parsed (checked) when the rule is read, the Nat made on use
            return Call(make_nat, (kind, family, Slot(target_tok.slot, values.nat_target(addr_type)),
                                   tuple(flags)))
        try:
            return nat_from_text(kind, family, addr_type, tuple(flags))(target_tok.text)
        except ValueError as exc:
            raise self.error(str(exc), target_tok.col) from None

    def _glued_address(self, t: Tok, host: str, addr_type: str) -> Any:
        """The address `host` of `ADDR:word…` or of an `ADDR` its port follows (a Slot when the shape masks it)."""
        address = values.nat_target(addr_type)
        tail = t.text[len(host):]
        if t.slot >= 0:
            if tail:  # (every rule of the shape must glue the same word to its address)
                self.tails[t.slot] = tail
            return Slot(t.slot, lambda text: address(text[:len(text) - len(tail)])[0])
        try:
            return address(host)[0]
        except ValueError as exc:
            raise self.error(str(exc), t.col) from None

    def _nat_port(self, t: Tok) -> Any:
        """The port after an address a map chooses: `map { … }:8080` (one token; a range, or `:tcp dport map
        { … }` glued to its first word, as the kernel lists it), `map { … } : 8080`."""
        port = values.normaliser("inet_service")
        if t.text != ":" and t.text[1:] not in EXPRESSION_WORDS:
            self.pos += 1
            return Slot(t.slot, lambda text: port(text[1:])) if t.slot >= 0 else port(t.text[1:])
        self.toks[self.pos:self.pos + 1] = [Tok(":", t.col)] + ([Tok(t.text[1:], t.col + 1)] if t.text != ":" else [])
        self.pos += 1
        return self.read_value_expression(("inet_service",))

    def read_set_update(self, op: str) -> SetUpdate:
        self.pos += 1
        t = self.take()
        name = Slot(t.slot, None) if t.ref else t.text[1:]
        self.expect("{")
        key = self.read_expression()
        timeout = None
        if self.word() == "timeout":
            self.pos += 1
            timeout = self.value(values.duration_ms)
        self.expect("}")
        return SetUpdate(op, name, key, timeout)

    def read_option_statement(self, keyword: str) -> Any:
        spec = OPTION_STATEMENTS[keyword]
        self.pos += 1
        args: list[Any] = []
        if spec is not None:
            while (w := self.word()) in spec:
                self.pos += 1
                args.append(w)
                args.extend(self.value(None) for _ in range(spec[w]))
        else:
            depth = 0
            while (t := self.peek()) is not None and (depth or t.word not in ITEM_WORDS):
                depth += (t.text == "{") - (t.text == "}")
                args.append(Slot(t.slot, None) if t.slot >= 0 and not t.ref else
                            Slot(t.slot, lambda s: "@" + s) if t.ref else t.text)
                self.pos += 1
        return Call(make_statement, (keyword, tuple(args)))

    def read_tcp_option(self) -> Any:
        """`tcp option maxseg size set 1400` / `… set rt mtu` (MSS clamping): a statement rewriting an option of
        the TCP header. (The test `tcp option maxseg size 1460` is an Unknown: the sender chose the value.)"""
        n = 7 if self.word(5) == "rt" else 6
        args = [Slot(t.slot, None) if t.slot >= 0 else t.text for t in self.toks[self.pos + 1:self.pos + n]]
        if len(args) != n - 1 or any(isinstance(a, str) and a in _PUNCT for a in args):
            raise NotUnderstood
        self.pos += n
        return Call(make_statement, ("tcp", tuple(args)))

    # -- expressions -------------------------------------------------------------------------------------
    def read_single_expression(self) -> Any:
        w = self.word()
        nxt = self.word(1)
        if w is None:
            raise NotUnderstood
        if w in PAYLOAD and nxt in PAYLOAD[w]:
            self.pos += 2
            return Payload(w, nxt)
        if w == "meta" and nxt in META:
            self.pos += 2
            return Meta(nxt)
        if w in META_UNQUALIFIED:
            self.pos += 1
            return Meta(w)
        if w == "ct":
            self.pos += 1
            direction = family = None
            if self.word() in CT_DIRECTIONS:
                direction = self.take().text
            if self.word() in ("ip", "ip6"):
                family = self.take().text
            key = self.word()
            if key not in CT:
                raise NotUnderstood
            self.pos += 1
            return Ct(key, direction, family)
        if w == "fib":
            self.pos += 1
            flags = [self.take().text]
            while self.word() == ".":
                self.pos += 1
                flags.append(self.take().text)
            result = self.word()
            if result not in FIB_RESULTS or not all(f in FIB_FLAGS for f in flags):
                raise NotUnderstood
            self.pos += 1
            return Fib(tuple(flags), result)
        if w == "numgen" and nxt in NUMGEN_MODES:
            self.pos += 2
            self.expect("mod")
            modulus = self.value(values.integer)
            offset = 0
            if self.word() == "offset":
                self.pos += 1
                offset = self.value(values.integer)
            return Numgen(nxt, modulus, offset)
        if w in ("jhash", "symhash"):
            self.pos += 1
            expr = self.read_expression() if w == "jhash" else None
            self.expect("mod")
            modulus = self.value(values.integer)
            seed = None
            offset = 0
            if self.word() == "seed":
                self.pos += 1
                seed = self.value(values.integer)
            if self.word() == "offset":
                self.pos += 1
                offset = self.value(values.integer)
            return Hash(w, expr, modulus, seed, offset)
        if w in SELECTORS:
            self.pos += 1
            words = [w]
            while self.word() in SELECTORS[w]:
                words.append(self.take().text)
                if words[-1] == "level":
                    words.append(self.take().text)
            if len(words) == 1:
                raise NotUnderstood
            return Selector(tuple(words))
        raise NotUnderstood

    def read_expression(self) -> Any:
        """An expression, or a concatenation `a . b . c`."""
        first = self.read_single_expression()
        if self.word() != ".":
            return first
        parts = [first]
        while self.word() == ".":
            self.pos += 1
            parts.append(self.read_single_expression())
        return Concat(tuple(parts))

    def read_expression_item(self) -> Any:
        left = self.read_expression()
        w = self.word()
        if w == "vmap":
            self.pos += 1
            return VerdictMap(left, self.read_map(key_types(left, self.family), ("verdict",)))
        if w == "set" and not isinstance(left, Concat):
            self.pos += 1
            return Mangle(left, self.read_value_expression((expr_type(left, self.family),)))
        while w in BINARY_OPS:
            self.pos += 1
            if isinstance(left, Concat):
                raise NotUnderstood  # a bitwise operation applies to one expression, never to a concatenation
            left = Binop(BINARY_OPS[w], left, self.read_operand(expr_type(left, self.family)))
            w = self.word()
        explicit = w in RELATIONAL_OPS
        op = RELATIONAL_OPS[w] if explicit else "=="
        if explicit:
            self.pos += 1
        right = self.read_right(key_types(left, self.family), flags_ok=is_bitmask(left, self.family))
        if self.word() == "/":  # `tcp flags syn / syn,ack` = (flags & (syn|ack)) == syn
            self.pos += 1
            left = Binop("&", left, self.read_operand(expr_type(left, self.family)))
        elif not explicit and is_bitmask(left, self.family) and not isinstance(right, (SetRef, AnonSet)) \
                and not isinstance(left, (Concat, Binop)):
            op = "in"
        return Match(left, op, right)

    def read_operand(self, dtype: str) -> Any:
        """The right side of a bitwise operation: a number, or flags `(syn|ack)` / `syn,ack` (the bitmask
        types' normaliser reads both)."""
        return self.read_value(dtype, flags_ok=True)

    def read_right(self, dtypes: tuple[str, ...], *, flags_ok: bool) -> Any:
        t = self.peek()
        if t is None:
            raise NotUnderstood
        if t.text == "{":
            return self.read_anon_set(dtypes, None, collapse=True)
        if t.text.startswith("@"):
            self.pos += 1
            return SetRef(Slot(t.slot, None) if t.ref else t.text[1:])
        return self.read_values(dtypes, flags_ok=flags_ok)

    def read_values(self, dtypes: tuple[str, ...], *, flags_ok: bool = False) -> Any:
        """A value, or a concatenation of values `a . b . c` typed by `dtypes`."""
        parts = [self.read_value(dtypes[0], flags_ok=flags_ok and len(dtypes) == 1)]
        while self.word() == ".":
            self.pos += 1
            i = len(parts)
            parts.append(self.read_value(dtypes[i] if i < len(dtypes) else ANY))
        return parts[0] if len(parts) == 1 else tuple(parts)

    def read_value(self, dtype: str, *, flags_ok: bool = False) -> Any:
        first = self.value(values.normaliser(dtype))
        if not (flags_ok and self.word() == ","):
            return first
        names = [first]
        while self.word() == ",":
            self.pos += 1
            names.append(self.value(values.normaliser(dtype)))
        if any(isinstance(n, Slot) for n in names):
            return Call(values.flags, (tuple(names),))
        return Flags(tuple(names))

    def read_value_expression(self, data: tuple[str, ...]) -> Any:
        """A value a statement writes: an expression (maybe through a map), or a constant."""
        start = self.pos
        if self.word() in EXPRESSION_WORDS:
            try:
                expr = self.read_expression()
                while (w := self.word()) in BINARY_OPS:
                    self.pos += 1
                    expr = Binop(BINARY_OPS[w], expr, self.read_operand(expr_type(expr, self.family)))
                if self.word() == "map":
                    self.pos += 1
                    return MapLookup(expr, self.read_map(key_types(expr, self.family), data))
                return expr
            except NotUnderstood:
                self.pos = start
        return self.read_values(data)

    def read_map(self, keys: tuple[str, ...], data: tuple[str, ...]) -> Any:
        t = self.peek()
        if t is not None and t.text.startswith("@"):
            self.pos += 1
            return SetRef(Slot(t.slot, None) if t.ref else t.text[1:])
        return self.read_anon_set(keys, data, collapse=False)

    # -- set literals ------------------------------------------------------------------------------------
    def read_anon_set(self, keys: tuple[str, ...], data: tuple[str, ...] | None, *, collapse: bool) -> Any:
        self.expect("{")
        elements = []
        while self.word() != "}":
            elements.append(self.read_element(keys, data))
            if self.word() == ",":
                self.pos += 1
            elif self.word() != "}":
                raise NotUnderstood
        self.pos += 1
        if collapse and len(elements) == 1 and elements[0] == Element(elements[0].key):
            return elements[0].key  # the kernel lists `{ 10.0.0.0/8 }` as `10.0.0.0/8`
        return AnonSet(tuple(elements))

    def read_element(self, keys: tuple[str, ...], data: tuple[str, ...] | None) -> Element:
        key = self.read_values(keys)
        timeout = expires = comment = counter = None
        while (w := self.word()) in ELEMENT_OPTIONS:
            self.pos += 1
            if w == "timeout":
                timeout = self.value(values.duration_ms)
            elif w == "expires":
                expires = self.value(values.duration_ms)
            elif w == "comment":
                comment = self.value(values.unquote)
            else:
                self.expect("packets")
                packets = self.value(values.integer)
                self.expect("bytes")
                counter = Call(lambda p, b: (p, b), (packets, self.value(values.integer)))
        value = None
        if self.word() == ":":
            if data is None:
                raise NotUnderstood
            self.pos += 1
            value = self.read_verdict() if data == ("verdict",) else self.read_values(data)
        return Element(key, value, timeout, comment, expires, counter)

    def read_verdict(self) -> Verdict:
        w = self.word()
        if w in VERDICT_WORDS:
            self.pos += 1
            return Verdict(w)
        if w in CHAIN_VERDICTS:
            self.pos += 1
            return Verdict(w, self.name())
        raise NotUnderstood
