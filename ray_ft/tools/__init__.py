"""What people run: the ``ray-ft`` command, the demo, and the chaos drills.

The top layer: may import every other package of ray_ft; nothing imports it but the demo's
own use of the chaos drills.
"""
