"""Apptainer/SingularityCE definition files, parsed into frozen values.

The grammar is Apptainer's (``pkg/build/types/parser/deffile.go``), so that a file that builds
there parses here the same way:

- A file holds one or more *stages*; each starts at a line beginning ``Bootstrap:`` (any case).
- A stage's *header* is ``Key: value`` lines up to its first section. Keys are case-insensitive
  and must be ones Apptainer knows; ``#`` starts a comment; a value ending in ``\\`` continues
  on the next line.
- A *section* starts at a line whose first word begins with ``%``; the rest of that line is the
  section's arguments (``%post -c /bin/bash``, ``%files from build``, ``%apprun NAME``). Its body
  runs to the next section. A script section given twice is concatenated, as Apptainer does.
- ``%files`` lines are ``SOURCE [DEST]``, quoted like a shell word; ``%labels`` lines are
  ``KEY VALUE``; ``%arguments`` lines are ``KEY=VALUE`` defaults for ``{{ KEY }}`` templates,
  which ``--build-arg KEY=VALUE`` overrides.

Every error names ``file:line`` and the fix. This module only parses: what can be *built* is
decided by ``hpcbind.image.build``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcbind.errors import HpcbindError

# Apptainer's validHeaders; "otherurlN" (N digits) is the yum/zypper extra-repository form.
HEADER_KEYS = frozenset({
    "bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include",
    "library", "registry", "namespace", "stage", "product", "user", "regcode", "productpgp",
    "registerurl", "modules", "fingerprints", "confurl", "setopt",
})
_OTHERURL = re.compile(r"otherurl\d+")

# Section name -> what it is for; the order is the order of Apptainer's documentation.
SECTIONS: Mapping[str, str] = {
    "arguments": "build-argument defaults (KEY=VALUE)",
    "pre": "host script before bootstrap (deprecated)",
    "setup": "host script after bootstrap, with $APPTAINER_ROOTFS",
    "files": "files copied in from the host or an earlier stage",
    "post": "script run inside the image as root",
    "environment": "shell code sourced at run time",
    "runscript": "what 'run' executes",
    "startscript": "what 'instance start' executes",
    "test": "script run after the build and by 'test'",
    "labels": "KEY VALUE metadata",
    "help": "text shown by 'run-help'",
}
# SCIF app sections: their argument is the app's name.
APP_SECTIONS = frozenset({
    "appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun", "appstart",
})

_STAGE_START = re.compile(r"^bootstrap:", re.IGNORECASE | re.MULTILINE)
_BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")
# Apptainer leaves templates on comment lines alone; "#!" (a shebang) is not a comment.
_COMMENT_BEFORE = re.compile(r"#[^!]")


@dataclass(frozen=True, slots=True)
class HeaderField:
    key: str  # lower case, as Apptainer stores it
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Script:
    """A script or text section; ``args`` is the rest of its ``%name`` line."""

    name: str
    args: str
    body: str
    line: int


@dataclass(frozen=True, slots=True)
class FileCopy:
    src: str
    dst: str  # "" means the same path as src, inside the image
    line: int


@dataclass(frozen=True, slots=True)
class FilesSection:
    stage: str  # "" for files from the host; else the stage named in "%files from STAGE"
    copies: tuple[FileCopy, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Label:
    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Stage:
    header: tuple[HeaderField, ...]
    scripts: tuple[Script, ...]  # one per section name, in order of first appearance
    files: tuple[FilesSection, ...]
    labels: tuple[Label, ...]
    apps: tuple[Script, ...]  # SCIF app sections, args = app name
    raw: str  # this stage's text
    line: int  # where it starts in the file

    def field(self, key: str) -> HeaderField | None:
        return next((f for f in self.header if f.key == key), None)

    def get(self, key: str, default: str = "") -> str:
        found = self.field(key)
        return default if found is None else found.value

    def script(self, name: str) -> Script | None:
        return next((s for s in self.scripts if s.name == name), None)

    @property
    def bootstrap(self) -> str:
        return self.get("bootstrap").lower()

    @property
    def name(self) -> str:
        return self.get("stage")


@dataclass(frozen=True, slots=True)
class Definition:
    path: str  # as given, for messages
    stages: tuple[Stage, ...]
    raw: str  # the whole file, templates filled in

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_file(path: Path, build_args: Mapping[str, str] | None = None) -> Definition:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise HpcbindError(f"{path} is not a text file", "give a definition file, a SIF, a "
                           "squashfs file or a sandbox directory") from None
    except OSError as err:
        raise HpcbindError(f"can't read definition file {path}: {err.strerror}",
                           "check the path and its permissions") from None
    return parse(text, str(path), build_args)


def parse(text: str, path: str = "<definition>",
          build_args: Mapping[str, str] | None = None) -> Definition:
    """Parse a definition file's text; ``build_args`` fill ``{{ KEY }}`` before defaults."""
    given = dict(build_args or {})
    stages: list[Stage] = []
    filled: list[str] = []
    for chunk, first_line in _stage_chunks(text):
        # A first pass reads the stage's %arguments defaults, as Apptainer's does.
        defaults = _argument_defaults(_parse_stage(chunk, first_line, path))
        chunk = _fill_templates(chunk, first_line, path, given, defaults)
        filled.append(chunk)
        stage = _parse_stage(chunk, first_line, path)
        if stage.header or stage.scripts or stage.files or stage.labels or stage.apps:
            stages.append(stage)
    if not stages:
        raise HpcbindError(f"{path}: empty definition file",
                           "start it with 'Bootstrap: debootstrap' (or localimage, scratch)")
    _check_stage_names(stages, path)
    return Definition(path, tuple(stages), "".join(filled))


