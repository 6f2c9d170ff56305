"""One module per ``hpcrun`` command: ``configure(parser)`` and ``run(args)``. They parse and
call; they hold no logic of their own beyond rendering. May import every layer."""
