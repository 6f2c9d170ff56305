# Two entry points for a fresh Debian 12 machine where you are root (see README.md):
#   make demo   install what is needed, build the example image once, run it
#   make test   install what is needed, run the whole test suite
# Both are idempotent: a second run only re-checks.

SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := $(CURDIR)/.venv
HPCRUN := $(VENV)/bin/hpcrun
EXAMPLE := examples/example.sif
TEST_USER := hpcbind-test

APT_PACKAGES := python3-venv python3-dev gcc make squashfuse squashfs-tools fuse3 \
	openmpi-bin libopenmpi-dev mpich libmpich-dev slurm-wlm munge rdma-core libibverbs-dev \
	ibverbs-providers hwloc charliecloud python3-mpi4py libfuse3-dev libsquashfuse-dev debootstrap lz4 zstd pciutils util-linux \
	uidmap fakeroot libcap2-bin skopeo umoci docker-registry \
	e2fsprogs fuse2fs fuse-overlayfs

STARTER := $(VENV)/bin/hpcrun-starter
SQUASHFS_SERVER := $(VENV)/bin/hpcbind-squashfuse
SPAWN_LIBRARY := $(VENV)/bin/hpcbind-spawn.so

# also in tests/conftest.py, which builds the helpers from the checkout under test
SPAWN_LIBRARY_CFLAGS := -O2 -Wall -Wextra -Werror -shared -fPIC -nostdlib -ffreestanding \
	-fno-stack-protector

.PHONY: demo test deps venv starter test-user example bench bench-osu clean

# The example's runscript (an mpi4py hello) as 4 ranks, the host's mpirun starting them in
# one container per node; root needs Open MPI's explicit consent.
demo: deps venv starter example
	$(HPCRUN) mpirun.openmpi --allow-run-as-root --oversubscribe -np 4 $(EXAMPLE) \
		/.singularity.d/runscript

test: deps venv starter bytecode test-user example
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# apt only when something is missing: `apt-get update` alone takes ~20 s
deps:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$NF != "installed" {print $$1}'; \
		for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The venv is made from Debian's python3 in a world-readable place so the unprivileged test
# user can run it. pip's console script is replaced by scripts/hpcrun.in: `python -I -S`
# skips the site-packages scan, which costs ~50 ms per launch (per MPI rank). The editable
# install is a plain path in a .pth file (editable_mode=compat): pip's default, an import
# hook, cost every launch that loads site-packages 7 ms to import it.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/hpcrun.in Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --config-settings editable_mode=compat -e '.[test,cross-check]' \
		mpi4py matplotlib
	sed -e 's|@PYTHON@|$(VENV)/bin/python|' -e 's|@SRC@|$(CURDIR)|' scripts/hpcrun.in > $(HPCRUN)
	chmod 755 $(HPCRUN)
	touch $@

# The compiled helpers, beside hpcrun where hpcbind looks for them (without them it takes
# the slower ways): the ranks' way into their node's container without a Python interpreter
# each (hpcbind/runtime/starter.c), and the image's FUSE server that lets the kernel cache
# what cannot change (hpcbind/runtime/squashfs_server.c), and the library that starts the
# processes MPI_Comm_spawn asks for in the container, or refuses where the launcher would
# start them on the host (hpcbind/mpi/spawn.c: no libc linked, so it loads into any image).
starter: $(STARTER) $(SQUASHFS_SERVER) $(SPAWN_LIBRARY)
$(STARTER): hpcbind/runtime/starter.c | venv
	gcc -O2 -Wall -Wextra -Werror -o $@ $<
$(SQUASHFS_SERVER): hpcbind/runtime/squashfs_server.c | venv deps
	gcc -O2 -Wall -Wextra -Werror $$(pkg-config --cflags fuse3) -o $@ $< \
		-lsquashfuse_ll -lsquashfuse $$(pkg-config --libs fuse3)
$(SPAWN_LIBRARY): hpcbind/mpi/spawn.c | venv
	gcc $(SPAWN_LIBRARY_CFLAGS) -o $@ $<

# Bytecode for every user: the unprivileged user (and MPI ranks) cannot write __pycache__
# here, and without it each launch recompiles the modules it imports (~30 ms).
bytecode: venv
	$(VENV)/bin/python -m compileall -q hpcbind

# subordinate ids: test_security.py shows newuidmap working before it is refused,
# test_fakeroot.py builds with --fakeroot in a namespace of them
test-user:
	@id $(TEST_USER) >/dev/null 2>&1 || useradd --create-home --shell /bin/bash $(TEST_USER)
	@touch /etc/subuid /etc/subgid
	@grep -q '^$(TEST_USER):' /etc/subuid 2>/dev/null || usermod --add-subuids 300000-365535 $(TEST_USER)
	@grep -q '^$(TEST_USER):' /etc/subgid 2>/dev/null || usermod --add-subgids 300000-365535 $(TEST_USER)

example: $(EXAMPLE)
$(EXAMPLE): examples/example.def benchmarks/launch/mpi_hello.c | venv
	$(HPCRUN) build --force $@ examples/example.def

bench: deps venv starter
	$(VENV)/bin/python benchmarks/launch/bench_exec.py

bench-osu: deps venv starter bytecode example
	$(VENV)/bin/python benchmarks/osu/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
