"""Many questions of `trace` and `explain`: `--dst` given several times and `--dst-file FILE`, read into
questions (a bad line is a question that carries its error, so the others are still answered), asked against
one load of the dump per IP family, and printed: one destination exactly as before, several as a JSON array
in input order or as text with a header line per question.

Exit status with several destinations: 1 when a question could not be asked (a bad line, an address of an IP
family the dump has no rules for), else `explain` exits 3 when an explanation has an error, else 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import click

from iptrace.cli import named
from iptrace.dataplane import as_sent, ip_address

PROTOCOLS = ("tcp", "udp", "sctp")
EXPECTED = "IP:PORT or IP:PORT/proto, e.g. 10.96.0.10:53/udp or [fd00::10]:443"


@dataclass(frozen=True, slots=True)
class Question:
    """One destination asked about: where it was written (`--dst`, or FILE:LINE) and what, or why not."""

    where: str
    text: str
    host: str = ""
    port: int = 0
    proto: str = "tcp"
    error: str | None = None
    service: Any = None  # a Service named instead of an address (iptrace.kube.names.ServiceRef): resolved later
    proto_given: bool = False
    notes: tuple[str, ...] = ()  # how the address was read (an IPv4-mapped one as IPv4): the trace's assumptions
    column: int = 0  # where the text starts on its --dst-file line (1-based; 0 for --dst)

    @property
    def at(self) -> str:
        """Where the question was written, as an error names it: FILE:LINE:COLUMN, or `--dst`."""
        return f"{self.where}:{self.column}" if self.column else self.where

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.host else "ipv4"

    @property
    def label(self) -> str:
        if not self.host:
            return self.text  # (a Service named instead of an address)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.proto}"


def named_question(text: str, where: str, default_proto: str) -> Question | None:
    """A Service named instead of an address (`kube-dns.kube-system:53`, `NS/NAME:PORT-NAME`, either with
    `/proto`), as --dst and a --dst-file line both take it; None when `text` names an address."""
    # (a protocol is what follows the last slash: a Service's NAMESPACE/NAME has one of its own)
    body, slash, proto = text.rpartition("/")
    if not slash or proto.lower() not in PROTOCOLS:
        body, slash, proto = text, "", ""
    name, _, port_text = body.rpartition(":")
    if _is_address(name):
        return None
    return _service(name, port_text, where, text, proto.lower() if slash else default_proto, bool(slash))


def parse_question(text: str, where: str, default_proto: str, column: int = 0) -> Question:
    """`IP:PORT` or `IP:PORT/proto` (IPv6 as `[addr]:port`), or a Service by name; a Question with its error when
    it is none of them. `column` is where `text` starts on its line: an error names the column of what is wrong."""
    by_name = named_question(text, where, default_proto)
    if by_name is not None:
        return replace(by_name, column=column)

    def bad(offset: int, why: str) -> Question:
        at = f"{where}:{column + offset}" if column else where
        return Question(where, text, error=f"{at}: found {text!r}{why}", column=column)

    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else default_proto
    if slash and proto not in PROTOCOLS:
        return bad(len(body) + 1, f": unknown protocol {proto!r}; expected tcp, udp or sctp after the slash "
                                  f"({EXPECTED})")
    if body.startswith("[") and "]:" in body:
        host, port = body[1:].split("]:", 1)
    else:
        host, sep, port = body.rpartition(":")
        if not sep or ":" in host:
            from iptrace.cli.common import ipv6_without_port

            why = ipv6_without_port(body)
            return bad(0, f"; expected {EXPECTED}" if why is None else f": {why}")
    try:
        ip_address(host)
    except ValueError:
        return bad(0, f"; expected {EXPECTED}")
    try:
        number = int(port)
    except ValueError:
        return bad(len(body) - len(port), f": port {port!r} is not a number; expected {EXPECTED}")
    if not 0 < number <= 65535:
        return bad(len(body) - len(port), f": port {number} is out of range; expected 1-65535")
    host, notes = as_sent(host)
    return Question(where, text, host, number, proto, notes=notes, column=column)


def read_questions(dsts: Sequence[str], dst_file: str | None, default_proto: str) -> list[Question]:
    """The --dst values (a bad one is a usage error, as it always was), then the --dst-file lines (`#`
    comments and blank lines skipped; `-` is stdin)."""
    from iptrace.cli.common import parse_destination

    out = []
    for text in dsts:
        by_name = named_question(text, "--dst", default_proto)
        if by_name is not None:
            out.append(by_name)
            continue
        body, slash, proto = text.partition("/")
        host, port = parse_destination(body)  # (a bad --dst is a usage error, worded as it always was)
        if slash and proto.lower() not in PROTOCOLS:
            raise click.BadParameter(f"{text!r}: unknown protocol {proto!r}; expected tcp, udp or sctp",
                                     param_hint="--dst")
        host, notes = as_sent(host)
        out.append(Question("--dst", text, host, port, proto.lower() if slash else default_proto, notes=notes))
    if dst_file is not None:
        from iptrace.dumpfile import read_bytes
        from iptrace.text import decode_input

        # (read as a dump is: `-` = stdin, gzip decompressed, a directory, missing file or binary data said in words)
        data, name = read_bytes(dst_file, "a file of destinations, one IP:PORT a line",
                                "one IP:PORT or IP:PORT/proto a line")
        lines = decode_input(data)
        asked = len(out)
        for number, line in enumerate(lines.splitlines(), 1):
            text = line.split("#", 1)[0].rstrip()
            if text.strip():
                column = len(text) - len(text.lstrip()) + 1
                out.append(parse_question(text.strip(), f"{name}:{number}", default_proto, column))
        if len(out) == asked and not dsts:
            raise click.UsageError(f"Missing option '--dst': {name} has no destination (only blank lines and # "
                                   "comments); expected one IP:PORT or IP:PORT/proto a line")
    if not out:
        raise click.UsageError("Missing option '--dst' (or --dst-file FILE with one IP:PORT a line).")
    return out


def _is_address(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _service(host: str, port: str, where: str, text: str, proto: str, proto_given: bool) -> Question | None:
    """A question about a Service named instead of an address (`kube-dns.kube-system:53`, `ns/name:port`)."""
    from iptrace.kube.names import service_ref

    ref = service_ref(host, port) if host else None
    return None if ref is None else Question(where, text, proto=proto, service=ref, proto_given=proto_given)


def check_mapped_source(given: str | None, src: str | None, host: str) -> None:
    """An IPv4-mapped --src (`given`, sent as IPv4 `src`) with an IPv6 destination: a socket bound to a mapped
    address sends IPv4 only and cannot reach it. Said with the address as the user gave it (the packet's own check
    would name the IPv4 address it became)."""
    from iptrace.errors import InputError

    if given is None or given == src or ":" not in host:
        return
    raise InputError(f"source {given} is an IPv4-mapped IPv6 address, which a socket uses as IPv4 ({src}): it cannot "
                     f"reach the IPv6 destination {host}; give an IPv6 --src, or the IPv4 destination")


def resolved(q: Question, analysis: Any, cluster: Any = None) -> Question:
    """`q` about its Service's ClusterIP in `analysis`'s rules (said on stderr), or `q` when it names an
    address. A Service the rules do not name but the cluster data has is asked at the API's ClusterIP (explain
    then says this node has no rules for it). Raises InputError when neither has such a Service or port."""
    if q.service is None:
        return q
    from iptrace.errors import InputError
    from iptrace.kube.names import resolve, resolve_in_cluster

    where = ""
    try:
        host, port, proto, label = resolve(analysis.layout, q.service, q.proto, analysis.ruleset.source,
                                           proto_given=q.proto_given)
    except InputError:
        family = 6 if analysis.family == "ipv6" else 4
        api = None if cluster is None else resolve_in_cluster(cluster, q.service, q.proto, family,
                                                              proto_given=q.proto_given)
        if api is None:
            raise
        host, port, proto, label = api
        where = f" in {cluster.source}; {analysis.ruleset.source} has no rules naming it"
    found = Question(q.where, q.text, host, port, proto, column=q.column)
    click.echo(f"note: {q.text} is {label} at {found.label}{where}", err=True)
    return found


def answer_all(questions: Sequence[Question], analysis_for: Callable[[str, Sequence[str]], Any],
               answer: Callable[[Any, Question], Any], cluster: Any = None) -> list[Any]:
    """Each question's answer (or its error, as a string), one analysis per IP family asked about
    (`analysis_for(family, hosts)`), in input order."""
    from iptrace.errors import InputError

    analyses: dict[str, Any] = {}
    answered: dict[tuple[str, int, str, tuple[str, ...]], Any] = {}  # a destination asked again has the same answer
    out: list[Any] = []
    for q in questions:
        if q.error is not None:
            out.append(q.error)
            continue
        if q.service is not None:
            try:
                first = next(iter(analyses.values()), None)
                if first is None or isinstance(first, InputError):
                    first = analysis_for("", [])  # (the dump's first family)
                    analyses.setdefault(first.family, first)
                q = resolved(q, first, cluster)
            except InputError as exc:
                out.append(f"{q.at}: {q.text}: {exc}")
                continue
        again = answered.get((q.host, q.port, q.proto, q.notes))
        if again is not None:
            out.append(again)
            continue
        if q.family not in analyses:
            hosts = [x.host for x in questions if x.error is None and x.host and x.family == q.family]
            try:
                analyses[q.family] = analysis_for(q.family, hosts)
            except InputError as exc:
                analyses[q.family] = exc
        found = analyses[q.family]
        if isinstance(found, InputError):
            out.append(f"{q.at}: {q.text}: {found}")
            continue
        try:
            out.append(answered.setdefault((q.host, q.port, q.proto, q.notes), answer(found, q)))
        except InputError as exc:
            out.append(f"{q.at}: {q.text}: {exc}")
    return out


def emit_answers(questions: Sequence[Question], answers: Sequence[Any], output: str,
                 to_json: Callable[..., Any], to_text: Callable[[Any], str]) -> bool:
    """Print several answers; True when a question could not be asked (said on stderr too). `to_json(answer)`,
    or `to_json(answer, paths)` with a PathTexts for the paths (iptrace.dataplane.Outcome.to_json)."""
    from iptrace.cli.common import emit_json
    from iptrace.render.json import LARGE_LIST, PathTexts

    bad = False
    docs = []
    chunks = []
    # Printed one compact answer a line: each rule of their paths is encoded once (PathTexts).
    paths = PathTexts() if output == "json" and len(answers) > LARGE_LIST else None
    for q, a in zip(questions, answers, strict=True):
        if isinstance(a, str):
            bad = True
            click.echo(named(f"Error: {a}"), err=True)
            docs.append({"dst": q.text, "where": q.where, "error": a})
            chunks.append(f"=== {q.text} ({q.where}) ===\nError: {a}\n")
        elif output == "json":  # (only the form printed is rendered: a thousand answers' text costs as much)
            docs.append(to_json(a) if paths is None else to_json(a, paths))
        else:
            chunks.append(f"=== {q.label} ({q.where}) ===\n{to_text(a)}")
    if output == "json":
        emit_json(docs, paths)
    else:
        click.echo(named("\n".join(chunks)), nl=False)
    return bad
