"""The cluster's shared state (breakers, failure windows, liveness book, snapshots: pure, no
Ray) and the executor's client of it (the one module here that talks to the manager actor).

May import ``ray_ft.core`` (retry policy, attribution), ``ray_ft.config``, ``ray_ft.failures``.
"""