def section_argv(name: str, script_path: str, args: str) -> list[str]:
    """The command that runs a script section, as Apptainer's ``getSectionScriptArgs``.

    ``/bin/sh -ex SCRIPT`` by default; ``%post -c /bin/bash`` gives
    ``/bin/sh -ex -c "/bin/bash SCRIPT"``: everything after ``-c`` becomes one command line
    with the script path appended. A trailing ``# comment`` on the section line is ignored.
    """
    params = args.split("#")[0].split()
    if "-c" in params:
        at = params.index("-c")
        if at == len(params) - 1:
            raise HpcbindError(f"%{name} -c needs an interpreter",
                               f"write e.g. '%{name} -c /bin/bash'")
        return ["/bin/sh", "-ex", *params[:at + 1], " ".join([*params[at + 1:], script_path])]
    return ["/bin/sh", "-ex", *params, script_path]


def split_shebang(script: Script) -> tuple[str, str]:
    """(shebang line, rest) for a runscript/startscript/test, as Apptainer writes them.

    A body starting with ``#!`` keeps its interpreter; otherwise ``#!/bin/sh``. Section
    arguments (``%runscript -x``) are appended to the shebang.
    """
    shebang, body = "#!/bin/sh", script.body
    if script.body.strip().startswith("#!"):
        # From the first non-blank line: Apptainer takes the body's first line even when
        # blank, and so writes an empty shebang for "%runscript\n\n#!/bin/bash".
        first, _, body = script.body.lstrip().partition("\n")
        shebang = first.strip()
    args = script.args.split("#")[0]
    return (f"{shebang} {args}" if args else shebang), body


def parse_labels(text: str) -> dict[str, str]:
    """``KEY VALUE`` lines (the %labels and $APPTAINER_LABELS format) as a dict."""
    return {label.key: label.value for label in _labels(text, 0)}


def _stage_chunks(text: str) -> list[tuple[str, int]]:
    """The text of each stage and its first line number (1-based)."""
    starts = [0] + [m.start() for m in _STAGE_START.finditer(text) if m.start() > 0]
    bounds = zip(starts, [*starts[1:], len(text)])
    return [(text[a:b], text.count("\n", 0, a) + 1) for a, b in bounds]


