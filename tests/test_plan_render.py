"""Rendering for people: the table's rows, the explain sentences verbatim, and the diff text."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import fields, replace

import pytest
from test_plan_model import fabric_part, merged, mpi_part, nvidia_part

from hpcbind import planview
from hpcbind.plan import (
    CONTAINER_LIBDIR, BindPlan, Check, Device, EnvAction, EnvOp, Fact, Link, Mount, Need, PlanPart,
    Provenance, Rejected, Status,
)
from hpcbind.planview import FACTS, SECTIONS, diff, explain, render_table

ANSI = re.compile(r"\x1b\[[0-9;]*m")
WIDE = 400  # wide enough that no row wraps, so a row is one line


@pytest.fixture
def plan() -> BindPlan:
    return merged([0, 1, 2])


def row_of(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell`` (split on column gaps)."""
    lines = [line for line in text.splitlines() if line.split("   ")[0].strip() == first_cell]
    assert len(lines) == 1, (first_cell, lines)
    return [cell.strip() for cell in re.split(r" {3,}", lines[0].strip())]


# --- the table -----------------------------------------------------------------------------------------


def test_every_mount_is_a_row_with_its_provider_and_rule(plan):
    text = render_table(plan, width=WIDE)
    for m in plan.mounts:
        assert row_of(text, m.destination) == [m.destination, m.source, m.kind, ",".join(m.options),
                                               str(m.need), m.provider, m.rule, m.reason]


def test_every_device_is_a_row_with_its_numbers(plan):
    text = render_table(plan, width=WIDE)
    for d in plan.devices:
        assert row_of(text, d.path) == [d.path, f"{d.type} {d.major}:{d.minor}", d.permissions,
                                        d.provider, d.rule, d.reason]


def test_env_checks_and_rejections_are_rows(plan):
    text = render_table(plan, width=WIDE)
    assert row_of(text, "UCX_NET_DEVICES") == ["UCX_NET_DEVICES", "set", "mlx5_0:1", "fabric.verbs",
                                               "first active port"]
    assert row_of(text, "PMI_FD") == ["PMI_FD", "pass", "mpi.pmi2", "the PMI2 socket is inherited"]
    assert row_of(text, "warn") == ["warn", "verbs-provider-abi", "host rdma-core 44, image 39", "fabric.verbs",
                                    "use an image with rdma-core 44"]
    assert row_of(text, "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05") == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", "suffix is not 550.54.15", "gpu.nvidia"]


def test_sections_in_order_with_counts_and_the_summary_last(plan):
    text = render_table(plan, width=WIDE)
    titles = [line for line in text.splitlines() if re.fullmatch(r"[A-Z][a-z]+ \(\d+\)", line)]
    assert titles == ["Mounts (6)", "Devices (18)", "Environment (5)", "Links (1)", "Checks (2)", "Rejected (1)"]
    assert text.splitlines()[-1] == (f"6 mounts, 18 devices, 5 env, 1 links; checks: 1 ok, 1 warn, 0 fail; "
                                     f"1 rejected; digest {plan.digest}")


def test_without_a_tty_no_escape_codes_and_no_trailing_blanks(plan):
    text = render_table(plan)
    assert not ANSI.search(text)
    assert all(line == line.rstrip() for line in text.splitlines())
    # at the default width the longest path is still on one line
    assert "/usr/lib/x86_64-linux-gnu/libibverbs/libmlx5-rdmav34.so" in text


def test_a_narrow_console_folds_the_table_but_not_the_summary(plan):
    lines = render_table(plan, width=80).splitlines()
    assert max(map(len, lines[:-1])) <= 80
    assert lines[-1] == planview.summary(plan)


def test_check_status_is_coloured():
    failing = BindPlan.merge((), [PlanPart(checks=[
        Check("glibc-floor", Status.FAIL, "image glibc 2.31 < GLIBC_2.34 needed by libcuda.so.1", "checks",
              "use an image with glibc >= 2.34"),
        Check("mpi-abi", Status.OK, "libmpi.so.40 both sides", "checks")])])
    text = render_table(failing, color=True, width=WIDE)
    fail_line = next(line for line in text.splitlines() if "glibc-floor" in line)
    ok_line = next(line for line in text.splitlines() if "mpi-abi" in line)
    assert "\x1b[1;31mfail" in fail_line  # bold red
    assert "\x1b[32mok" in ok_line  # green
    assert ANSI.sub("", text) == render_table(failing, width=WIDE)


