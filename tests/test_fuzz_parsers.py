"""Fuzzing the text parsers a user or an image controls: definition files, ``--bind`` specs,
bind destinations inside a hostile image, and ``--env-file``.

As the SIF fuzz in test_sif_hostile.py does, each test holds a parser to its contract: a
value, or one HpcbindError line naming the problem and the fix, never another exception.
On top of that come the properties the modules document. Definition-file seeds are real
definition files (the example image's, the deffile tests', the one inside the busybox
SIF), mutated line by line and character by character. Every test is derandomized: CI
runs the same examples on every push, so a failure there is a regression, not a new draw.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BUSYBOX_SIF, REPO
from hpcbind.errors import HpcbindError
from hpcbind.image.deffile import (
    APP_SECTIONS,
    HEADER_KEYS,
    SECTIONS,
    Definition,
    Script,
    parse,
    parse_file,
    parse_labels,
    section_argv,
    split_shebang,
)
from hpcbind.image.sif import DataType, SifImage
from hpcbind.runtime.binds import Bind, container_path, parse_bind_specs
from hpcbind.runtime.environment import parse_env_assignments, read_env_file
from test_deffile import FULL, MULTI


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def assert_user_error(err: HpcbindError) -> None:
    """The CLI prints ``str(err)`` as one line; the parts must be one line already."""
    assert err.what and "\n" not in err.what
    assert err.fix and "\n" not in err.fix


# ------------------------------------------------------------------------ definition files

def _sif_definition(path: Path) -> str:
    with SifImage.open(path) as image:
        (deffile,) = [d for d in image.descriptors if d.data_type == DataType.DEFFILE]
        return image.read(deffile).decode()


APPS = """\
Bootstrap: docker
From: busybox:1.36
Include: a\\n\\
    b \\
    c
OtherURL2: http://x/repo

%appinstall foo
    make
%apprun foo
    exec foo "$@"
%applabels foo
    Maintainer someone
%runscript -x # trace
    #!/bin/bash
    exec foo
