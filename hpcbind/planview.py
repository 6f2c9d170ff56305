"""A bind plan for people: the table, the explanation, and the diff of two plans.

One column table (``SECTIONS``) drives both the rich table and the lines of ``diff``, so what a
row shows and what a diff compares never drift apart. The sentences of ``explain`` are module
constants, as archspec's ``why_not`` templates, and the tests compare them verbatim.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hpcbind.plan import BindPlan, Check, Device, EnvAction, EnvOp, Link, Mount, Rejected, Status


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    attr: str  # the BindPlan field it shows
    columns: tuple[tuple[str, Callable[[Any], str]], ...]
    key: Callable[[Any], tuple[str, ...]]  # what identifies an entry across two plans
    # fields too bulky for the table that still count in a diff: every field of an entry is
    # in its table row or here, so two plans whose digests differ never diff empty
    extra: tuple[tuple[str, Callable[[Any], str]], ...] = ()
    lead: int = 1  # columns that head an entry's block when the section is stacked


def _numbers(d: Device) -> str:
    return f"{d.type} {d.major}:{d.minor}"


def _provenance(m: Mount) -> str:
    p = m.provenance
    parts = {"realpath": p.realpath, "soname": p.soname, "class": p.elf_class, "machine": p.machine,
             "needs": ",".join(p.needs), "version": p.version}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


SECTIONS: tuple[Section, ...] = (
    Section("Mounts", "mounts", (
        ("destination", lambda m: m.destination), ("source", lambda m: m.source),
        ("kind", lambda m: m.kind), ("options", lambda m: ",".join(m.options)),
        ("need", lambda m: str(m.need)), ("provider", lambda m: m.provider), ("rule", lambda m: m.rule),
        ("reason", lambda m: m.reason),
    ), lambda m: (m.destination,), extra=(("provenance", _provenance),)),
    Section("Devices", "devices", (
        ("path", lambda d: d.path), ("device", _numbers), ("host path", lambda d: d.host_path),
        ("perm", lambda d: d.permissions), ("provider", lambda d: d.provider), ("rule", lambda d: d.rule),
        ("reason", lambda d: d.reason),
    ), lambda d: (d.path,)),
    Section("Environment", "env", (
        ("name", lambda e: e.name), ("action", lambda e: str(e.action)), ("value", lambda e: e.value),
        ("provider", lambda e: e.provider), ("reason", lambda e: e.reason),
    ), lambda e: (e.name, e.provider)),
    Section("Links", "links", (
        ("path", lambda ln: ln.path), ("target", lambda ln: ln.target),
        ("provider", lambda ln: ln.provider), ("reason", lambda ln: ln.reason),
    ), lambda ln: (ln.path,)),
    Section("Checks", "checks", (
        ("status", lambda c: str(c.status)), ("name", lambda c: c.name), ("message", lambda c: c.message),
        ("provider", lambda c: c.provider), ("fix", lambda c: c.fix),
    ), lambda c: (c.provider, c.name), lead=2),
    Section("Rejected", "rejected", (
        ("candidate", lambda r: r.candidate), ("reason", lambda r: r.reason), ("provider", lambda r: r.provider),
    ), lambda r: (r.provider, r.candidate), extra=(("withdraws", lambda r: "withdraws" if r.withdraws else ""),)),
)
# Facts are not in the table (they are what discovery saw, not what it binds) but a changed
# fact (driver version, GPU count) is often the very reason two plans differ.
FACTS = Section("Facts", "facts", (
    ("provider", lambda f: f.provider), ("name", lambda f: f.name), ("value", lambda f: f.value),
), lambda f: (f.provider, f.name))

PROSE_COLUMNS = frozenset({"reason", "message", "fix"})
PROSE_MIN_WIDTH = 24
COLUMN_GAP = 3  # rich's padding and separator between two columns of a SIMPLE_HEAD table
_TRAILING_BLANKS = re.compile(r"(?: |\x1b\[[0-9;]*m)+$")  # padding, and the style codes around it
RESET = "\x1b[0m"
STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}

SUMMARY = ("{mounts} mounts, {devices} devices, {env} env, {links} links; checks: {ok} ok, {warn} warn, "
           "{fail} fail; {rejected} rejected; digest {digest}")
EMPTY_SECTION = "{title}: none"

# --- the table -----------------------------------------------------------------------------------------


def _cell(section: Section, header: str, value: str, entry: Any) -> Text:
    style = STATUS_STYLE[entry.status] if section.attr == "checks" and header == "status" else ""
    return Text(value, style=style)  # Text, never markup: a path may hold "[...]"


def _rows(plan: BindPlan, section: Section) -> list[list[str]]:
    return [[get(entry) for _, get in section.columns] for entry in getattr(plan, section.attr)]


def _widths(section: Section, rows: list[list[str]]) -> list[int]:
    """Each column's width when nothing in it wraps, with the gap rich puts after it."""
    return [max(len(header), *(len(row[i]) for row in rows)) + COLUMN_GAP
            for i, (header, _) in enumerate(section.columns)]


