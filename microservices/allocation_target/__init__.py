"""Step 1: the shadow allocation proposer (SPEC §2)."""
