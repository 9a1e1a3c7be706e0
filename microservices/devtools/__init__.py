"""Development tooling shared by the tests, the demo and the benchmarks; not used by the daemons."""
