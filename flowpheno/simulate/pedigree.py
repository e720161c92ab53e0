"""Exact pedigree kinship of simulated families (no genotypes): the expected GRM of relatives.

The kinship here is twice the coefficient of coancestry, the expectation of a GRM with unit
diagonal for non-inbred individuals: 1/2 for parent-offspring and full siblings, 1/4 for
grandparents, half-siblings, aunts/uncles, 1/8 for first cousins (Lynch & Walsh 1998, ch. 7).
"""

from __future__ import annotations

import numpy as np


def pedigree_kinship(size: int, children: int) -> np.ndarray:
    """Kinship ``(size, size)`` of one family grown from a founder couple: each descendant in
    birth order marries an unrelated founder and has ``children`` children, until the family
    has ``size`` members (the last couple may have fewer children).

    Recursion (founders unrelated, diagonal 1): a child's kinship with an earlier member is
    the mean of its parents' kinships with that member, and its own diagonal is
    ``1 + (kinship of its parents) / 2`` (``1 + F``, F the inbreeding coefficient).

    Raises:
        ValueError: ``size < 2`` or ``children < 1``.

    Example:
        >>> pedigree_kinship(4, 2)[2:, :]  # two children of the founder couple
        array([[0.5, 0.5, 1. , 0.5],
               [0.5, 0.5, 0.5, 1. ]])
    """
    if size < 2 or children < 1:
        raise ValueError(f"a family needs size >= 2 and children >= 1, got size {size}, children {children}")
    parents: list[tuple[int, int] | None] = [None, None]
    queue = [-1]  # -1: the founder couple (0, 1); otherwise a descendant still to marry
    while len(parents) < size:
        person = queue.pop(0)
        if person == -1:
            father, mother = 0, 1
        else:
            parents.append(None)  # the spouse, a founder
            father, mother = person, len(parents) - 1
        for _ in range(children):
            if len(parents) == size:
                break
            parents.append((father, mother))
            queue.append(len(parents) - 1)
    kinship = np.zeros((size, size))
    for i, pair in enumerate(parents):
        if pair is None:
            kinship[i, i] = 1.0
            continue
        father, mother = pair
        kinship[i, :i] = kinship[:i, i] = (kinship[father, :i] + kinship[mother, :i]) / 2
        kinship[i, i] = 1.0 + kinship[father, mother] / 2
    return kinship


def families_kinship(families: int, size: int, children: int) -> np.ndarray:
    """Block-diagonal kinship of ``families`` unrelated copies of :func:`pedigree_kinship`:
    ``(n, n)`` with ``n = families * size``. Raises ``ValueError`` as :func:`pedigree_kinship`.

    Example:
        >>> kinship = families_kinship(2, 3, 1)  # two families: a founder couple and their child
        >>> kinship.shape, float(kinship[:3, 3:].max())  # no relatedness between families
        ((6, 6), 0.0)
    """
    return np.kron(np.eye(families), pedigree_kinship(size, children))
