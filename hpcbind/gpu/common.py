"""What both GPU providers do alike: number the container's GPUs."""

from __future__ import annotations

from collections.abc import Sequence


def container_indices(host_indices: Sequence[int]) -> tuple[int, ...]:
    """Each host GPU number's place among the GPUs the container gets: 3,1,5 -> 1,0,2.

    The container sees only its GPUs, numbered from 0 in host order (as Sarus renumbers).
    """
    ranks = {index: rank for rank, index in enumerate(sorted(set(host_indices)))}
    return tuple(ranks[i] for i in host_indices)
