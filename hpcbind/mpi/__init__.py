"""MPI: the launcher's rendezvous and environment on the host (``host``, ``hostmpi``), MPI
and PMIx ABIs (``abi``), the launcher command line (``launcher``), where a rank stands
(``rankenv``) and its GPU/HCA (``binding``); ``spawn.c``, the library ranks preload so that
MPI_Comm_spawn starts its processes in the container or is refused. May import ``host``,
``hostroot``, ``plan``, ``errors``; never the runtime or ``image``."""