"""
SEEDS = [FULL, MULTI, APPS, (REPO / "examples" / "example.def").read_text(),
         _sif_definition(BUSYBOX_SIF)]
# Lines that open, close or confuse the grammar's constructs.
TOKEN_LINES = [
    "Bootstrap: scratch", "BOOTSTRAP:docker", "bootstrap:", "Stage: build", "Stage: final",
    "From: {{ BASE }}", "Include: a \\", "Include: a\\n\\", "\\", "Frm: x", "otherurl12: x",
    "key:", ":value", "no colon", "%post", "%POST -c", "%post -c /bin/bash # c", "%setup -u",
    "%files", "%files from build", "%files from", "%files into x", "%labels", "%arguments",
    "  BASE=base.sif", "  TAG=v{{ BASE }}", "=x", "%appinstall", "%apprun foo",
    "%applabels foo", "%runscript -x", "%test", "  #!/bin/bash", "#!", "%", "%%", "% post",
    "%unknown", '  "a b" /c', "  'unclosed", "  a b c", "  echo {{ X }}", "  # {{ X }}",
    "{{", "}}", "{{ }}", "{{{{ BASE }}}}", "Author me", "  key", "#", "", "   ", "\t",
]
SPECIALS = ["{{", "}}", "{{ BASE }}", "\\", "#", "#!", ":", "%", '"', "'", " ", "\t", "\n", "\r",
            "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x00", "é", "İ"]
LINE = st.one_of(st.sampled_from(TOKEN_LINES), st.text(max_size=30))
INDEX = st.integers(0, 200)  # taken modulo the number of lines
EDIT = st.one_of(
    st.tuples(st.just("delete"), INDEX),
    st.tuples(st.just("duplicate"), INDEX),
    st.tuples(st.just("insert"), INDEX, LINE),
    st.tuples(st.just("swap"), INDEX, INDEX),
    st.tuples(st.just("swapcase"), INDEX),
    st.tuples(st.just("splice"), INDEX, st.integers(0, 80), st.sampled_from(SPECIALS)),
    st.tuples(st.just("cut"), st.integers(0, 4000)),
)


def edit(text: str, change: tuple) -> str:
    kind, *args = change
    if kind == "cut":
        return text[:args[0]]
    lines = text.split("\n")
    at = args[0] % len(lines)
    if kind == "delete":
        del lines[at]
    elif kind == "duplicate":
        lines.insert(at, lines[at])
    elif kind == "insert":
        lines.insert(at, args[1])
    elif kind == "swap":
        other = args[1] % len(lines)
        lines[at], lines[other] = lines[other], lines[at]
    elif kind == "swapcase":
        lines[at] = lines[at].swapcase()
    else:
        column, token = args[1] % (len(lines[at]) + 1), args[2]
        lines[at] = lines[at][:column] + token + lines[at][column:]
    return "\n".join(lines)


def edits(seed: str, changes: list[tuple]) -> str:
    for change in changes:
        seed = edit(seed, change)
    return seed


MUTATED = st.builds(edits, st.sampled_from(SEEDS), st.lists(EDIT, min_size=1, max_size=6))
RANDOM_TEXT = st.one_of(
    st.lists(st.one_of(LINE, st.sampled_from(SPECIALS)), max_size=20).map("\n".join),
    st.lists(st.one_of(st.sampled_from(SPECIALS), st.characters()), max_size=300).map("".join),
)


def check_parse(text: str) -> Definition | None:
    """Parse ``text``; hold an error to its format and a result to the documented grammar."""
    try:
        definition = parse(text, "fuzz.def")
    except HpcbindError as err:
        assert_user_error(err)
        # "Every error names file:line": a line the file has.
        line = re.match(r"fuzz\.def:(\d+): ", str(err))
        if line is None:
            assert str(err).startswith("fuzz.def: empty definition file")
        else:
            assert 1 <= int(line[1]) <= text.count("\n") + 1, str(err)
        return None
    check_definition(definition)
    return definition


def check_definition(definition: Definition) -> None:
    raw_lines = definition.raw.split("\n")
    earlier: set[str] = set()
    assert definition.stages
    for number, stage in enumerate(definition.stages):
        # A stage is its file's text from its first line on, and every stage after the first
        # begins at a Bootstrap line; with several stages, each has a header.
        assert "\n".join(raw_lines[stage.line - 1:]).startswith(stage.raw)
        if number:
            assert stage.raw.lower().startswith("bootstrap:")
        if len(definition.stages) > 1:
            assert stage.header
        lines = stage.raw.split("\n")

        def at(line: int) -> str:
            assert stage.line <= line < stage.line + len(lines)
            return lines[line - stage.line]

        keys = [f.key for f in stage.header]
        assert len(keys) == len(set(keys))
        for field in stage.header:
            assert field.key in HEADER_KEYS or re.fullmatch(r"otherurl\d+", field.key)
            assert at(field.line).strip().lower().startswith(field.key)
        names = [s.name for s in stage.scripts]
        assert len(names) == len(set(names))
        body_lines = set(lines)
        for script in stage.scripts:
            assert script.name in SECTIONS and script.name != "labels"
            assert at(script.line).split()[0].lower() == f"%{script.name}"
            assert "\n" not in script.args
            assert all(line in body_lines for line in script.body.split("\n")[:-1])
            check_script_commands(script)
        for app in stage.apps:
            assert app.name in APP_SECTIONS
            assert app.args and app.args.split() == [app.args]
            assert at(app.line).split()[0].lower() == f"%{app.name}"
        for files in stage.files:
            assert files.stage == "" or files.stage in earlier
            for copy in files.copies:
                assert at(copy.line).strip() and not at(copy.line).strip().startswith("#")
        labels = [label.key for label in stage.labels]
        assert len(labels) == len(set(labels))
        for label in stage.labels:
            assert label.key.split() == [label.key]
            line = at(label.line).strip()
            assert line.startswith(label.key) and line.endswith(label.value)
        if stage.name:
            earlier.add(stage.name)


def check_script_commands(script: Script) -> None:
    """What the build makes of a parsed section: an argv ending in the script, a shebang."""
    try:
        argv = section_argv(script.name, "/.fuzz.script", script.args)
        assert argv[:2] == ["/bin/sh", "-ex"] and argv[-1].endswith("/.fuzz.script")
    except HpcbindError as err:
        assert_user_error(err)
        assert "-c needs an interpreter" in err.what
    if script.name in ("runscript", "startscript", "test"):
        shebang, rest = split_shebang(script)
        assert shebang.startswith("#!") and "\n" not in shebang
        assert script.body.endswith(rest)


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_parse(seed: int) -> None:
    assert check_parse(SEEDS[seed]) is not None


@fuzz(2000)
@given(text=MUTATED)
def test_mutated_definition_files(text: str) -> None:
    check_parse(text)


@fuzz(1000)
@given(text=RANDOM_TEXT)
def test_random_definition_text(text: str) -> None:
    check_parse(text)


BUILD_ARG = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda name: name != "VERSION")  # FULL defines it
ONE_LINE = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
                   max_size=20)
DEFAULT = st.text(st.characters(whitelist_categories=("L", "N", "P"), blacklist_characters="{}#"),
                  min_size=1, max_size=20)


@fuzz(500)
@given(seed=st.sampled_from(SEEDS), name=BUILD_ARG, given_value=st.none() | ONE_LINE,
       default=st.none() | DEFAULT, blank=st.sampled_from(" \t\r\x0b\x0c\x1c\x85\u2028"))
def test_build_arguments(seed: str, name: str, given_value: str | None, default: str | None,
                         blank: str) -> None:
    """``--build-arg`` wins over the ``%arguments`` default; a template neither defines is an
    error naming it and its line; a template in a comment is left alone, whatever blank
    precedes it on the line; values go in as they are, not expanded again."""
    head = seed.rstrip("\n")
    comment = f"    # note{blank}{{{{ {name} }}}} in a comment\n"
    text = f"{head}\n%post\n{comment}    echo {{{{ {name} }}}}\n"
    if default is not None:
        text += f"%arguments\n    {name}={default}\n"
    build_args = {} if given_value is None else {name: given_value}
    expected = default if given_value is None else given_value
    if expected is None:
        with pytest.raises(HpcbindError) as err:
            parse(text, "fuzz.def", build_args)
        assert_user_error(err.value)
        assert str(err.value).startswith(
            f"fuzz.def:{head.count(chr(10)) + 4}: build argument {name!r} is not defined")
        return
    definition = parse(text, "fuzz.def", build_args)
    body = definition.final.script("post").body
    assert body.endswith(f"{comment}    echo {expected}\n")


@fuzz(200)
@given(data=st.one_of(st.binary(max_size=300), MUTATED.map(lambda t: t.encode(errors="replace"))))
def test_definition_files_on_disk(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("deffile") / "fuzz.def"
    path.write_bytes(data)
    try:
        definition = parse_file(path)
    except HpcbindError as err:
        assert_user_error(err)
        return
    # read_text() decodes by the locale and translates newlines; parse() takes text as it is.
    if data.isascii() and b"\r" not in data:
        assert definition == parse(data.decode(), str(path))


@fuzz(200)
@given(text=RANDOM_TEXT)
def test_labels_text(text: str) -> None:
    """%labels and $APPTAINER_LABELS: the first word of each line is a key, the rest its value."""
    labels = parse_labels(text)
    keys = {line.split()[0] for line in text.split("\n")
            if line.strip() and not line.strip().startswith("#")}
    assert set(labels) == keys
    assert all("\n" not in value and value == value.strip() for value in labels.values())


# ------------------------------------------------------------------------------ bind specs

CWD = "/work/dir"
SAFE_NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,10}", fullmatch=True).filter(
    lambda name: name not in (".", ".."))
SAFE_PATH = st.lists(SAFE_NAME, min_size=1, max_size=4).map("/".join)
HOSTILE_PATH = st.lists(st.sampled_from(["", ".", "..", "a", "b", "...", " "]), max_size=8).map(
    "/".join)
SPEC_TEXT = st.text(alphabet=st.one_of(st.sampled_from(list("/:,.ab rwo\t\n")), st.characters()),
                    max_size=40)


def canonical(path: str) -> str:
    """The absolute path with '', '.' and '..' resolved lexically (what the container sees)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            parts = parts[:-1]
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def check_binds(binds: list[Bind]) -> None:
    for bind in binds:
        assert bind.destination == canonical(bind.destination)
        assert bind.source.startswith("/") and ".." not in bind.source.split("/")
        assert bind.read_only in (True, False) and bind.reason == "--bind"


