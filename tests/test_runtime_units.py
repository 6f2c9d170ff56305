"""The runtime's pure parts: bind specs, destination resolution, environment, identity,
site configuration and image metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, hpcrun_main
from hpcbind import config
from hpcbind.errors import HpcbindError
from hpcbind.image.metadata import read_metadata
from hpcbind.image.source import ImageKind, locate
from hpcbind.runtime.binds import Bind, container_path, parse_bind_specs
from hpcbind.runtime.environment import (APPEND, PREPEND, SET, UNSET, EnvEdit, container_env,
                                         read_env_file)
from hpcbind.runtime.identity import HostUser, group, passwd


# --- bind specs -----------------------------------------------------------------------------

def test_bind_specs_apptainer_syntax():
    binds = parse_bind_specs(["/a", "/b:/c:ro,rel:/d", "/e:/f:rw"], cwd="/work")
    assert binds == [
        Bind("/a", "/a", read_only=False, reason="--bind"),
        Bind("/b", "/c", read_only=True, reason="--bind"),
        Bind("/work/rel", "/d", read_only=False, reason="--bind"),
        Bind("/e", "/f", read_only=False, reason="--bind"),
    ]


@pytest.mark.parametrize("spec, message", [
    ("/a:/b:rx", "bad bind option 'rx'"),
    ("/a:relative", "is not absolute"),
    ("/a:/b:ro:extra", "bad bind spec"),
    (":/b", "bad bind spec"),
])
def test_bad_bind_specs(spec, message):
    with pytest.raises(HpcbindError, match=message):
        parse_bind_specs([spec], cwd="/")


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "var").mkdir()
    os.symlink("/run", root / "var/run")  # Debian's absolute link
    os.symlink("../../../../..", root / "up")  # climbs out
    os.symlink("etc", root / "rel")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    return root


def test_destinations_resolve_inside_the_root(image_root):
    root = str(image_root)
    assert container_path(root, "/var/run/munge") == f"{root}/run/munge"
    assert container_path(root, "/rel/hosts") == f"{root}/etc/hosts"
    assert container_path(root, "/new/dir") == f"{root}/new/dir"
    assert container_path(root, "/etc/../etc/x") == f"{root}/etc/x"


@pytest.mark.parametrize("destination", ["/up/etc/passwd", "/../etc", "/loop1/x"])
def test_destinations_that_escape_are_refused(image_root, destination):
    with pytest.raises(HpcbindError, match="refusing bind destination"):
        container_path(str(image_root), destination)


# --- environment ----------------------------------------------------------------------------

HOST = {"PATH": "/host/bin", "HOME": "/home/u", "LD_LIBRARY_PATH": "/host/lib", "TERM": "xterm",
        "HOST_ONLY": "1", "APPTAINERENV_FOO": "foo", "SINGULARITYENV_APPEND_PATH": "/extra",
        "http_proxy": "http://proxy"}


def test_host_environment_passes_except_path_home_ld_library_path():
    env = container_env(HOST, home="/home/u", cleanenv=False, user_env=[],
                        runtime_vars={"APPTAINER_CONTAINER": "/i.sif"})
    base = dict(env.base)
    assert base["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "LD_LIBRARY_PATH" not in base and base["HOST_ONLY"] == "1"
    assert not any(k.startswith(("APPTAINERENV_", "SINGULARITYENV_")) for k in base)
    assert env.edits == (EnvEdit(SET, "FOO", "foo"), EnvEdit(APPEND, "PATH", "/extra"))
    final = env.final()
    assert final["FOO"] == "foo" and final["PATH"].endswith(":/bin:/extra")


def test_cleanenv_keeps_only_term_and_proxies():
    env = container_env(HOST, home="/h", cleanenv=True, user_env=[("X", "1")], runtime_vars={})
    assert dict(env.base) == {"TERM": "xterm", "http_proxy": "http://proxy",
                              "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOME": "/h"}
    assert env.final()["X"] == "1" and env.final()["FOO"] == "foo"


def test_plan_edits_come_last_and_shell_form_matches_python_form():
    edits = [EnvEdit(PREPEND, "LD_LIBRARY_PATH", "/first"), EnvEdit(APPEND, "LD_LIBRARY_PATH",
                                                                      "/.hpcbind/lib"),
             EnvEdit(UNSET, "HOST_ONLY"), EnvEdit(SET, "Q", "it's quoted")]
    env = container_env({"HOST_ONLY": "1"}, home="/h", cleanenv=False, user_env=[],
                        runtime_vars={}, plan_edits=edits)
    final = env.final()
    assert final["LD_LIBRARY_PATH"] == "/first:/.hpcbind/lib"
    assert "HOST_ONLY" not in final and final["Q"] == "it's quoted"
    import subprocess

    script = env.shell_edits() + '\nprintf "%s|%s|%s" "$LD_LIBRARY_PATH" "${HOST_ONLY-unset}" "$Q"'
    out = subprocess.run(["/bin/sh", "-c", script], env=dict(env.base), capture_output=True,
                         text=True).stdout
    assert out == "/first:/.hpcbind/lib|unset|it's quoted"


def test_env_file(tmp_path):
    f = tmp_path / "e"
    f.write_text("# c\n\nA=1\nexport B='two words'\nC=\"3\"\n")
    assert read_env_file(str(f)) == [("A", "1"), ("B", "two words"), ("C", "3")]
    f.write_text("1BAD=x\n")
    with pytest.raises(HpcbindError, match="bad environment assignment"):
        read_env_file(str(f))


# --- identity -------------------------------------------------------------------------------

def test_passwd_and_group_keep_the_image_and_add_the_user():
    user = HostUser(1001, 1001, "alice", "alice", "Alice", "/bin/bash")
    image = "root:x:0:0:root:/root:/bin/sh\nold:x:1001:5::/x:/bin/sh\n"
    assert passwd(image, user, "/home/alice", "/bin/sh") == (
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\n")
    assert group("root:x:0:\n", user) == "root:x:0:\nalice:x:1001:\n"
    assert group("root:x:0:\nstaff:x:1001:\n", user) == "root:x:0:\nstaff:x:1001:\n"


# --- site configuration ---------------------------------------------------------------------

def test_config_defaults_and_sources(tmp_path):
    cfg = config.load(str(tmp_path / "absent.toml"))
    assert {s.key for s in config.SETTINGS} == set(cfg.values)
    assert set(cfg.sources.values()) == {"default"}
    f = tmp_path / "site.toml"
    f.write_text('[bind]\ndeny = ["/etc/shadow"]\n[mount]\ndev = "minimal"\n')
    cfg = config.load(str(f))
    assert cfg["bind.deny"] == ["/etc/shadow"] and cfg["mount.dev"] == "minimal"
    assert cfg.sources["mount.dev"] == str(f) and cfg.sources["mount.home"] == "default"
    code, out, _ = hpcrun_main("config", "--file", str(f))
    assert code == 0 and f'mount.dev = "minimal"  # {f}:' in out


@pytest.mark.parametrize("text, message", [
    ("[mount]\ndevv = 'yes'\n", "unknown setting 'mount.devv'"),
    ("[mount]\ndev = 'all'\n", "must be one of yes, minimal"),
    ("[session]\nsize_mb = true\n", "must be a int"),
    ("[session]\nsize_mb = 0\n", "must be at least 1"),
    ("[bind]\nallow = ['relative']\n", "must list absolute paths"),
    ("[bind\n", "not valid TOML"),
])
def test_bad_config_is_one_error(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(HpcbindError, match=message):
        config.load(str(f))


def test_site_policy_refuses_binds(tmp_path, monkeypatch):
    from hpcbind.launch import RunOptions, dry_run

    f = tmp_path / "site.toml"
    f.write_text(f'[bind]\nallow = ["{tmp_path}"]\ndeny = ["{tmp_path}/secret"]\n')
    (tmp_path / "secret").mkdir()
    cfg = config.load(str(f))
    for source, message in [("/etc", "not allowed"), (f"{tmp_path}/secret", "denied")]:
        with pytest.raises(HpcbindError, match=message):
            dry_run(RunOptions(image=str(BUSYBOX_SIF), argv=("true",), binds=(source,)), cfg)
    spec = dry_run(RunOptions(image=str(BUSYBOX_SIF), argv=("true",),
                              binds=(str(tmp_path),)), cfg).spec
    assert spec.binds[-1].source == str(tmp_path)


# --- image metadata -------------------------------------------------------------------------

def test_locate_and_inspect_the_real_busybox_sif(data):
    image = locate(str(BUSYBOX_SIF))
    assert (image.kind, image.offset, image.size, image.arch) == (ImageKind.SIF, 45056, 745472,
                                                                 "amd64")
    meta = read_metadata(image)
    assert meta.labels["org.label-schema.usage.singularity.version"] == "3.8.1"
    assert meta.deffile == "BootStrap: docker\nFrom: busybox:1.33.1\n"
    assert "OCI_CMD='\"sh\"'" in meta.runscript
    code, out, _ = hpcrun_main("inspect", "--json", str(BUSYBOX_SIF))
    assert code == 0
    attrs = json.loads(out)["data"]["attributes"]
    assert attrs["labels"]["org.label-schema.build-arch"] == "amd64"
    code, out, _ = hpcrun_main("inspect", str(BUSYBOX_SIF))
    assert "org.label-schema.usage.singularity.deffile.from: busybox:1.33.1\n" in out


def test_signer_policy_refuses_before_mounting(tmp_path, data):
    from hpcbind.launch import RunOptions, dry_run

    keys = data / "sif/sylabs-sif/keys/private.asc"
    f = tmp_path / "site.toml"
    f.write_text(f'[trust]\nallowed_signers = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]\n'
                 f'keyrings = ["{keys}"]\n')
    with pytest.raises(HpcbindError) as err:
        dry_run(RunOptions(image=str(BUSYBOX_SIF), argv=("true",)), config.load(str(f)))
    assert "busybox_amd64.sif" in str(err.value) and "sign" in str(err.value)
