"""The container's environment, computed without side effects.

Apptainer's rules, which users and site scripts already rely on:
- the host environment passes through, except PATH, HOME and LD_LIBRARY_PATH (never: the
  host's values point at host paths) and except with ``--cleanenv``, which keeps only TERM and
  the proxy variables;
- ``APPTAINERENV_X`` / ``SINGULARITYENV_X`` / ``HPCRUNENV_X``, ``--env X=V`` and ``--env-file``
  set X inside and win over the image's ``%environment`` (they are applied after it);
- ``..._PREPEND_PATH`` / ``..._APPEND_PATH`` edit PATH after the image's environment;
- the image's ``/.singularity.d/env/*.sh`` are sourced by the image's own ``/bin/sh`` and the
  command is exec'd from that shell, so the program keeps the PID the resource manager sees.

The bind plan's env operations (``LD_LIBRARY_PATH`` append of the private lib dir, GPU
selection) are applied last, after the image's scripts, so they survive them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Mapping

from hpcbind.errors import HpcbindError
from hpcbind.host.conventions import DEFAULT_PATH

NEVER_PASSED = frozenset({"PATH", "HOME", "LD_LIBRARY_PATH"})
ALWAYS_PASSED = frozenset({"TERM", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                           "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "ftp_proxy",
                           "FTP_PROXY"})
USER_PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_", "HPCRUNENV_")

SET, PREPEND, APPEND, UNSET = "set", "prepend", "append", "unset"
PASS = "pass"  # the process's own host value, even under --cleanenv (resolved per rank)


class EnvEdit(namedtuple("EnvEdit", "action name value", defaults=("",))):
    """One change applied after the image's env scripts, in order (set/prepend/append/unset)."""

    __slots__ = ()


class ContainerEnv(namedtuple("ContainerEnv", "base edits passes", defaults=((),))):
    """base: the (name, value) pairs the image's scripts start from; edits: applied after;
    passes: this process's own values of the names PASS edits name. PASS edits stay
    unresolved in ``edits`` so that a node's holder can share them with ranks, each of which
    has its own value (Hydra gives every rank its own PMI_FD)."""

    __slots__ = ()

    def resolved(self) -> list[EnvEdit]:
        return resolve_passes(self.edits, dict(self.passes))

    def final(self) -> dict[str, str]:
        """The environment when the image has no env scripts to source."""
        env = dict(self.base)
        for edit in self.resolved():
            apply_edit(env, edit)
        return env

    def shell_edits(self) -> str:
        """The edits as POSIX shell, for after the image's env scripts."""
        return "\n".join(_shell(edit) for edit in self.resolved())


def resolve_passes(edits: Iterable[EnvEdit], host: Mapping[str, str]) -> list[EnvEdit]:
    """PASS edits become SETs of this process's own value (each MPI rank has its own
    PMI_RANK); a variable the host does not have is left alone."""
    return [EnvEdit(SET, e.name, host[e.name]) if e.action == PASS else e
            for e in edits if e.action != PASS or e.name in host]


def apply_edit(env: dict[str, str], edit: EnvEdit) -> None:
    current = env.get(edit.name, "")
    if edit.action == SET:
        env[edit.name] = edit.value
    elif edit.action == PREPEND:
        env[edit.name] = f"{edit.value}:{current}" if current else edit.value
    elif edit.action == APPEND:
        env[edit.name] = f"{current}:{edit.value}" if current else edit.value
    elif edit.action == UNSET:
        env.pop(edit.name, None)
    else:
        raise ValueError(edit.action)


def quote(value: str) -> str:
    # shlex.quote's rule; shlex itself imports re, ~5 ms per rank
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _shell(edit: EnvEdit) -> str:
    name, value = edit.name, quote(edit.value)
    if edit.action == SET:
        return f"export {name}={value}"
    if edit.action == PREPEND:
        return f'export {name}={value}"${{{name}:+:${name}}}"'
    if edit.action == APPEND:
        return f'export {name}="${{{name}:+${name}:}}"{value}'
    return f"unset {name}"


def split_env_option(value: str) -> list[str]:
    """An ``--env`` value's ``NAME=VALUE`` items: split on commas, as Apptainer's flag parser
    does, but a piece with no ``=`` belongs to the item before it, so ``--env
    OMPI_MCA_btl=self,vader,tcp`` keeps its value whole."""
    items: list[str] = []
    for piece in value.split(","):
        if items and "=" not in piece:
            items[-1] += "," + piece
        else:
            items.append(piece)
    return items


def parse_env_assignments(items: Iterable[str], where: str) -> list[tuple[str, str]]:
    """``K=V`` items (``--env`` values, comma-separated, or env-file lines)."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        # ASCII only: isalnum() also takes 'µ' or 'Ä', which the image's /bin/sh refuses to
        # export ("bad variable name"), failing the container's start.
        if (not sep or not name.isascii() or not name.replace("_", "a").isalnum()
                or name[0].isdigit()):
            raise HpcbindError(f"bad environment assignment {item!r} in {where}",
                               "write NAME=VALUE with a valid variable name")
        pairs.append((name, value))
    return pairs


def read_env_file(path: str) -> list[tuple[str, str]]:
    """An env file: ``NAME=VALUE`` lines, ``#`` comments, optional ``export``, quotes removed."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as err:
        raise HpcbindError(f"can't read env file {path}: {err.strerror}",
                           "check the --env-file path") from None
    except UnicodeDecodeError:
        raise HpcbindError(f"env file {path} is not UTF-8 text",
                           "write it as NAME=VALUE lines in UTF-8") from None
    items = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if sep and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        items.append(f"{name}={value}" if sep else line)
    return parse_env_assignments(items, path)


def container_env(
    host: Mapping[str, str],
    *,
    home: str,
    cleanenv: bool,
    user_env: list[tuple[str, str]],
    runtime_vars: Mapping[str, str],
    plan_edits: Iterable[EnvEdit] = (),
) -> ContainerEnv:
    """The container's environment from the host's, the user's settings and the plan's."""
    if cleanenv:
        base = {k: v for k, v in host.items() if k in ALWAYS_PASSED}
    else:
        base = {k: v for k, v in host.items()
                if k not in NEVER_PASSED and not k.startswith(USER_PREFIXES)}
    base.update(PATH=DEFAULT_PATH, HOME=home, **runtime_vars)

    edits: list[EnvEdit] = []
    prefixed = [(k[len(p):], v) for k, v in host.items() for p in USER_PREFIXES
                if k.startswith(p) and len(k) > len(p)]
    for name, value in prefixed + user_env:
        if name == "PREPEND_PATH":
            edits.append(EnvEdit(PREPEND, "PATH", value))
        elif name == "APPEND_PATH":
            edits.append(EnvEdit(APPEND, "PATH", value))
        else:
            edits.append(EnvEdit(SET, name, value))
    edits.extend(plan_edits)
    return ContainerEnv(base=tuple(sorted(base.items())), edits=tuple(edits),
                        passes=own_values(edits, host))


def own_values(edits: Iterable[EnvEdit], host: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """This process's values of the variables PASS edits name."""
    names = {e.name for e in edits if e.action == PASS}
    return tuple(sorted((k, v) for k, v in host.items() if k in names))
