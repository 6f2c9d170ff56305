"""A real OCI registry for the pull tests: Debian's ``docker-registry`` on 127.0.0.1, a free
port, plain HTTP or TLS with htpasswd; images pushed with ``skopeo copy``; OCI images made
from a root filesystem with ``umoci``."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    log: Path
    proc: subprocess.Popen
    push_flags: tuple[str, ...] = ("--dest-tls-verify=false",)

    def push(self, source: str, name: str) -> str:
        """``source`` (a skopeo reference) as NAME:TAG here; its docker:// reference."""
        subprocess.run(["skopeo", "copy", "--quiet", "--all", *self.push_flags, source,
                        f"docker://{self.host}/{name}"], check=True, capture_output=True)
        return f"docker://{self.host}/{name}"

    def blob_downloads(self, digests: set[str]) -> int:
        """How many times any of ``digests`` was served."""
        gets = re.findall(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]+)', self.log.read_text())
        return sum(1 for digest in gets if digest in digests)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(work: Path, *, tls: tuple[Path, Path] | None = None,
                   htpasswd: Path | None = None) -> Registry:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: info", "storage:", "  filesystem:",
             f"    rootdirectory: {work / 'storage'}", "http:", f"  addr: 127.0.0.1:{port}"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: test", f"    path: {htpasswd}"]
    config = work / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = work / "registry.log"
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Registry(f"127.0.0.1:{port}", log, proc)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start: {log.read_text()}")


def oci_image(rootfs: Path, layout: Path, tag: str, *config: str) -> str:
    """An OCI layout holding ``rootfs`` as one layer, umoci ``config`` flags applied."""
    def umoci(*argv: str) -> None:
        subprocess.run(["umoci", *argv], check=True, capture_output=True)

    if not layout.exists():
        umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:{tag}")
    umoci("insert", "--image", f"{layout}:{tag}", str(rootfs), "/")
    if config:
        umoci("config", "--image", f"{layout}:{tag}", *config)
    return f"oci:{layout}:{tag}"
