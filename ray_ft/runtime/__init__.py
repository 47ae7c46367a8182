"""The Ray side of the executor: the public executor and actor pool, the remote trampoline
and batch task, task options.

May import everything below it: ``ray_ft.actors``, ``ray_ft.manager``, ``ray_ft.health``,
``ray_ft.core``.
"""
