"""Features and targets as structures: one array, a dict of named arrays, or a tuple of them.

A data source may return any of the three for x and for y (and None for y: no targets). The data
layer, the engines and the checks walk them with these few functions, so one array and several
named ones go through the same code. Dicts keep their keys; tuples are positional.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# How a structure is made: its kind names it in DataInfo and in checkpoints.
ARRAY, DICT, TUPLE, NONE = "array", "dict", "tuple", "none"


def kind(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, Mapping):
        return DICT
    if isinstance(value, (tuple, list)):
        return TUPLE
    return ARRAY


def named(value: Any, single: str) -> dict[str, Any]:
    """The structure's leaves by name: a dict's keys, a tuple's positions ("0", "1", ...), or
    `single` for one array; empty for None."""
    k = kind(value)
    if k == DICT:
        return {str(key): item for key, item in value.items()}
    if k == TUPLE:
        return {str(i): item for i, item in enumerate(value)}
    if k == ARRAY:
        return {single: value}
    return {}


def rebuild(like_kind: str, leaves: Mapping[str, Any]) -> Any:
    """The inverse of `named`: leaves by name back into a structure of `like_kind`."""
    if like_kind == DICT:
        return dict(leaves)
    if like_kind == TUPLE:
        return tuple(leaves[str(i)] for i in range(len(leaves)))
    if like_kind == ARRAY:
        (only,) = leaves.values()
        return only
    return None


def map_leaves(fn: Callable[[Any], Any], value: Any) -> Any:
    """`fn` applied to every array of the structure, which keeps its shape (None stays None)."""
    k = kind(value)
    if k == DICT:
        return {key: fn(item) for key, item in value.items()}
    if k == TUPLE:
        return tuple(fn(item) for item in value)
    if k == ARRAY:
        return fn(value)
    return None


def leaves(value: Any) -> list[Any]:
    return list(named(value, "x").values())


def first(value: Any) -> Any:
    """The structure's first array (every array of one batch has the same number of rows)."""
    return leaves(value)[0]
