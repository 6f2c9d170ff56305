"""Site configuration: ``/etc/hpcbind/hpcbind.toml`` (``HPCBIND_CONFIG`` overrides the path).

``SETTINGS`` is the single source of every key, its default and its meaning; the file may set
only those keys (a misspelt key is an error, not silently ignored), and ``hpcrun config``
prints every effective value with where it came from.
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import HpcbindError

DEFAULT_PATH = "/etc/hpcbind/hpcbind.toml"
ENV_PATH = "HPCBIND_CONFIG"


class Setting(namedtuple("Setting", "key default help choices", defaults=((),))):
    """key: "section.name" as written in the file. (A namedtuple: loaded on every rank.)"""

    __slots__ = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("bind.allow", [], "host path prefixes users may bind from; empty allows any path "
            "the user can read"),
    Setting("bind.deny", [], "host path prefixes users may never bind from (wins over allow)"),
    Setting("bind.paths", [], "SRC[:DST] bound into every container (Apptainer's 'bind path'): "
            "/scratch, /lustre, module trees; a source missing on a node is skipped"),
    Setting("mount.dev", "yes", "the container's /dev: 'yes' binds the host's /dev, 'minimal' "
            "only null, zero, random, urandom, tty, shm, pts and the plan's devices",
            ("yes", "minimal")),
    Setting("mount.home", True, "bind the user's home directory by default"),
    Setting("mount.tmp", True, "bind the host's /tmp and /var/tmp by default"),
    Setting("mount.hosts", True, "bind the host's /etc/hosts and /etc/resolv.conf"),
    Setting("image.squashfuse", "", "the FUSE squashfs server to run images unprivileged "
            "(empty: hpcbind-squashfuse, installed beside hpcrun by make, else squashfuse_ll)"),
    Setting("image.kernel_squashfs", True, "as root, mount squashfs with the kernel (loop "
            "device) instead of FUSE"),
    Setting("image.extract_fallback", True, "unpack the image into the user's cache when it "
            "cannot be mounted"),
    Setting("session.size_mb", 64, "size of the private writable layer over the image (tmpfs)"),
    Setting("trust.allowed_signers", [], "run only SIF images each of whose object groups is "
            "signed by one of these: PGP fingerprints or DSSE key IDs (SHA256:...)"),
    Setting("trust.denied_signers", [], "never run an image naming one of these signers"),
    Setting("trust.keyrings", [], "key files to verify signatures with (OpenPGP keyrings, PEM "
            "public keys)"),
    Setting("defaults.cleanenv", False, "act as if --cleanenv were always given"),
    Setting("defaults.contain", False, "act as if --contain were always given"),
)


class Config(namedtuple("Config", "values sources path")):
    """values: key -> value; sources: key -> "default" or the file it came from."""

    __slots__ = ()

    def __getitem__(self, key: str):
        return self.values[key]


def config_path(env: dict[str, str] | os._Environ = os.environ) -> str:
    return env.get(ENV_PATH) or DEFAULT_PATH


def load(path: str | None = None) -> Config:
    path = path or config_path()
    values = {s.key: s.default for s in SETTINGS}
    sources = dict.fromkeys(values, "default")
    try:
        with open(path, "rb") as f:
            import tomllib  # only when a file exists: keeps the per-rank path lean

            data = tomllib.load(f)
    except FileNotFoundError:
        return Config(values, sources, path)
    except OSError as err:
        raise HpcbindError(f"can't read site configuration {path}: {err.strerror}",
                           "fix its permissions (it must be readable by all users)") from None
    except ValueError as err:
        raise HpcbindError(f"site configuration {path} is not valid TOML: {err}",
                           "fix the file") from None
    for key, value in _flatten(data):
        setting = next((s for s in SETTINGS if s.key == key), None)
        if setting is None:
            raise HpcbindError(f"unknown setting {key!r} in {path}",
                               "see 'hpcrun config' for the valid keys")
        _validate(setting, value, path)
        values[key] = value
        sources[key] = path
    return Config(values, sources, path)


def _flatten(data: dict, prefix: str = "") -> list[tuple]:
    items = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            items.extend(_flatten(value, key + "."))
        else:
            items.append((key, value))
    return items


def _validate(setting: Setting, value, path: str) -> None:
    expected = type(setting.default)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise HpcbindError(f"setting {setting.key} in {path} must be a {expected.__name__}, "
                           f"got {value!r}", "fix the file")
    if expected is int and value < 1:  # a tmpfs of size 0 is one without a limit
        raise HpcbindError(f"setting {setting.key} in {path} must be at least 1, got {value}",
                           "fix the file")
    if setting.choices and value not in setting.choices:
        raise HpcbindError(f"setting {setting.key} in {path} must be one of "
                           f"{', '.join(setting.choices)}, got {value!r}", "fix the file")
    if (expected is list and setting.key.startswith(("bind.", "trust.keyrings"))
            and not all(isinstance(v, str) and v.startswith("/") for v in value)):
        raise HpcbindError(f"setting {setting.key} in {path} must list absolute paths",
                           "fix the file")
    if setting.key == "bind.paths" and not all(
            v.partition(":")[2] in ("",) or v.partition(":")[2].startswith("/") for v in value):
        raise HpcbindError(f"setting bind.paths in {path} must list SRC[:DST] with absolute "
                           "paths", "fix the file")


def render(config: Config) -> str:
    """``hpcrun config``: every key, its value and its source, in TOML-ish lines."""
    lines = [f"# site configuration: {config.path}"
             + ("" if os.path.exists(config.path) else " (not present: all defaults)")]
    for s in SETTINGS:
        lines.append(f"{s.key} = {_toml(config[s.key])}  # {config.sources[s.key]}: {s.help}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
