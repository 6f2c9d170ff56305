"""Images from registries, OCI layouts and archives (issue #12), against a real registry.

The conformance layouts of tests/data/oci pass through docker:// (Debian's docker-registry),
oci:, oci-archive: and docker-archive: alike, and each root filesystem is checked against its
README; plain users pull, exec from a reference, and get one-line errors for bad input.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from hpcbind.image import oci
from hpcbind.image.sif import SifImage
from hpcbind.image.source import locate
from tests.conftest import BUSYBOX_SIF, DATA, HPCRUN, Unprivileged
from tests.oci_registry import Registry, oci_image, start_registry

LAYOUTS = DATA / "oci"
HELLO = LAYOUTS / "hello-world-docker-v2-manifest"
# What every image gets from the builder (Apptainer's makeBaseEnv): not the image's content.
SKELETON = {".singularity.d", ".exec", ".run", ".shell", ".test", "singularity", "environment",
            "dev", "proc", "root", "var", "tmp", "etc", "sys", "home"}
DIR = "dir"
# tests/data/oci/README.md: path -> DIR or the regular file's content (mode 0555)
EXPECTED: dict[str, dict[str, str]] = {
    "root-dir-entry": {},
    "whiteout-explicit-file": {"a": DIR, "a/b": DIR, "a/b/bar": "bar"},
    "whiteout-opaque": {"a": DIR, "a/bar": "bar"},
    "hard-link-1": {"a": DIR, "a/b": DIR, "a/b/foo": "foo", "a/b/bar": "foo"},
    "hard-link-delete-1": {"a": DIR, "a/b": DIR, "a/b/bar": "foo"},
    "many-layers": {str(n): "" for n in range(50)},
}
TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def insecure_conf(registry: Registry, unprivileged: Unprivileged) -> Path:
    """registries.conf marking the local registry plain HTTP (exec has no --no-https)."""
    conf = unprivileged.root / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    conf.chmod(0o644)
    return conf


def source_for(transport: str, layout: Path, registry: Registry, work: Path) -> str:
    name = layout.name
    if transport == "docker":
        return registry.push(f"oci:{layout}", f"{name}:latest")
    if transport == "oci":
        return f"oci:{layout}"
    archive = work / f"{name}.{transport}.tar"
    suffix = f":{name}:latest" if transport == "docker-archive" else ""
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}", f"{transport}:{archive}{suffix}"],
                   check=True, capture_output=True)
    return f"{transport}:{archive}"


def hpcrun(*args: str, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HPCRUN, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HPCRUN_CACHEDIR": str(cache), **(env or {})})


def extract(sif: Path, where: Path) -> Path:
    found = locate(str(sif))
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(where), "-o", str(found.offset),
                    str(sif)], check=True, capture_output=True)
    return where


def content(root: Path) -> dict[str, str]:
    """The image's own paths (the builder's skeleton left out): DIR or file content."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in SKELETON:
            continue
        found[rel] = DIR if path.is_dir() else path.read_text()
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o555, rel
    return found


