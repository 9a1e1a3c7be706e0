"""P3.1 efficiency integration daemons: the shadow allocation proposer and the plan governor."""
