"""Facts of a Linux root, for any provider and for images alike: ELF files (``elf``), the
loader's cache and view (``ldcache``, ``loader``), sysfs and procfs (``sysfs``), binding host
libraries and tools as plan entries (``libbind``), shared conventions (``conventions``), the
subordinate ids and the ``--fakeroot`` namespace made of them (``subids``).
May import ``hostroot``, ``plan``, ``errors`` only."""
