"""Images: what an IMAGE argument is (``source``, on every rank's path), the SIF format
(``sif``, ``siftool``), signing (``integrity``, ``policy``), what an image contains
(``contents``, ``metadata``), definition files and the builder (``deffile``, ``build``).
May import ``host``, ``mpi.abi`` (MPI facts of an image), ``hostroot``, ``errors``; never the
runtime's namespaces or the plan."""