def _table(plan: BindPlan, section: Section, rows: list[list[str]], width: int) -> Table | Text:
    entries = getattr(plan, section.attr)
    if not entries:
        return Text(EMPTY_SECTION.format(title=section.title))
    # A path cut in two is easily misread: keep the other columns whole and let the prose wrap,
    # unless the console is too narrow even for that; then every column folds.
    whole = [w for w, (header, _) in zip(_widths(section, rows), section.columns) if header not in PROSE_COLUMNS]
    prose = len(section.columns) - len(whole)
    if sum(whole) + PROSE_MIN_WIDTH * prose > width:
        return _stacked(section, entries, rows, width)
    table = Table(title=f"{section.title} ({len(entries)})", title_justify="left", box=box.SIMPLE_HEAD,
                  title_style="bold", header_style="bold", pad_edge=False)
    for header, _ in section.columns:
        table.add_column(header, overflow="fold", no_wrap=header not in PROSE_COLUMNS)
    for entry, row in zip(entries, rows):
        table.add_row(*(_cell(section, header, value, entry) for (header, _), value in zip(section.columns, row)))
    return table


def _stacked(section: Section, entries, rows: list[list[str]], width: int) -> Text:
    """A section too wide for the console as one block per entry: its first column, then
    ``header: value`` lines. Paths stay whole (a folded path is easily misread, and grep
    misses it); only the prose wraps, under its header."""
    import textwrap

    lead = section.lead
    label = max(len(header) for header, _ in section.columns[lead:]) + 2
    out = Text(f"{section.title} ({len(entries)})\n", style="bold")
    for entry, row in zip(entries, rows):
        out.append("  ")
        for (header, _), value in zip(section.columns[:lead], row[:lead]):
            out.append(_cell(section, header, value, entry))
            out.append("  ")
        out.rstrip()
        out.append("\n")
        for (header, _), value in zip(section.columns[lead:], row[lead:]):
            if not value:
                continue
            head = f"    {header + ':':<{label}}"
            if header in PROSE_COLUMNS:
                value = textwrap.fill(value, max(width - len(head), PROSE_MIN_WIDTH),
                                      subsequent_indent=" " * len(head),
                                      break_long_words=False, break_on_hyphens=False)
            out.append(head)
            out.append(_cell(section, header, value, entry))
            out.append("\n")
    out.rstrip()
    return out


def summary(plan: BindPlan) -> str:
    statuses = Counter(c.status for c in plan.checks)
    return SUMMARY.format(mounts=len(plan.mounts), devices=len(plan.devices), env=len(plan.env),
                          links=len(plan.links), ok=statuses[Status.OK], warn=statuses[Status.WARN],
                          fail=statuses[Status.FAIL], rejected=len(plan.rejected), digest=plan.digest)


def render_table(plan: BindPlan, *, color: bool = False, width: int | None = None) -> str:
    """The plan as section tables, then a one-line summary.

    ``width`` is the console's ($COLUMNS, the terminal's); a section whose paths and names do
    not fit in it is stacked, one block per entry, so 80 columns stay readable. Without one
    each table is as wide as its widest row, so no line wraps and grep finds every path whole.
    """
    rows = {section.attr: _rows(plan, section) for section in SECTIONS}
    width = width or max((sum(_widths(s, rows[s.attr])) for s in SECTIONS if rows[s.attr]), default=80)
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, emoji=False)
    for section in SECTIONS:
        console.print(_table(plan, section, rows[section.attr], width))
    console.print(Text(summary(plan)), soft_wrap=True)  # one line, however long: grep finds the digest
    return "".join(_trimmed(line) + "\n" for line in out.getvalue().splitlines())


def _trimmed(line: str) -> str:
    """``line`` without the padding rich adds up to the table's width: noise in a log or a diff."""
    tail = _TRAILING_BLANKS.search(line)
    if tail is None:
        return line
    return line[:tail.start()] + (RESET if "\x1b" in tail.group() else "")


# --- explain ---------------------------------------------------------------------------------------------

