"""The Ray actors: the cluster's detached manager actor (its façade, probe fleet, liveness and
health loops, state writer), the health probe pinned to each node, the checkpoint keeper.

May import ``ray_ft.manager``, ``ray_ft.health``, ``ray_ft.checkpoints`` and below; never
``ray_ft.runtime`` or ``ray_ft.tools``.
"""
