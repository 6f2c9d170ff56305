"""BindPlan.merge applying a later stage's withdrawals (container-first)."""

from hpcbind.plan import CONTAINER_LIBDIR, BindPlan, Link, Mount, PlanPart, Rejected


def test_withdrawn_mounts_and_their_links_are_dropped():
    lib = f"{CONTAINER_LIBDIR}/libfoo.so.1.2"
    provider = PlanPart(
        mounts=[Mount("/usr/lib/libfoo.so.1.2", lib, "lib", "gpu.nvidia", "list:compute"),
                Mount("/usr/lib/libbar.so.3", f"{CONTAINER_LIBDIR}/libbar.so.3", "lib",
                      "gpu.nvidia", "list:compute")],
        links=[Link(f"{CONTAINER_LIBDIR}/libfoo.so.1", "libfoo.so.1.2", "gpu.nvidia"),
               Link(f"{CONTAINER_LIBDIR}/libfoo.so", "libfoo.so.1", "gpu.nvidia"),
               Link(f"{CONTAINER_LIBDIR}/libbar.so", "libbar.so.3", "gpu.nvidia")])
    preflight = PlanPart(rejected=[
        Rejected("/usr/lib/libfoo.so.1.2", "gpu.nvidia", "container-first: the image ships it",
                 withdraws=True),
        Rejected("/usr/lib/libbar.so.3", "gpu.nvidia", "only a note")])
    plan = BindPlan.merge(("nv",), [provider, preflight])
    assert [m.destination for m in plan.mounts] == [f"{CONTAINER_LIBDIR}/libbar.so.3"]
    assert [ln.path for ln in plan.links] == [f"{CONTAINER_LIBDIR}/libbar.so",
                                              f"{CONTAINER_LIBDIR}/libfoo.so"]
    assert len(plan.rejected) == 2
    assert BindPlan.from_json(plan.to_json()) == plan


def test_the_same_env_operation_from_two_providers_is_kept_once():
    from hpcbind.plan import EnvAction, EnvOp

    op = ("LD_LIBRARY_PATH", EnvAction.APPEND, CONTAINER_LIBDIR)
    parts = [PlanPart(env=[EnvOp(*op, "gpu.nvidia"), EnvOp("CUDA_VISIBLE_DEVICES",
                                                          EnvAction.SET, "0", "gpu.nvidia")]),
             PlanPart(env=[EnvOp(*op, "fabric.verbs")])]
    plan = BindPlan.merge(("ib", "nv"), parts)
    assert [(e.name, e.provider) for e in plan.env] == [("LD_LIBRARY_PATH", "fabric.verbs"),
                                                        ("CUDA_VISIBLE_DEVICES", "gpu.nvidia")]
