"""Definition-file parsing: every header form and section, and errors that name file:line.

The expected values follow Apptainer's parser (pkg/build/types/parser/deffile.go) and its
section-argument rules (internal/pkg/build/util.go getSectionScriptArgs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcbind.errors import HpcbindError
from hpcbind.image.deffile import (
    FileCopy,
    Label,
    Script,
    parse,
    parse_file,
    parse_labels,
    section_argv,
    split_shebang,
)

FULL = """\
# A definition with every section.
Bootstrap: debootstrap
OSVersion: bookworm   # trailing comment
MirrorURL: http://deb.debian.org/debian
Include: python3 \\
    openmpi-bin

%arguments
    VERSION=1.2

%pre
    echo pre
%setup
    touch "$APPTAINER_ROOTFS/setup-ran"
%files
    app.tar.gz /opt/
    "a file.txt" "/opt/a file.txt"
    # a comment line
    lonely.txt
%post -c /bin/bash
    echo post {{ VERSION }}
%environment
    export A=1
%runscript
    #!/bin/bash
    exec app "$@"
%startscript
    exec daemon
%test -x
    app --version
%labels
    Author someone
    Version {{ VERSION }}
%help
    Usage: run it.
"""


def test_header_forms() -> None:
    stage = parse(FULL, "full.def").final
    assert [(f.key, f.value, f.line) for f in stage.header] == [
        ("bootstrap", "debootstrap", 2),
        ("osversion", "bookworm", 3),
        ("mirrorurl", "http://deb.debian.org/debian", 4),
        ("include", "python3 openmpi-bin", 5),
    ]
    assert stage.bootstrap == "debootstrap"
    assert stage.get("osversion") == "bookworm"
    assert stage.get("from", "none") == "none"


@pytest.mark.parametrize(("line", "key", "value"), [
    ("BOOTSTRAP: scratch", "bootstrap", "scratch"),
    ("from:docker://ubuntu:22.04", "from", "docker://ubuntu:22.04"),  # first colon splits
    ("OtherURL1: http://x/repo", "otherurl1", "http://x/repo"),  # yum's numbered key
    ("Stage:   build  ", "stage", "build"),
])
def test_header_keys_values(line: str, key: str, value: str) -> None:
    stage = parse(f"{line}\n%post\n  true\n").final
    assert stage.field(key) is not None
    assert stage.get(key) == value


def test_header_continuation_with_newline_escape() -> None:
    stage = parse("Bootstrap: yum\nInclude: a\\n\\\n  b\n\n%post\n  true\n").final
    assert stage.get("include") == "a\nb"


def test_every_section() -> None:
    stage = parse(FULL, "full.def").final
    assert [s.name for s in stage.scripts] == [
        "arguments", "pre", "setup", "post", "environment", "runscript", "startscript", "test",
        "help"]
    post = stage.script("post")
    assert post == Script("post", "-c /bin/bash", "    echo post 1.2\n", 20)
    assert stage.script("setup").body == '    touch "$APPTAINER_ROOTFS/setup-ran"\n'
    assert stage.script("environment").body == "    export A=1\n"
    assert stage.script("runscript").body == '    #!/bin/bash\n    exec app "$@"\n'
    assert stage.script("test").args == "-x"
    assert stage.script("help").body == "    Usage: run it.\n"
    assert stage.script("arguments").body == "    VERSION=1.2\n\n"
    (files,) = stage.files
    assert files.stage == "" and files.line == 15
    assert files.copies == (
        FileCopy("app.tar.gz", "/opt/", 16),
        FileCopy("a file.txt", "/opt/a file.txt", 17),
        FileCopy("lonely.txt", "", 19),
    )
    assert stage.labels == (Label("Author", "someone", 32), Label("Version", "1.2", 33))
    assert stage.apps == ()


def test_raw_text_is_kept_with_templates_filled() -> None:
    definition = parse(FULL, "full.def")
    assert definition.raw == FULL.replace("{{ VERSION }}", "1.2")
    # The stage starts at its Bootstrap line, as Apptainer splits stages.
    assert definition.final.raw == definition.raw[definition.raw.index("Bootstrap:"):]
    assert definition.final.line == 2


def test_repeated_sections_concatenate_and_later_args_win() -> None:
    stage = parse("Bootstrap: scratch\n%post\n  a\n%files\n  x /x\n%post -c /bin/bash\n  b\n"
                  "%files\n  y /y\n").final
    assert stage.script("post") == Script("post", "-c /bin/bash", "  a\n  b\n", 2)
    (files,) = stage.files
    assert [c.src for c in files.copies] == ["x", "y"]


def test_section_names_are_case_insensitive_and_take_tabs() -> None:
    stage = parse("Bootstrap: scratch\n%POST\t-c /bin/bash\n  a\n").final
    assert stage.script("post").args == "-c /bin/bash"


def test_no_header() -> None:
    stage = parse("%post\n  true\n").final
    assert stage.header == ()
    assert stage.script("post").body == "  true\n"


def test_app_sections() -> None:
    stage = parse("Bootstrap: scratch\n%appinstall foo\n  make\n%apprun foo\n  exec foo\n").final
    assert [(a.name, a.args, a.line) for a in stage.apps] == [
        ("appinstall", "foo", 2), ("apprun", "foo", 4)]


MULTI = """\
Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian
Stage: build

