"""qcomp opt FILE.qir --pipeline P [--out OUT.qir] [--print-after-change]: run passes on a QIR file
(e.g. replay a reproducer.qir written by a failing pass; its params come from the sibling safetensors)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("opt", help="run a pass pipeline on a .qir file (replays reproducers)")
    p.add_argument("file", help="a .qir file (a reproducer.qir carries its pipeline and params)")
    p.add_argument("--pipeline", default=None, help="pass pipeline; default: the one recorded in the reproducer")
    p.add_argument("--budget", type=float, default=4.0, help="compile budget visible to passes")
    p.add_argument("--out", default=None, help="write the resulting IR here (default: stdout)")
    p.add_argument("--dump-dir", default=None)
    p.add_argument("--print-after-change", action="store_true")
    p.add_argument("--traceback", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from qcomp.pass_manager import PassContext, PassManager, read_reproducer
    from qcomp.qir import print_graph

    graph, recorded = read_reproducer(args.file)
    pipeline = args.pipeline or recorded
    if not pipeline:
        raise ValueError(f"{args.file} records no pipeline; pass --pipeline")
    pm = PassManager(pipeline, dump_dir=args.dump_dir, print_after_change=sys.stderr if args.print_after_change else None)
    out = pm.run(graph, PassContext(options={"budget": args.budget}))
    text = print_graph(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
