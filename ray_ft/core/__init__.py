"""The pure scheduler and its policies: queues, placement, retries, batching, speculation.

Imports no Ray (a fake clock drives it in tests) and nothing of ray_ft above it: only
``ray_ft.config`` and ``ray_ft.failures``.
"""
