"""GPU discovery for ``--nv`` (``nvidia``) and ``--rocm`` (``rocm``): driver libraries,
tools, device nodes and the environment, as plan entries. Reads the host through a
``HostRoot`` only. May import ``host``, ``hostroot``, ``plan``, ``errors``; never the runtime."""
