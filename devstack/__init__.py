"""The developers' stack: a whole grant service on one machine as real
processes (``localstack``), and the commands built on it: ``grants demo``
(``make run``), ``grants bench``, ``grants sandbox``. Tests use it too;
runtime code never imports it."""
