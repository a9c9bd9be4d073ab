"""Sub-commands of the ``pacbayes`` command line, one module each (``add_parser`` + ``run``)."""