def check_layout_result(name: str, root: Path) -> None:
    assert content(root) == EXPECTED[name]
    assert not list(root.rglob(".wh.*"))
    if name == "hard-link-1":
        foo, bar = (root / "a/b/foo").stat(), (root / "a/b/bar").stat()
        assert (foo.st_ino, foo.st_nlink) == (bar.st_ino, 2)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conformance_layout_through_every_transport(name, transport, registry, tmp_path):
    source = source_for(transport, LAYOUTS / name, registry, tmp_path)
    out = tmp_path / "out.sif"
    r = hpcrun("pull", "--no-https", str(out), source, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # not a terminal: nothing but errors
    check_layout_result(name, extract(out, tmp_path / "root"))


def test_plain_user_pulls_and_converts(unprivileged: Unprivileged, registry):
    source = registry.push(f"oci:{LAYOUTS / 'hard-link-1'}", "plain/hl:1")
    r = unprivileged.run("pull", "--no-https", "--dir", str(unprivileged.root), source,
                         env={"HPCRUN_CACHEDIR": str(unprivileged.root / "cache")})
    assert r.returncode == 0, r.stderr
    sif = unprivileged.root / "hl_1.sif"
    assert sif.stat().st_uid == unprivileged.uid
    check_layout_result("hard-link-1", extract(sif, unprivileged.root / "hl-root"))


def test_second_pull_downloads_no_layer_and_cache_lists_and_cleans(registry, tmp_path):
    layout = LAYOUTS / "many-layers"
    source = registry.push(f"oci:{layout}", "cache/many:latest")
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}"],
                                         capture_output=True, check=True).stdout)
    layers = {layer["digest"] for layer in manifest["layers"]}
    cache = tmp_path / "cache"
    before = registry.blob_downloads(layers)
    assert hpcrun("pull", "--no-https", str(tmp_path / "1.sif"), source, cache=cache).returncode == 0
    first = registry.blob_downloads(layers)
    assert first - before == len(layers)
    r = hpcrun("pull", "--no-https", str(tmp_path / "2.sif"), source, cache=cache)
    assert r.returncode == 0, r.stderr
    assert registry.blob_downloads(layers) == first
    listed = hpcrun("cache", "list", cache=cache)
    assert listed.returncode == 0
    assert source in listed.stdout and "1 images" in listed.stdout
    cleaned = hpcrun("cache", "clean", cache=cache)
    assert cleaned.returncode == 0 and "removed" in cleaned.stdout
    assert not (cache / "oci").exists()
    assert "0 images" in hpcrun("cache", "list", cache=cache).stdout


def test_image_for_another_platform_is_refused_in_one_line(tmp_path):
    out = tmp_path / "hello.sif"
    r = hpcrun("pull", str(out), f"oci:{HELLO}", cache=tmp_path / "cache")
    assert r.returncode == 255
    assert r.stderr.count("\n") == 1
    assert "linux/arm64/v8" in r.stderr and "linux/amd64" in r.stderr and "--arch" in r.stderr
    assert not out.exists()


def test_arch_and_apptainers_conversion_of_the_config(tmp_path):
    out = tmp_path / "hello.sif"
    r = hpcrun("pull", "--arch", "arm64", str(out), f"oci:{HELLO}", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    with SifImage.open(str(out)) as sif:
        objects = {d.name_str: sif.read(d) for d in sif.descriptors}
    config = json.loads(objects[oci.CONFIG_OBJECT])
    assert config["Cmd"] == ["/hello"]
    root = extract(out, tmp_path / "root")
    runscript = (root / ".singularity.d/runscript").read_text()
    assert "OCI_ENTRYPOINT=''\nOCI_CMD='\"/hello\"'\n" in runscript
    assert (root / ".singularity.d/env/10-docker2singularity.sh").read_text() == (
        '#!/bin/sh\nexport PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n')
    assert (root / "hello").read_bytes()[18:20] == b"\xb7\x00"  # ELF e_machine EM_AARCH64


@pytest.mark.parametrize("entrypoint, cmd, args, expected", [
    (["echo", "ep"], ["c1"], [], "ep c1"),
    (["echo", "ep"], ["c1"], ["x", "y z"], "ep x y z"),
    ([], ["echo", "only cmd"], [], "only cmd"),
    ([], ["echo", "only cmd"], ["echo", "replaced"], "replaced"),
    (["echo", "it's"], [], ["$HOME"], "it's {}"),
])
def test_runscript_runs_entrypoint_and_cmd_as_apptainer(entrypoint, cmd, args, expected, tmp_path):
    """Arguments are appended as Apptainer does: evaluated by the shell unless
    SINGULARITY_NO_EVAL is set."""
    script = tmp_path / "runscript"
    script.write_bytes(oci.runscript({"Entrypoint": entrypoint, "Cmd": cmd}))
    for no_eval, home in (("", "/home/u"), ("1", "$HOME")):
        r = subprocess.run(["sh", str(script), *args], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": "/home/u",
                                "SINGULARITY_NO_EVAL": no_eval})
        assert r.stdout == expected.format(home) + "\n", (no_eval, r.stderr)


def test_environment_keeps_host_values_but_path(tmp_path):
    script = tmp_path / "env.sh"
    script.write_bytes(oci.environment({"Env": ["FOO=bar baz", "PATH=/opt/bin:/bin", "EMPTY"]}))
    r = subprocess.run(["sh", "-c", f'. {script}; echo "$FOO|$PATH|$EMPTY"'], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "EMPTY": "host"})
    assert r.stdout == "bar baz|/opt/bin:/bin|host\n"
    r = subprocess.run(["sh", "-c", f'. {script}; echo "$FOO"'], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "FOO": "from host"})
    assert r.stdout == "from host\n"


