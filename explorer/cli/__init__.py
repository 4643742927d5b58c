"""``pruning-explorer``: the command line, one module per command group (``main`` runs it)."""
