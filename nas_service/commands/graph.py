"""``nas-service graph validate | summary | sample``: nas-graph/1 documents on this machine.

``validate`` prints each problem as ``FILE: node 'x', field 'y': message`` and exits 1 if any
file is invalid; ``sample`` writes a search space's architecture of a seed as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas_service.commands.arguments import (
    AddParser,
    display_name,
    load_graph,
    positive_int,
    sample_shape,
)
from nas_service.commands.errors import CommandError
from nas_service.commands.output import graph_counts, print_stderr


def add_graph(add_parser: AddParser) -> None:
    p = add_parser("graph", help="validate, summarise and sample nas-graph/1 documents",
                   description="Work with nas-graph/1 architecture documents.")
    sub = p.add_subparsers(title="graph commands", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="check graph files; exit 1 if any is invalid",
                       description="Validate nas-graph/1 files. Each problem is printed as "
                                   "FILE: node 'x', field 'y': message.")
    v.add_argument("files", nargs="+", metavar="FILE", help="a JSON file, or - for stdin")
    v.set_defaults(handler=_graph_validate)

    s = sub.add_parser("summary", help="print a table of nodes, shapes, parameters and MACs")
    s.add_argument("file", metavar="FILE", help="a JSON file, or - for stdin")
    s.set_defaults(handler=_graph_summary)

    g = sub.add_parser("sample", help="sample an architecture from a search space",
                       description="Sample one architecture, deterministically from its seed, "
                                   "and print it as nas-graph/1 JSON.")
    g.add_argument("--space", required=True, metavar="{cells,families,macro}",
                   help="search space name, or a view of some families: families[resnet,vgg] "
                        "or families[-densenet,-vit]")
    g.add_argument("--seed", required=True, type=int, help="the same seed gives the same graph")
    g.add_argument("--input-shape", type=sample_shape, default=(1, 28, 28), metavar="C,H,W",
                   help="per-sample input shape (default: 1,28,28)")
    g.add_argument("--num-classes", type=positive_int, default=10,
                   help="number of classes (default: 10)")
    g.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    g.set_defaults(handler=_graph_sample)


def _graph_validate(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    failed = 0
    for path in args.files:
        name = display_name(path)
        try:
            graph = load_graph(path)
        except CommandError as e:
            print_stderr(str(e))
            failed += 1
            continue
        except GraphValidationError as e:
            for problem in e.problems:
                print(f"{name}: {problem}")
            failed += 1
            continue
        print(f"{name}: valid ({graph_counts(graph)})")
    if failed and len(args.files) > 1:
        print_stderr(f"{failed} of {len(args.files)} files invalid")
    return 1 if failed else 0


def _graph_summary(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    try:
        graph = load_graph(args.file)
    except GraphValidationError as e:
        for problem in e.problems:
            print_stderr(f"{display_name(args.file)}: {problem}")
        return 1
    print(graph.summary())
    return 0


def _graph_sample(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    try:
        from nas_service.spaces import get_space
    except ImportError as e:
        raise CommandError(f"search spaces are not available here ({e})") from None
    try:
        space = get_space(args.space)
    except (LookupError, ValueError) as e:
        raise CommandError(str(e.args[0]) if e.args else f"unknown space {args.space!r}") from None
    try:
        graph = space.sample(args.seed, input_shape=args.input_shape,
                             num_classes=args.num_classes)
    except GraphValidationError as e:
        for problem in e.problems:
            print_stderr(f"{args.space}/seed {args.seed}: {problem}")
        return 1
    except ValueError as e:  # e.g. an input shape the space cannot handle
        raise CommandError(f"{args.space}: {e}") from None
    text = graph.to_json(indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{args.output}: cannot write: {e.strerror or e}") from None
    print_stderr(f"wrote {args.output}: {graph_counts(graph)}")
    return 0
