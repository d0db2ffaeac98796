"""The hardware-in-the-loop bench: a simulated CNC controller the agent cannot tell from a
real one. Never imported by the agent itself, only by the demo, tests and benchmarks."""
