"""The assembled container for people and machines: ``hpcrun exec --dry-run [--json]``.

Every mount the runtime will make (the image and its session layer, the system binds, home,
cwd, /tmp, the user's binds, the plan's entries), with source, destination, options,
provider and reason; the devices, links, environment, working directory and command; the
plan's checks; and the apply log (what was skipped or changed, and why).
"""

from __future__ import annotations

import json

from hpcbind.assemble import Assembly
from hpcbind.runtime.binds import mount_options
from hpcbind.runtime.container import generated_mounts


def to_dict(assembly: Assembly) -> dict:
    spec = assembly.spec
    mounts = [{"source": source, "destination": destination, "options": options.split(","),
               "provider": "runtime", "reason": reason, "need": "required"}
              for source, destination, options, reason in generated_mounts(spec)]
    mounts += [{"source": b.source, "destination": b.destination,
                "options": list(mount_options(b)), "provider": b.provider, "reason": b.reason,
                "need": b.need} for b in spec.binds]
    return {
        "image": {"path": spec.image.path, "kind": spec.image.kind},
        "command": list(spec.argv),
        "cwd": spec.cwd,
        "mounts": mounts,
        "devices": [{"source": d.source, "path": d.destination, "provider": d.provider,
                     "reason": d.reason} for d in spec.devices],
        "links": [{"path": path, "target": target} for path, target in spec.links],
        "env": {"base": dict(spec.env.base),
                "edits": [{"action": e.action, "name": e.name, "value": e.value}
                          for e in spec.env.edits],
                "image_scripts": spec.use_env_scripts},
        "user_namespace": None if spec.id_map is None else
        {"uid_map": [list(line) for line in spec.id_map.uid_map],
         "gid_map": [list(line) for line in spec.id_map.gid_map], "root_inside": True},
        "checks": [{"status": status, "name": name, "message": message, "fix": fix}
                   for status, name, message, fix in assembly.checks],
        "log": list(assembly.log),
    }


def render_json(assembly: Assembly) -> str:
    return json.dumps(to_dict(assembly), indent=2) + "\n"


def render_text(assembly: Assembly) -> str:
    data = to_dict(assembly)
    lines = [f"Container of {data['image']['path']} ({data['image']['kind']})",
             f"command: {' '.join(data['command'])}", f"working directory: {data['cwd']}"]
    if data["user_namespace"]:
        lines.append("user: root inside (--fakeroot), uid map " + ", ".join(
            " ".join(map(str, line)) for line in data["user_namespace"]["uid_map"]))
    lines += _mounts(data)
    env = data["env"]
    lines += ["", f"Environment: {len(env['base'])} variables from the host and hpcrun "
                  f"({', '.join(sorted(env['base']))}), then "
                  + ("the image's /.singularity.d/env scripts, then " if env["image_scripts"]
                     else "") + "these edits:"]
    lines += [f"  {e['action']} {e['name']}" + (f"={e['value']}" if e["action"] != "unset" else "")
              for e in env["edits"]] or ["  (none)"]
    lines += _section("Checks:", [(c["status"], c["name"], c["message"]
                                   + (f" (fix: {c['fix']})" if c["fix"] else ""))
                                  for c in data["checks"]])
    lines += _log(data)
    return "\n".join(lines) + "\n"


def render_mounts(assembly: Assembly) -> str:
    """Mounts, devices, links and the apply log: what ``hpcrun plan IMAGE`` adds to the plan."""
    data = to_dict(assembly)
    return "\n".join([*_mounts(data), *_log(data)]) + "\n"


def _mounts(data: dict) -> list[str]:
    lines = ["", "Mounts (in order):"]
    lines += _columns([(m["destination"], m["source"], ",".join(m["options"]),
                        f"{m['provider']}: {m['reason']}" + (" [if present]" if m["need"] ==
                                                             "optional" else ""))
                       for m in data["mounts"]])
    lines += _section("Devices:", [(d["path"], d["source"], f"{d['provider']}: {d['reason']}")
                                         for d in data["devices"]])
    lines += _section("Links:", [(ln["path"], "-> " + ln["target"]) for ln in data["links"]])
    return lines


def _log(data: dict) -> list[str]:
    return ["", "Apply log (skipped or changed, and why):",
            *([f"  {line}" for line in data["log"]] or ["  (nothing)"])]


def _section(title: str, rows: list[tuple[str, ...]]) -> list[str]:
    return ["", title, *(_columns(rows) or ["  (none)"])]


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows aligned on every column but the last, which runs on (a pipe keeps paths whole)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]])
            for row in rows]