WHY_MOUNT = "{destination} is bound from {source} ({kind}, {options}) by {provider}, rule {rule}: {reason}"
WHY_DEVICE = "{path} is device {numbers} from host {source} by {provider}, rule {rule}: {reason}"
WHY_ENV = "{name} is {change} by {provider}: {reason}"
WHY_LINK = "{path} links to {target}, made by {provider}: {reason}"
WHY_CHECK = "check {name} {status} ({provider}): {message}"
WHY_CHECK_FIX = "check {name} {status} ({provider}): {message}; fix: {fix}"
WHY_REJECTED = "not bound: {candidate}: {reason} ({provider})"
NO_REASON = "no reason recorded"
ENV_CHANGE = {
    EnvAction.SET: "set to {value}",
    EnvAction.PREPEND: "prepended with {value}",
    EnvAction.APPEND: "appended with {value}",
    EnvAction.PASS: "passed through from the host",
    EnvAction.UNSET: "unset",
}


def _why(entry: Mount | Device | EnvOp | Link | Check | Rejected) -> str:
    reason = getattr(entry, "reason", "") or NO_REASON
    match entry:
        case Mount():
            return WHY_MOUNT.format(destination=entry.destination, source=entry.source, kind=entry.kind,
                                    options=",".join(entry.options), provider=entry.provider,
                                    rule=entry.rule, reason=reason)
        case Device():
            return WHY_DEVICE.format(path=entry.path, numbers=_numbers(entry), source=entry.source,
                                     provider=entry.provider, rule=entry.rule, reason=reason)
        case EnvOp():
            return WHY_ENV.format(name=entry.name, change=ENV_CHANGE[entry.action].format(value=entry.value),
                                  provider=entry.provider, reason=reason)
        case Link():
            return WHY_LINK.format(path=entry.path, target=entry.target, provider=entry.provider, reason=reason)
        case Check():
            return (WHY_CHECK_FIX if entry.fix else WHY_CHECK).format(
                name=entry.name, status=entry.status, provider=entry.provider or "hpcbind",
                message=entry.message, fix=entry.fix)
        case Rejected():
            return WHY_REJECTED.format(candidate=entry.candidate, reason=reason, provider=entry.provider)
    raise TypeError(f"no sentence for {type(entry).__name__}")


def explain(plan: BindPlan) -> str:
    """One sentence per entry, check and rejection, in table order."""
    return "".join(_why(entry) + "\n" for section in SECTIONS for entry in getattr(plan, section.attr))


# --- diff ------------------------------------------------------------------------------------------------


def _line(section: Section, entry: Any) -> str:
    """The entry as a diff line: its table row ("-" for an empty cell), then its extras if set."""
    cells = [get(entry) or "-" for _, get in section.columns]
    return "  ".join([*cells, *filter(None, (get(entry) for _, get in section.extra))])


def _grouped(section: Section, entries: Iterable[Any]) -> dict[tuple[str, ...], list[str]]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for entry in entries:
        groups.setdefault(section.key(entry), []).append(_line(section, entry))
    return groups


def _minus(lines: list[str], other: list[str]) -> list[str]:
    """``lines`` less one occurrence of each line in ``other``, order kept."""
    left = Counter(other)
    kept = []
    for line in lines:
        if left[line]:
            left[line] -= 1
        else:
            kept.append(line)
    return kept


def _section_diff(section: Section, a: BindPlan, b: BindPlan) -> list[str]:
    """Entries paired by key, so a changed entry shows as its old line then its new line.

    A key can hold several entries (two prepends to LD_LIBRARY_PATH, one fact per GPU); they
    are compared as multisets, so only the lines that really differ show.
    """
    old, new = _grouped(section, getattr(a, section.attr)), _grouped(section, getattr(b, section.attr))
    lines: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, []), new.get(key, [])
        lines += [f"-{line}" for line in _minus(before, after)] + [f"+{line}" for line in _minus(after, before)]
    return lines


def diff(a: BindPlan, b: BindPlan, a_name: str = "a", b_name: str = "b") -> str:
    """A unified-diff-like text of what changed from plan ``a`` to plan ``b``; "" when identical."""
    if a.digest == b.digest:
        return ""
    out = [f"--- {a_name} {a.digest}", f"+++ {b_name} {b.digest}"]
    if a.request != b.request:
        out += ["@@ request @@", f"-{' '.join(a.request) or '-'}", f"+{' '.join(b.request) or '-'}"]
    for section in (*SECTIONS, FACTS):
        lines = _section_diff(section, a, b)
        if lines:
            out += [f"@@ {section.title.lower()} @@", *lines]
    return "\n".join(out) + "\n"