@pytest.fixture(scope="module")
def busybox_reference(registry: Registry, tmp_path_factory) -> str:
    """busybox as an OCI image with an ENTRYPOINT, CMD, ENV and a label, in the registry."""
    work = tmp_path_factory.mktemp("busybox")
    extract(BUSYBOX_SIF, work / "root")
    source = oci_image(work / "root", work / "layout", "1", "--config.entrypoint", "/bin/echo",
                       "--config.cmd", "from-cmd", "--config.env", "GREETING=hello",
                       "--config.label", "org.example.test=yes")
    return registry.push(source, "tools/busybox:1")


def test_plain_user_runs_and_execs_a_reference(unprivileged: Unprivileged, busybox_reference,
                                               insecure_conf):
    env = {"HPCRUN_CACHEDIR": str(unprivileged.root / "exec-cache"),
           "CONTAINERS_REGISTRIES_CONF": str(insecure_conf)}
    r = unprivileged.run("run", busybox_reference, env=env)
    assert (r.returncode, r.stdout) == (0, "from-cmd\n"), r.stderr
    r = unprivileged.run("run", busybox_reference, "given", "args", env=env)
    assert r.stdout == "given args\n"
    r = unprivileged.run("exec", busybox_reference, "sh", "-c", "echo $GREETING", env=env)
    assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
    assert len(list((unprivileged.root / "exec-cache" / "sif").iterdir())) == 1
    r = unprivileged.run("inspect", busybox_reference, env=env)
    assert "org.example.test: yes" in r.stdout


