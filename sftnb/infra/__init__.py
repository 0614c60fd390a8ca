"""The plumbing under the science: the resumable results store (``store``; ``locks``: who computes a unit;
``atomic``: nothing half-written), one run's processes (``launch``: who am I; ``distributed``: sharing the units
among ranks, groups of ranks) and the one error type (``errors``). Nothing here knows the paper."""