def test_empty_sections_say_none():
    text = render_table(BindPlan.merge(("ib",), [fabric_part()]), width=WIDE)
    assert "Links: none" in text.splitlines() and "Rejected: none" in text.splitlines()
    assert "Links (" not in text


def test_markup_in_values_is_shown_as_is():
    plan = BindPlan.merge((), [PlanPart(mounts=[
        Mount("/opt/[bold]x[/bold]", "/x", "file", "cdi", "cdi:a.com/b=c", "brackets [in] a path")])])
    assert row_of(render_table(plan, width=WIDE), "/x")[:2] == ["/x", "/opt/[bold]x[/bold]"]


# --- explain ----------------------------------------------------------------------------------------------


def test_explain_sentences_verbatim(plan):
    lines = explain(plan).splitlines()
    assert lines[0] == ("/.hpcbind/lib/libcuda.so.1 is bound from /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15 "
                        "(lib, ro,nosuid,nodev) by gpu.nvidia, rule driver-suffix: "
                        "suffix 550.54.15 is the kernel module's version")
    assert "/dev/infiniband/uverbs3 is device c 231:195 from host /dev/infiniband/uverbs3 by fabric.verbs, " \
           "rule uverbs: mlx5_3 port 1 ACTIVE" in lines
    assert "LD_LIBRARY_PATH is appended with /.hpcbind/lib by fabric.verbs: verbs providers" in lines
    assert "PMI_FD is passed through from the host by mpi.pmi2: the PMI2 socket is inherited" in lines
    assert "/.hpcbind/lib/libcuda.so links to libcuda.so.1, made by gpu.nvidia: dev link, as libnvc" in lines
    assert "check verbs-provider-abi warn (fabric.verbs): host rdma-core 44, image 39; " \
           "fix: use an image with rdma-core 44" in lines
    assert "check driver-version ok (gpu.nvidia): kernel module 550.54.15" in lines
    assert lines[-1] == ("not bound: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05: suffix is not 550.54.15 "
                         "(gpu.nvidia)")


def test_explain_is_one_sentence_per_entry_from_the_templates(plan):
    lines = explain(plan).splitlines()
    entries = [e for section in SECTIONS for e in getattr(plan, section.attr)]
    assert len(lines) == len(entries) == 6 + 18 + 5 + 1 + 2 + 1
    for line, entry in zip(lines, entries):
        match entry:
            case Mount():
                assert line == planview.WHY_MOUNT.format(
                    destination=entry.destination, source=entry.source, kind=entry.kind,
                    options=",".join(entry.options), provider=entry.provider, rule=entry.rule, reason=entry.reason)
            case Device():
                assert line == planview.WHY_DEVICE.format(
                    path=entry.path, numbers=f"{entry.type} {entry.major}:{entry.minor}", source=entry.source,
                    provider=entry.provider, rule=entry.rule, reason=entry.reason)
            case EnvOp():
                change = planview.ENV_CHANGE[entry.action].format(value=entry.value)
                assert line == planview.WHY_ENV.format(name=entry.name, change=change, provider=entry.provider,
                                                       reason=entry.reason)
            case Rejected():
                assert line == planview.WHY_REJECTED.format(candidate=entry.candidate, reason=entry.reason,
                                                            provider=entry.provider)
            case _:
                assert line.startswith(("check ", f"{CONTAINER_LIBDIR}/libcuda.so links"))


def test_explain_without_a_reason_says_so():
    plan = BindPlan.merge((), [PlanPart(devices=[Device("/dev/kfd", "c", 511, 0, "gpu.rocm", "kfd")],
                                        rejected=[Rejected("/dev/dri/renderD129", "gpu.rocm", "")])])
    assert explain(plan) == ("/dev/kfd is device c 511:0 from host /dev/kfd by gpu.rocm, rule kfd: no reason recorded\n"
                             "not bound: /dev/dri/renderD129: no reason recorded (gpu.rocm)\n")


def test_every_env_action_has_a_sentence():
    assert set(planview.ENV_CHANGE) == set(EnvAction)


# --- diff -------------------------------------------------------------------------------------------------


def test_diff_of_a_plan_with_itself_is_empty(plan):
    assert diff(plan, merged([2, 1, 0])) == ""


