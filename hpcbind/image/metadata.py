"""An image's metadata as Apptainer records it: labels, definition file, runscript, environment.

Read without mounting anything: files come out of the squashfs with Debian's ``unsquashfs
-cat`` (at the SIF partition's offset), the definition file from the SIF's Deffile object
when there is one.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.image.source import ImageKind, ImageSource

LABELS = "/.singularity.d/labels.json"
DEFFILE = "/.singularity.d/Singularity"
RUNSCRIPT = "/.singularity.d/runscript"
ENVIRONMENT = "/.singularity.d/env/90-environment.sh"
HELPFILE = "/.singularity.d/runscript.help"


@dataclass(frozen=True)
class Metadata:
    labels: dict[str, str]
    deffile: str
    runscript: str
    environment: str
    helpfile: str


def read_file(image: ImageSource, path: str) -> str | None:
    """A file of the image as text, or None when the image does not have it."""
    if image.kind == ImageKind.DIRECTORY:
        # links resolve inside the sandbox, as they would in the container: a runscript
        # linked to /etc/shadow shows the sandbox's file, never the host's
        return HostRoot(Path(image.path)).read_text(path)
    # unsquashfs never leaves the image: it refuses links it cannot resolve inside
    result = subprocess.run(["unsquashfs", "-o", str(image.offset), "-cat", image.path, path],
                            capture_output=True)
    if result.returncode != 0:
        return None
    return result.stdout.decode("utf-8", errors="replace")


def read_metadata(image: ImageSource) -> Metadata:
    labels_text = read_file(image, LABELS)
    try:
        labels = json.loads(labels_text) if labels_text else {}
    except json.JSONDecodeError:
        raise HpcbindError(f"{image.path}: {LABELS} is not valid JSON",
                           "rebuild the image") from None
    return Metadata(
        labels=labels,
        deffile=_sif_deffile(image) or read_file(image, DEFFILE) or "",
        runscript=read_file(image, RUNSCRIPT) or "",
        environment=read_file(image, ENVIRONMENT) or "",
        helpfile=read_file(image, HELPFILE) or "",
    )


def _sif_deffile(image: ImageSource) -> str | None:
    if image.kind != ImageKind.SIF:
        return None
    from hpcbind.image.sif import DataType, SifImage

    with SifImage.open(image.path) as sif:
        for d in sif.descriptors:
            if d.data_type == DataType.DEFFILE:
                return sif.read(d).decode("utf-8", errors="replace")
    return None


def to_json(meta: Metadata) -> str:
    """Apptainer's ``inspect --json`` document."""
    attributes = {"labels": meta.labels, "deffile": meta.deffile, "runscript": meta.runscript,
                  "environment": meta.environment, "helpfile": meta.helpfile}
    return json.dumps({"data": {"attributes": attributes}, "type": "container"}, indent=4)
