"""The runtime: namespaces, the image mount and its session layer, binds, devices, links,
environment, exec (``container``), the node's shared container (``nodesession``), entering a
``--fakeroot`` user namespace (``userns``, for the builder too). It applies a
``ContainerSpec`` and knows nothing of GPUs, MPI or the plan. Imported on every rank's path:
namedtuples and the standard library only. May import ``image.source``/``image.sif``
(reading an image), ``host.conventions``, ``host.subids`` (the map to enter), ``errors``."""