%post
    make

Bootstrap: scratch
Stage: final

%files from build
    /usr/local/bin/app /usr/local/bin/app
"""


def test_multi_stage() -> None:
    definition = parse(MULTI, "multi.def")
    first, final = definition.stages
    assert (first.name, first.line, final.name, final.line) == ("build", 1, "final", 9)
    assert first.raw + final.raw == MULTI == definition.raw
    (files,) = final.files
    assert files.stage == "build"
    assert files.copies == (FileCopy("/usr/local/bin/app", "/usr/local/bin/app", 13),)


def test_build_args() -> None:
    text = ("Bootstrap: localimage\nFrom: {{ BASE }}\n%arguments\n  BASE=base.sif\n"
            "  TAG=v{{ BASE }}\n%post\n  # {{ UNDEFINED }} stays in a comment\n"
            "  echo {{TAG}}\n")
    assert parse(text).final.get("from") == "base.sif"
    overridden = parse(text, build_args={"BASE": "other.sif"})
    assert overridden.final.get("from") == "other.sif"
    assert "echo vother.sif\n" in overridden.raw
    assert "# {{ UNDEFINED }} stays" in overridden.raw


def test_section_argv() -> None:
    assert section_argv("post", "/.post.script", "") == ["/bin/sh", "-ex", "/.post.script"]
    assert section_argv("post", "/.post.script", "-c /bin/bash extra stuff here #comment") == [
        "/bin/sh", "-ex", "-c", "/bin/bash extra stuff here /.post.script"]
    assert section_argv("setup", "/tmp/s", "-u") == ["/bin/sh", "-ex", "-u", "/tmp/s"]


@pytest.mark.parametrize(("body", "args", "shebang", "rest"), [
    ("  echo hi\n", "", "#!/bin/sh", "  echo hi\n"),
    ("  #!/bin/bash\n  echo hi\n", "", "#!/bin/bash", "  echo hi\n"),
    ("\n\n#!/usr/bin/python3\nprint(1)\n", "", "#!/usr/bin/python3", "print(1)\n"),
    ("  echo hi\n", "-x # trace", "#!/bin/sh -x ", "  echo hi\n"),
])
def test_split_shebang(body: str, args: str, shebang: str, rest: str) -> None:
    assert split_shebang(Script("runscript", args, body, 1)) == (shebang, rest)


def test_parse_labels() -> None:
    assert parse_labels("A 1\n# c\n\nB two words\nC\n") == {"A": "1", "B": "two words", "C": ""}


def test_parse_file(tmp_path: Path) -> None:
    path = tmp_path / "x.def"
    path.write_text(FULL)
    assert parse_file(path).path == str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("Bootstrap: scratch\nFrm: x\n%post\n  a\n", r"x\.def:2: unknown header keyword 'frm'"),
    ("Bootstrap: scratch\nno colon here\n", r"x\.def:2: header line 'no colon here' has no value"),
    ("Bootstrap: scratch\n\n%postt\n  a\n", r"x\.def:3: unknown section %postt"),
    ("Bootstrap: scratch\n%files into x\n  a b\n", r"x\.def:2: bad %files arguments"),
    ("Bootstrap: scratch\n%files\n  a b c\n", r"x\.def:3: %files line 'a b c' has 3 words"),
    ("Bootstrap: scratch\n%files\n  \"a b\n", r"x\.def:3: can't split %files line"),
    ("Bootstrap: scratch\n%files from nowhere\n  a b\n",
     r"x\.def:2: %files from nowhere: no earlier stage is named 'nowhere'"),
    ("Bootstrap: scratch\n%apprun\n  a\n", r"x\.def:2: %apprun needs an app name"),
    ("Bootstrap: scratch\n%post\n  echo {{ NOPE }}\n",
     r"x\.def:3: build argument 'NOPE' is not defined"),
    ("# only a comment\n\n", r"x\.def: empty definition file"),
    ("%post\n  a\nBootstrap: scratch\n%post\n  b\n", r"x\.def:1: a stage without a header"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(HpcbindError) as error:
        parse(text, "x.def")
    assert re.match(message, str(error.value))
    assert error.value.fix  # every error says how to fix it


def test_section_argv_dash_c_without_interpreter() -> None:
    with pytest.raises(HpcbindError, match="-c needs an interpreter"):
        section_argv("post", "/.post.script", "-c")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(HpcbindError, match="can't read definition file"):
        parse_file(tmp_path / "missing.def")
    binary = tmp_path / "binary.def"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HpcbindError, match="is not a text file"):
        parse_file(binary)