@fuzz(400)
@given(specs=st.lists(st.one_of(SPEC_TEXT, HOSTILE_PATH.map(lambda p: f"/x:/{p}:ro")),
                      max_size=3))
def test_random_bind_specs(specs: list[str]) -> None:
    try:
        binds = parse_bind_specs(specs, CWD)
    except HpcbindError as err:
        assert_user_error(err)
        return
    check_binds(binds)
    items = [item.strip() for spec in specs for item in spec.split(",") if item.strip()]
    assert len(binds) == len(items)
    for bind, item in zip(binds, items):
        fields = item.split(":")
        assert bind.destination == canonical(fields[1] if len(fields) > 1 and fields[1] else
                                             fields[0])


@fuzz(200)
@given(option=st.text(st.characters(blacklist_characters=":,", blacklist_categories=("Cs",)),
                      max_size=6))
def test_bind_options_other_than_ro_rw_are_refused(option: str) -> None:
    spec = f"/src:/dst:{option}"
    if option.rstrip() in ("ro", "rw"):  # the item is stripped: a trailing blank is allowed
        assert parse_bind_specs([spec], CWD)[0].read_only == (option.rstrip() == "ro")
        return
    with pytest.raises(HpcbindError) as err:
        parse_bind_specs([spec], CWD)
    assert_user_error(err.value)
    assert "bad bind option" in err.value.what