def test_diff_shows_added_removed_and_changed_entries():
    a = BindPlan.merge(("nv",), [nvidia_part()])
    part = nvidia_part()
    part.devices = [d for d in part.devices if d.path != "/dev/nvidia7"]  # a GPU fell off the bus
    part.devices[0] = replace(part.devices[0], minor=254)  # a changed entry
    part.facts = [f for f in part.facts if f.value != "0000:0e:00.0"]
    b = BindPlan.merge(("ib", "nv"), [part, PlanPart(mounts=[fabric_part().mounts[0]])])
    assert diff(a, b, "before.json", "after.json") == (
        f"--- before.json {a.digest}\n"
        f"+++ after.json {b.digest}\n"
        "@@ request @@\n"
        "-nv\n"
        "+ib nv\n"
        "@@ mounts @@\n"
        "+/etc/libibverbs.d  /etc/libibverbs.d  config  ro,nosuid,nodev  required  fabric.verbs  providers  "
        "verbs provider list\n"
        "@@ devices @@\n"
        "-/dev/nvidia7  c 195:7  -  rwm  gpu.nvidia  gpu  GPU 7\n"
        "-/dev/nvidiactl  c 195:255  -  rwm  gpu.nvidia  control  every GPU needs it\n"
        "+/dev/nvidiactl  c 195:254  -  rwm  gpu.nvidia  control  every GPU needs it\n"
        "@@ facts @@\n"
        "-gpu.nvidia  gpu  0000:0e:00.0\n"
    )


def test_diff_pairs_repeated_keys_as_multisets():
    """One provider prepending two directories: only the one that changed shows."""
    def plan(*dirs: str) -> BindPlan:
        return BindPlan.merge((), [PlanPart(env=[EnvOp("LD_LIBRARY_PATH", EnvAction.PREPEND, d, "gpu.rocm",
                                                       "ROCm libraries") for d in dirs])])
    assert diff(plan("/opt/rocm/lib", "/opt/rocm/lib64"), plan("/opt/rocm/lib", "/opt/rocm/llvm/lib")).splitlines()[2:] == [
        "@@ environment @@",
        "-LD_LIBRARY_PATH  prepend  /opt/rocm/lib64  gpu.rocm  ROCm libraries",
        "+LD_LIBRARY_PATH  prepend  /opt/rocm/llvm/lib  gpu.rocm  ROCm libraries",
    ]


def _other(value):
    """A different value of the same kind, to change one field of an entry."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, (Status, EnvAction, Need)):
        return next(v for v in type(value) if v != value)
    if isinstance(value, tuple):
        return (*value, "extra")
    if isinstance(value, Provenance):
        return replace(value, soname="libother.so.1")
    return value + "-changed"


@pytest.mark.parametrize("section", [*SECTIONS, FACTS], ids=lambda s: s.title)
def test_every_field_of_an_entry_shows_in_its_diff(section):
    """Two plans whose digests differ must never diff empty: each field is in the diff line."""
    entry = getattr(merged([0, 1, 2]), section.attr)[0]
    for f in fields(entry):
        changed = replace(entry, **{f.name: _other(getattr(entry, f.name))})
        a = BindPlan(**{section.attr: (entry,)})
        b = BindPlan(**{section.attr: (changed,)})
        assert diff(a, b).count("\n") >= 5, f"{section.title}.{f.name} does not show in a diff"


def test_diff_sections_cover_the_whole_plan():
    shown = {s.attr for s in (*SECTIONS, FACTS)} | {"request", "schema"}
    assert shown == {f.name for f in dataclasses.fields(BindPlan)}


def test_diff_sections_cover_mpi_entries():
    a = BindPlan.merge((), [mpi_part()])
    b = BindPlan.merge((), [])
    assert diff(a, b).splitlines()[2:] == [
        "@@ mounts @@",
        "-/var/spool/slurmd/pmix.42.0  /var/spool/slurmd/pmix.42.0  dir  rw,nosuid,nodev  required  mpi.pmix  "
        "pmix-server-tmpdir  PMIX_SERVER_TMPDIR",
        "@@ environment @@",
        "-PMIX_MCA_psec  set  native  mpi.pmix  no munge in the image",
        "-PMI_FD  pass  -  mpi.pmi2  the PMI2 socket is inherited",
        "@@ facts @@",
        "-mpi.pmix  server-version  4.2.9",
    ]


def test_link_and_fact_lines(plan):
    assert planview._line(SECTIONS[3], Link("/a", "b", "p", "r")) == "/a  b  p  r"
    assert planview._line(FACTS, Fact("gpu.nvidia", "driver-version", "550.54.15")) == \
        "gpu.nvidia  driver-version  550.54.15"
