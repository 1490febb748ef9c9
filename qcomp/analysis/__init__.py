"""Graph analyses for the rotation passes: which ops commute with a rotation of the last dim (`lastdim`),
rotated regions of the graph (`regions`), and the parameter/rotate edits they lead to (`rewrite`)."""
from .lastdim import is_metadata_use, is_transparent, last_dim, norm_fold_sinks
from .regions import Region, choose_rotation, find_region

__all__ = ["Region", "choose_rotation", "find_region", "is_metadata_use", "is_transparent", "last_dim", "norm_fold_sinks"]