BIND = st.tuples(st.booleans(), SAFE_PATH, st.none() | SAFE_PATH,
                 st.sampled_from([None, "ro", "rw"]))


@fuzz(200)
@given(binds=st.lists(BIND, min_size=1, max_size=4), dst_prefix=HOSTILE_PATH)
def test_bind_specs_round_trip(binds: list[tuple], dst_prefix: str) -> None:
    """``SRC[:DST[:ro|rw]]`` comes apart into the paths it was made of; a destination's
    '..' and '.' resolve lexically and never climb above '/'."""
    items, expected = [], []
    for absolute, src, dst, option in binds:
        # A relative source is relative to the current directory; without a destination it
        # would be the destination too, which must be absolute.
        source = f"/{src}" if absolute or dst is None else src
        item = source if dst is None and option is None else \
            f"{source}:{'' if dst is None else f'/{dst_prefix}/{dst}'}"
        if option is not None:
            item += f":{option}"
        items.append(item)
        destination = source if dst is None else canonical(f"/{dst_prefix}/{dst}")
        expected.append(Bind(os.path.join(CWD, source), destination, read_only=option == "ro",
                             reason="--bind"))
    assert parse_bind_specs([",".join(items)], CWD) == expected


# ------------------------------------------------------------------ destinations in an image

# Every image has these directories, two deep, and a file "f" at the top and in "a", so that
# most paths a link leads to exist and the kernel can be asked where they lead.
DIR_NAMES = ["a", "etc", "run"]
SKELETON = [[top] for top in DIR_NAMES] + [[top, sub] for top in DIR_NAMES for sub in DIR_NAMES]
LINK_AT = st.tuples(st.lists(st.sampled_from(DIR_NAMES), max_size=2),
                    st.sampled_from(["l", "m", "etc"]))
