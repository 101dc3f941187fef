"""Notebook function + the objects it uses -> a BentoML service: capture, requirements,
code generation, build and serve."""
