"""The core both daemons share: reading efficiency, settings, Redis, HTTP, logging and the loop runner."""
