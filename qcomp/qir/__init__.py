"""QIR: the quantization IR (graph, text form, parser, verifier)."""
from .graph import ALL_OPS, Graph, Node, Ref
from .parser import QIRParseError, parse_graph
from .printer import format_value, print_graph
from .types import ANY, NONE, SYM, OtherType, TensorType

__all__ = [
    "ALL_OPS", "ANY", "NONE", "SYM", "Graph", "Node", "OtherType", "QIRParseError", "Ref", "TensorType",
    "format_value", "parse_graph", "print_graph",
]
