"""hpcbind: a container runtime and MPI launcher for HPC sites (command: ``hpcrun``)."""

__version__ = "0.1.0"
