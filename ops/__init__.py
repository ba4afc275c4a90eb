"""The operators' tools: the ``grants`` command line (its entry point,
``ops.cli``) and the commands ops run against the results store and the
backends. Runtime code (the worker, the producer library) never imports
this package."""