COMPONENTS = [*DIR_NAMES, "l", "m", "f", "..", "."]
RELATIVE = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=6).map("/".join)
LINK_PATH = st.lists(st.sampled_from([*COMPONENTS, ""]), max_size=6).map("/".join)
OUTSIDE = "<outside>"  # stands for the host directory beside the image root
LINK_TARGET = st.one_of(RELATIVE, LINK_PATH.map(lambda p: f"/{p}"), st.just(OUTSIDE),
                        st.sampled_from(["/", "..", "../..", "../../..", "/..", "/../.."]))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_BENEATH = 0x08
_RESOLVE_IN_ROOT = 0x10
_NO_OPENAT2 = (errno.ENOSYS, errno.EPERM)
_libc = ctypes.CDLL(None, use_errno=True)


def kernel_lookup(root_fd: int, destination: str,
                  resolve: int = _RESOLVE_IN_ROOT) -> tuple[os.stat_result | None, int]:
    """The file the kernel reaches for ``destination`` from ``root_fd`` (openat2), and 0; or
    None and the errno. RESOLVE_IN_ROOT: as if ``root_fd`` were '/' (absolute links and '..'
    stay in the root), the reference for where an image's links lead; RESOLVE_BENEATH: a
    '..' or absolute link that would leave it fails with EXDEV. ENOSYS or EPERM: this kernel
    (or its seccomp filter) has no openat2."""
    how = _OpenHow(flags=os.O_PATH | os.O_CLOEXEC, resolve=resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(root_fd),
                       ctypes.c_char_p(destination.encode()), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        return None, ctypes.get_errno()
    try:
        return os.fstat(fd), 0
    finally:
        os.close(fd)


@fuzz(400)
@given(links=st.lists(st.tuples(LINK_AT, LINK_TARGET), max_size=6),
       path=LINK_PATH, via=st.none() | st.integers(0, 5),
       rest=st.lists(st.sampled_from(COMPONENTS), max_size=3))
def test_destinations_never_leave_the_root(links: list[tuple], path: str, via: int | None,
                                           rest: list[str],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever links a hostile image holds (absolute, climbing, looping, naming a host path),
    a bind destination resolves to a path under the image root that crosses no symlink, the
    file the kernel reaches with the root as '/' (openat2 RESOLVE_IN_ROOT), nothing where the
    kernel finds nothing, or one HpcbindError, given only where the kernel stops too (a loop,
    a name that is no directory) or would leave the root (RESOLVE_BENEATH). Seen red with
    the protection removed: a resolver refusing every destination fails (the kernel resolves
    beneath the root what it refused), one that applies '..' lexically fails on '/a/a/a/..'
    (the kernel: ENOENT)."""
    # Most destinations go through one of the links, so that links are followed often.
    if via is None or not links:
        destination = f"/{path}"
    else:
        (parents, name), _ = links[via % len(links)]
        destination = "/".join(["", *parents, name, *rest])
    base = Path(os.path.realpath(tmp_path_factory.mktemp("tree")))
    (base / "outside" / "etc").mkdir(parents=True)
    root = str(base / "root")
    os.mkdir(root)
    for parts in SKELETON:  # before any link exists, so nothing is created through one
        os.mkdir(os.path.join(root, *parts))
    for parts in ([], ["a"]):
        Path(root, *parts, "f").touch()
    for (parents, name), target in links:
        link = os.path.join(root, *parents, name)
        parent = os.path.dirname(link)
        if os.path.isdir(parent) and os.path.realpath(parent) == parent and \
                not os.path.lexists(link):
            os.symlink(str(base / "outside") if target == OUTSIDE else target, link)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        reached, error = kernel_lookup(root_fd, "." + destination)
        beneath_error = kernel_lookup(root_fd, "." + destination, _RESOLVE_BENEATH)[1]
    finally:
        os.close(root_fd)
    if error in _NO_OPENAT2:
        pytest.skip("no openat2 here: nothing to compare with")
    assert error in (0, errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
    try:
        resolved = container_path(root, destination)
    except HpcbindError as err:
        assert_user_error(err)
        assert err.what.startswith(f"refusing bind destination {destination}: ")
        # refused only where the kernel also stops: a loop, or a way out of the root
        if "too many levels" in err.what:
            assert error == errno.ELOOP
        elif "is not a directory of the image" in err.what:
            assert error in (errno.ENOENT, errno.ENOTDIR)
        else:
            assert "climbs above the container root" in err.what
            assert beneath_error in (errno.EXDEV, errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
        return
    assert resolved == root or resolved.startswith(root + "/")
    assert os.path.realpath(resolved) == resolved  # no link left for the mount to follow
    assert error != errno.ELOOP  # what the kernel finds a loop must be refused
    if reached is not None:  # the same file the kernel reaches
        assert (reached.st_dev, reached.st_ino) == (os.stat(resolved).st_dev,
                                                    os.stat(resolved).st_ino)
    elif error == errno.ENOENT:  # and nothing where the kernel finds nothing
        assert not os.path.exists(resolved)


# ------------------------------------------------------------------------------- env files

ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() splits
ENV_VALUE = st.text(st.characters(blacklist_characters=LINE_BREAKS, blacklist_categories=("Cs",)),
                    max_size=20)
PLAIN_VALUE = st.from_regex(r"[A-Za-z0-9/:._=-]{0,12}", fullmatch=True)
ENV_ITEM = st.builds("{}{}{}".format,
                     st.text(st.one_of(st.sampled_from(list("A_z09 $-")),
                                       st.characters(whitelist_categories=("L", "N"))),
                             max_size=6),
                     st.sampled_from(["=", ""]), ENV_VALUE)
ENV_LINE = st.one_of(
    st.tuples(st.just("plain"), ENV_NAME, PLAIN_VALUE),
    st.tuples(st.sampled_from(["'", '"']), ENV_NAME, ENV_VALUE),
    st.tuples(st.just("export"), ENV_NAME, ENV_VALUE),
    st.tuples(st.just("comment"), st.just(""), ENV_VALUE),
)


@fuzz(300)
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(st.one_of(SPEC_TEXT, ENV_VALUE), max_size=6).map(
                          lambda lines: "\n".join(lines).encode(errors="replace"))))
def test_random_env_files(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("env") / "env"
    path.write_bytes(data)
    try:
        pairs = read_env_file(str(path))
    except HpcbindError as err:
        assert_user_error(err)
        return
    # A name the image's /bin/sh can export, a value that stays on its line.
    for name, value in pairs:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
        assert not any(c in LINE_BREAKS for c in value)


@fuzz(300)
@given(lines=st.lists(ENV_LINE, max_size=6))
def test_env_file_round_trip(lines: list[tuple],
                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """What a user writes as NAME=VALUE, NAME='VALUE', export NAME="VALUE" comes back as is,
    comments and blank lines left out."""
    text, expected = [], []
    for form, name, value in lines:
        if form == "comment":
            text.append(f"  # {value}")
            continue
        quote = "" if form == "plain" else '"' if form == "export" else form
        text.append(f"{'export ' if form == 'export' else ''}{name}={quote}{value}{quote}")
        expected.append((name, value))
    path = tmp_path_factory.mktemp("env") / "env"
    path.write_text("\n".join(text), encoding="utf-8")
    assert read_env_file(str(path)) == expected


@fuzz(300)
@given(items=st.lists(ENV_ITEM, max_size=4))
def test_env_assignments(items: list[str]) -> None:
    """``--env`` items: assignments to a name the image's /bin/sh can export, or one error."""
    try:
        pairs = parse_env_assignments(items, "--env")
    except HpcbindError as err:
        assert_user_error(err)
        return
    assert [value for _, value in pairs] == [item.partition("=")[2] for item in items]
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name, _ in pairs)
