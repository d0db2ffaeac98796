"""Adaptive feed control: the control law's state machine, teach-in, and the one actuator."""
