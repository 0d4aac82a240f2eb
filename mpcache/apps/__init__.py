"""Applications on top of the engine: what the ``mpcache`` command runs.

``jobs`` (the registry of jobs a launched party set runs), ``generate`` (private
generation), ``launcher`` (starts the party processes and runs a job over the network),
``explain`` (the teaching walk-through of one operation's messages) and ``bench`` (the
``mpcache bench`` benchmarks).  The command line itself is :mod:`mpcache.cli`.  Nothing
below this layer (``mpc/``, ``tensor``, ``functions/``, ``net/``, ``nn/``) imports it.
"""