def _parse_stage(chunk: str, first_line: int, path: str) -> Stage:
    lines = chunk.split("\n")
    if chunk.endswith("\n"):
        lines.pop()  # the empty string after the last newline is not a line
    starts = [i for i, line in enumerate(lines) if _section_word(line)]
    header_end = starts[0] if starts else len(lines)
    header = _header(lines[:header_end], first_line, path)
    raw_sections = [_raw_section(lines, at, end, first_line)
                    for at, end in zip(starts, [*starts[1:], len(lines)])]
    scripts: dict[str, Script] = {}
    files: dict[str, FilesSection] = {}
    labels: dict[str, Label] = {}
    apps: list[Script] = []
    for section in raw_sections:
        if section.name == "files":
            _add_files(files, section, path)
        elif section.name == "labels":
            # Per section, not on the concatenated body: a repeated %labels would otherwise
            # number its lines from the first one's.
            labels.update((label.key, label) for label in _labels(section.body, section.line))
        elif section.name in APP_SECTIONS:
            apps.append(_app(section, path))
        elif section.name in SECTIONS:
            _add_script(scripts, section)
        else:
            raise HpcbindError(
                f"{path}:{section.line}: unknown section %{section.name}",
                f"use one of {', '.join('%' + s for s in SECTIONS)} or the %app* sections")
    return Stage(
        header=header,
        scripts=tuple(scripts.values()),
        files=tuple(files.values()),
        labels=tuple(labels.values()),
        apps=tuple(apps),
        raw=chunk,
        line=first_line,
    )


def _section_word(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0].startswith("%")


def _raw_section(lines: list[str], at: int, end: int, first_line: int) -> Script:
    word, *rest = lines[at].split(None, 1)
    body = "".join(line + "\n" for line in lines[at + 1:end])
    return Script(word[1:].lower(), rest[0].strip() if rest else "", body, first_line + at)


def _header(lines: list[str], first_line: int, path: str) -> tuple[HeaderField, ...]:
    fields: dict[str, HeaderField] = {}
    pending: HeaderField | None = None  # a value continued with a trailing backslash
    for number, line in enumerate(lines, first_line):
        line = line.strip()
        if not line or line.startswith("#"):
            if pending is not None:  # a blank or comment line ends a continuation
                fields[pending.key] = _checked_key(pending, path)
                pending = None
            continue
        text = line.split("#")[0]
        if pending is not None:
            field = HeaderField(pending.key, pending.value + text.strip(), pending.line)
        else:
            key, colon, value = text.partition(":")
            if not colon:
                raise HpcbindError(f"{path}:{number}: header line {line!r} has no value",
                                   "write header lines as 'Key: value'")
            field = HeaderField(key.strip().lower(), value.strip(), number)
        pending = None
        if field.value.endswith("\\"):
            # A trailing backslash-n-backslash continues the value after a newline.
            value = field.value[:-1]
            value = value[:-2] + "\n" if value.endswith("\\n") else value
            pending = HeaderField(field.key, value, field.line)
            continue
        fields[field.key] = _checked_key(field, path)
    if pending is not None:
        fields[pending.key] = _checked_key(pending, path)
    return tuple(fields.values())


def _checked_key(field: HeaderField, path: str) -> HeaderField:
    if field.key in HEADER_KEYS or _OTHERURL.fullmatch(field.key):
        return field
    raise HpcbindError(f"{path}:{field.line}: unknown header keyword {field.key!r}",
                       "use Bootstrap, From, OSVersion, MirrorURL, Include, Stage... "
                       "(see Apptainer's definition-file reference)")


def _add_script(scripts: dict[str, Script], section: Script) -> None:
    old = scripts.get(section.name)
    if old is None:
        scripts[section.name] = section
        return
    # Apptainer appends a repeated section's body; a later %name line's arguments win.
    scripts[section.name] = Script(old.name, section.args or old.args, old.body + section.body,
                                   old.line)