def test_build_from_a_reference(busybox_reference, tmp_path):
    out = tmp_path / "bb.sif"
    r = hpcrun("build", "--no-https", str(out), busybox_reference, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    r = hpcrun("inspect", "--runscript", str(out), cache=tmp_path / "cache")
    assert "OCI_ENTRYPOINT='\"/bin/echo\"'" in r.stdout


def test_definition_file_bootstraps_from_a_registry(busybox_reference, tmp_path):
    registry, _, name = busybox_reference.removeprefix("docker://").partition("/")
    definition = tmp_path / "app.def"
    definition.write_text(f"Bootstrap: docker\nRegistry: {registry}\nFrom: {name}\n\n"
                          "%post\n    echo built > /posted\n"
                          "%environment\n    export FROM_DEF=yes\n"
                          "%labels\n    org.example.def yes\n")
    out = tmp_path / "app.sif"
    r = hpcrun("build", "--no-https", str(out), str(definition), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    root = extract(out, tmp_path / "root")
    assert (root / "posted").read_text() == "built\n"
    labels = json.loads((root / ".singularity.d/labels.json").read_text())
    assert labels["org.example.def"] == "yes" and labels["org.example.test"] == "yes"
    assert "GREETING" in (root / ".singularity.d/env/10-docker2singularity.sh").read_text()
    assert "FROM_DEF" in (root / ".singularity.d/env/90-environment.sh").read_text()
    assert "OCI_ENTRYPOINT='\"/bin/echo\"'" in (root / ".singularity.d/runscript").read_text()


# --------------------------------------------------------------------------- bad input


def layer_layout(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> str:
    """An OCI layout of one hand-made layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(buffer.getvalue())
    layout = tmp_path / "layout"
    for argv in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:t"],
                 ["raw", "add-layer", "--image", f"{layout}:t", str(layer)]):
        subprocess.run(["umoci", *argv], check=True, capture_output=True)
    return f"oci:{layout}:t"


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), link, 0o644
    return info, data


def assert_refused(r: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    assert r.returncode == 255, r.stderr
    assert r.stderr.startswith("hpcrun: error: ") and r.stderr.count("\n") == 1, r.stderr
    for word in words:
        assert word in r.stderr
    assert not out.exists()
    assert not list(out.parent.glob("*.sif"))


@pytest.mark.parametrize("members, words", [
    ([entry("../escape", data=b"x")], ["outside the root", "../escape"]),
    ([entry("/abs", data=b"x")], ["outside the root", "/abs"]),
    ([entry("a", tarfile.SYMTYPE, link="../../../etc"), entry("a/passwd", data=b"x")],
     ["climbing out", "../../../etc"]),
])
def test_hostile_layers_are_refused(members, words, tmp_path):
    source = layer_layout(tmp_path, *members)
    out = tmp_path / "out.sif"
    assert_refused(hpcrun("pull", str(out), source, cache=tmp_path / "cache"), out, *words)


def test_device_nodes_are_skipped_with_a_note_for_a_plain_user(unprivileged: Unprivileged,
                                                               tmp_path):
    work = unprivileged.root / "devlayer"
    work.mkdir()
    device = entry("dev/null2", tarfile.CHRTYPE)
    device[0].devmajor, device[0].devminor = 1, 3
    source = layer_layout(work, entry("hello", data=b"hi"), device)
    subprocess.run(["chown", "-R", f"{unprivileged.uid}:{unprivileged.gid}", str(work)],
                   check=True)
    r = unprivileged.run("pull", str(work / "dev.sif"), source,
                         env={"HPCRUN_CACHEDIR": str(work / "cache")})
    assert r.returncode == 0, r.stderr
    assert "device node /dev/null2 skipped" in r.stderr
    root = extract(work / "dev.sif", tmp_path / "root")
    assert (root / "hello").read_text() == "hi"
    assert (root / "dev/null2").is_file() and (root / "dev/null2").stat().st_size == 0


def test_unknown_tag_and_registry_down(registry, tmp_path):
    out = tmp_path / "x.sif"
    cache = tmp_path / "cache"
    r = hpcrun("pull", "--no-https", str(out), f"docker://{registry.host}/nothing:here",
               cache=cache)
    assert_refused(r, out, "no such image", "check the name and tag")
    from tests.oci_registry import free_port

    r = hpcrun("pull", "--no-https", str(out), f"docker://127.0.0.1:{free_port()}/x:1",
               cache=cache)
    assert_refused(r, out, "cannot be reached")
    r = hpcrun("pull", str(out), f"docker://{registry.host}/nothing:here", cache=cache)
    assert_refused(r, out, "--no-https")


def test_layout_with_a_missing_or_corrupt_blob(tmp_path):
    layout = tmp_path / "layout"
    subprocess.run(["cp", "-r", str(LAYOUTS / "whiteout-opaque"), str(layout)], check=True)
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}"],
                                         capture_output=True, check=True).stdout)
    blob = layout / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    out = tmp_path / "out.sif"
    original = blob.read_bytes()
    blob.write_bytes(original[:-8] + b"\0" * 8)
    assert_refused(hpcrun("pull", str(out), f"oci:{layout}", cache=tmp_path / "c1"), out,
                   "digest")
    blob.unlink()
    assert_refused(hpcrun("pull", str(out), f"oci:{layout}", cache=tmp_path / "c2"), out,
                   "no such image, tag or file")


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out.sif"
    out.write_text("keep")
    r = hpcrun("pull", str(out), f"oci:{LAYOUTS / 'root-dir-entry'}", cache=tmp_path / "c")
    assert r.returncode == 255 and "--force" in r.stderr and out.read_text() == "keep"
    r = hpcrun("pull", "--force", str(out), f"oci:{LAYOUTS / 'root-dir-entry'}",
               cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------- TLS and credentials


def make_tls(work: Path) -> tuple[Path, Path, Path]:
    """A CA made here, and a certificate it signs for 127.0.0.1: (ca, cert, key)."""
    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=work)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
            "server.key", "-out", "server.csr")
    (work / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    return work / "ca.crt", work / "server.crt", work / "server.key"


def htpasswd(path: Path, user: str, password: str) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through libxcrypt: what docker-registry's htpasswd wants

        path.write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    return path


def test_registry_with_tls_and_credentials(unprivileged: Unprivileged, tmp_path_factory):
    """The CA trusted through the user's certs.d, credentials from Apptainer's variables."""
    work = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_tls(work)
    registry = start_registry(work / "registry", tls=(cert, key),
                              htpasswd=htpasswd(work / "htpasswd", "alice", "s3cret"))
    try:
        registry.push_flags = ("--dest-tls-verify=false", "--dest-creds=alice:s3cret")
        reference = registry.push(f"oci:{LAYOUTS / 'whiteout-opaque'}", "private/wo:1")
        home = unprivileged.root / "tls-home"
        certs = home / ".config/containers/certs.d" / registry.host
        certs.mkdir(parents=True)
        (certs / "ca.crt").write_bytes(ca.read_bytes())
        subprocess.run(["chown", "-R", f"{unprivileged.uid}:{unprivileged.gid}", str(home)],
                       check=True)
        base = {"HOME": str(home), "HPCRUN_CACHEDIR": str(home / "cache")}
        out = home / "wo.sif"
        login = {"APPTAINER_DOCKER_USERNAME": "alice"}
        r = unprivileged.run("pull", str(out), reference,
                             env={**base, **login, "APPTAINER_DOCKER_PASSWORD": "wrong"})
        assert_refused(r, out, "refused the credentials")
        r = unprivileged.run("pull", str(out), reference, env=base)
        assert_refused(r, out, "refused the credentials")
        r = unprivileged.run("pull", str(out), reference,
                             env={**base, **login, "APPTAINER_DOCKER_PASSWORD": "s3cret"})
        assert r.returncode == 0, r.stderr
        check_layout_result("whiteout-opaque", extract(out, work / "root"))
        r = unprivileged.run("pull", "--docker-login", str(home / "again.sif"), reference,
                             env=base, input="alice\ns3cret\n")
        assert r.returncode == 0 and (home / "again.sif").is_file(), r.stderr
        (certs / "ca.crt").unlink()
        untrusted = home / "untrusted" / "x.sif"
        untrusted.parent.mkdir()
        os.chown(untrusted.parent, unprivileged.uid, unprivileged.gid)
        r = unprivileged.run("pull", str(untrusted), reference,
                             env={**base, **login, "APPTAINER_DOCKER_PASSWORD": "s3cret"})
        assert_refused(r, untrusted, "not trusted")
    finally:
        registry.stop()


# --------------------------------------------------------------------------------- MPI

EXAMPLE = DATA.parents[1] / "examples" / "example.sif"
RANK_REPORT = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
               "print(c.Get_rank(), c.Get_size(), c.allreduce(c.Get_rank() + 1))")


@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/example.sif missing: make example")
def test_mpi_ranks_from_a_pulled_debian_image(unprivileged: Unprivileged, registry, tmp_path):
    """Debian with Open MPI and mpi4py (the example image's root filesystem) as an OCI image
    in the registry, pulled by a plain user, run as 4 ranks under hpcrun mpirun."""
    extract(EXAMPLE, tmp_path / "root")
    source = oci_image(tmp_path / "root", tmp_path / "layout", "1", "--config.entrypoint",
                       "python3", "--config.entrypoint", "-c", "--config.entrypoint", RANK_REPORT)
    reference = registry.push(source, "hpc/debian-mpi:1")
    sif = unprivileged.root / "debian-mpi.sif"
    r = unprivileged.run("pull", "--no-https", str(sif), reference, timeout=600,
                         env={"HPCRUN_CACHEDIR": str(unprivileged.root / "mpi-cache")})
    assert r.returncode == 0, r.stderr
    r = unprivileged.run("mpirun.openmpi", "--oversubscribe", "-np", "4", str(sif),
                         "/.singularity.d/runscript", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.splitlines()) == [f"{rank} 4 10" for rank in range(4)]


@pytest.mark.parametrize("port, words", [
    (40483, "TLS certificate is not trusted"),  # "404" in the port is no HTTP status
    (40123, "TLS certificate is not trusted"),  # nor "401"
    (5000, "TLS certificate is not trusted"),
])
def test_a_registrys_port_is_not_read_as_an_http_status(port, words):
    """Seen in a CI run: skopeo's x509 message for a registry on port 40483 was reported as
    'no such image' (the pattern's '404' matched the port)."""
    reference = oci.parse(f"docker://127.0.0.1:{port}/private/wo:1")
    stderr = (f'time="2026-12-06T03:55:00Z" level=fatal msg="Error parsing image name '
              f'\\"docker://127.0.0.1:{port}/private/wo:1\\": pinging container registry '
              f'127.0.0.1:{port}: Get \\"https://127.0.0.1:{port}/v2/\\": x509: certificate '
              f'signed by unknown authority"\n')
    assert words in str(oci.failure("skopeo", reference, stderr))
