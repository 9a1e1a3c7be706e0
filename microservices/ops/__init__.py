"""Operator tooling on the daemons' own core: the ``p31ctl`` command, and the test-data injectors it and the proof
scripts share."""