def _add_files(files: dict[str, FilesSection], section: Script, path: str) -> None:
    words = section.args.split("#")[0].split()
    if words and (len(words) != 2 or words[0].lower() != "from"):
        raise HpcbindError(f"{path}:{section.line}: bad %files arguments {section.args!r}",
                           "write '%files' or '%files from STAGE'")
    stage = words[1] if words else ""
    copies = tuple(_file_copy(line, number, path)
                   for number, line in enumerate(section.body.split("\n"), section.line + 1)
                   if line.strip() and not line.strip().startswith("#"))
    old = files.get(stage)
    files[stage] = FilesSection(stage, copies, section.line) if old is None else \
        FilesSection(stage, old.copies + copies, old.line)


def _file_copy(line: str, number: int, path: str) -> FileCopy:
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise HpcbindError(f"{path}:{number}: can't split %files line {line.strip()!r}: {err}",
                           "close the quotes") from None
    if len(words) > 2:
        raise HpcbindError(f"{path}:{number}: %files line {line.strip()!r} has "
                           f"{len(words)} words", "write 'SOURCE [DEST]'; quote paths with spaces")
    return FileCopy(words[0], words[1] if len(words) == 2 else "", number)


def _app(section: Script, path: str) -> Script:
    if not section.args:
        raise HpcbindError(f"{path}:{section.line}: %{section.name} needs an app name",
                           f"write '%{section.name} NAME'")
    return Script(section.name, section.args.split()[0], section.body, section.line)


def _labels(body: str, section_line: int) -> tuple[Label, ...]:
    found: dict[str, Label] = {}
    for number, line in enumerate(body.split("\n"), section_line + 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *value = line.split(None, 1)
        found[key] = Label(key, value[0].strip() if value else "", number)
    return tuple(found.values())


def _argument_defaults(stage: Stage) -> dict[str, str]:
    section = stage.script("arguments")
    defaults: dict[str, str] = {}
    if section is None:
        return defaults
    for line in section.body.split("\n"):
        key, equals, value = line.strip().partition("=")
        if equals and key.strip() and not line.strip().startswith("#"):
            defaults[key.strip()] = value.strip()
    return defaults


def _fill_templates(chunk: str, first_line: int, path: str, given: Mapping[str, str],
                    defaults: Mapping[str, str]) -> str:
    def value(name: str, number: int) -> str:
        if name in given:
            return given[name]
        if name in defaults:
            # A default may itself use other arguments: one level, as Apptainer.
            return _BUILD_ARG.sub(lambda m: given.get(m[1], defaults.get(m[1], m[0])),
                                  defaults[name])
        raise HpcbindError(f"{path}:{number}: build argument {name!r} is not defined",
                           f"pass --build-arg {name}=VALUE or set it in %arguments")

    # Lines end at "\n" alone, as for the rest of the parser: splitlines() also ends them at
    # \r, \f, \x1c..., which misnumbers them and cuts comments short.
    return "\n".join(
        _BUILD_ARG.sub(lambda m: m[0] if _COMMENT_BEFORE.search(line, 0, m.start())
                       else value(m[1], number), line)
        for number, line in enumerate(chunk.split("\n"), first_line))


def _check_stage_names(stages: list[Stage], path: str) -> None:
    seen: set[str] = set()
    for stage in stages:
        if len(stages) > 1 and not stage.header:
            raise HpcbindError(f"{path}:{stage.line}: a stage without a header",
                               "start every stage with 'Bootstrap:'")
        for files in stage.files:
            if files.stage and files.stage not in seen:
                raise HpcbindError(
                    f"{path}:{files.line}: %files from {files.stage}: no earlier stage is "
                    f"named {files.stage!r}",
                    "name the earlier stage with 'Stage: NAME' in its header")
        if stage.name:
            seen.add(stage.name)
