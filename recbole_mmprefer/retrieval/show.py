"""A look at one pair's retrieval paths (paper section 3.3, Fig. 1): `mmprefer paths --show USER ITEM`.

Prints each path with its nodes' titles and profiles (from the profiles
stage's folder when it ran, else the data set's ``.user``/``.item``), and can
draw the paths with a few neighbours of their nodes as a standalone SVG, or
an HTML page holding the SVG and the text. The drawing is laid out by
networkx's seeded spring layout, so the same pair gives the same picture.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import List, Optional, Tuple

import networkx as nx
import numpy as np

from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.inputs import load_graph, load_node_vectors
from recbole_mmprefer.retrieval.paths import PathResult, find_paths
from recbole_mmprefer.retrieval.settings import RetrievalSettings

PATH_COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#7f7f7f"]
NEIGHBOURS_DRAWN = 4  # context neighbours drawn per path node
TEXT_LIMIT = 160  # characters of a profile shown per node


def shown_profile(text: NodeText, kind: str, token: str) -> str:
    """A node's profile, cut to TEXT_LIMIT characters."""
    profile = text.profile(kind, token)
    return profile if len(profile) <= TEXT_LIMIT else profile[:TEXT_LIMIT - 3].rstrip() + "..."


def pair_paths(config, user: str, item: str) -> Tuple[InteractionGraph, PathResult]:
    settings = RetrievalSettings.from_config(config)
    graph = load_graph(config)
    user_vectors, item_vectors, _ = load_node_vectors(config, graph) if settings.needs_vectors else (None, None, {})
    return graph, find_paths(graph, str(user), str(item), user_vectors, item_vectors, **settings.search())


def describe(result: PathResult, text: NodeText) -> str:
    """The paths as lines of "<node> -> buys -> <node> -> bought by -> ...", each node with its profile."""
    header = (f"{text.label('user', result.user)} -> {text.label('item', result.item)}: {result.status}, "
              f"{len(result.paths)} path(s), pruned subgraph {result.subgraph_nodes} nodes / "
              f"{result.subgraph_edges} edges")
    lines = [header]
    for number, path in enumerate(result.paths, start=1):
        lines.append(f"path {number} (cost {path.cost:.3f}):")
        for step, (kind, token) in enumerate(zip(path.types, path.tokens)):
            relation = "" if step == 0 else ("-> buys -> " if kind == "item" else "-> bought by -> ")
            profile = shown_profile(text, kind, token)
            lines.append(f"  {relation}{text.label(kind, token)}" + (f": {profile}" if profile else ""))
    return "\n".join(lines)


def drawing_graph(graph: InteractionGraph, result: PathResult) -> Tuple[nx.Graph, List[List[int]]]:
    """Path nodes and edges plus up to NEIGHBOURS_DRAWN neighbours per path node (the lowest ids)."""
    drawn = nx.Graph()
    paths = [list(path.nodes) for path in result.paths]
    endpoints = [graph.user_node(result.user), graph.item_node(result.item)]
    drawn.add_nodes_from(endpoints)
    for nodes in paths:
        nx.add_path(drawn, nodes)
    for node in list(drawn.nodes):
        for neighbour in graph.neighbours(node)[:NEIGHBOURS_DRAWN]:
            if {int(node), int(neighbour)} != set(endpoints):
                drawn.add_edge(int(node), int(neighbour))
    return drawn, paths


LEGEND_ROW = 18  # pixels per legend row
LEGEND_ENTRY = 80  # pixels per path entry in a legend row


def legend_height(paths: int, size: int) -> int:
    """The first row shows the node kinds, the next ones the path colours."""
    per_row = max(size // LEGEND_ENTRY, 1)
    return LEGEND_ROW * (1 + -(-paths // per_row)) + 10


def legend_svg(paths: int, top: float, size: int) -> str:
    """The key under the drawing: the node shapes, the pair's outline and one colour per path."""
    y, per_row = top + 16, max(size // LEGEND_ENTRY, 1)
    parts = [f'<g class="legend" font-size="11"><rect x="0" y="{top:.0f}" width="{size}" '
             f'height="{legend_height(paths, size)}" fill="#fafafa" stroke="#e3e3e3"/>',
             f'<circle cx="16" cy="{y:.0f}" r="6" fill="#d6e6f5" stroke="#555555"/>'
             f'<text x="27" y="{y + 4:.0f}">user</text>',
             f'<rect x="66" y="{y - 6:.0f}" width="12" height="12" fill="#fde0c5" stroke="#555555"/>'
             f'<text x="84" y="{y + 4:.0f}">item</text>',
             f'<circle cx="130" cy="{y:.0f}" r="6" fill="#ffffff" stroke="#000000" stroke-width="2.5"/>'
             f'<text x="141" y="{y + 4:.0f}">the pair (thick outline)</text>',
             f'<line x1="290" y1="{y:.0f}" x2="310" y2="{y:.0f}" stroke="#cccccc"/>'
             f'<text x="315" y="{y + 4:.0f}">other edge</text>']
    for number in range(paths):
        x = 16 + LEGEND_ENTRY * (number % per_row)
        row = y + LEGEND_ROW * (1 + number // per_row)
        parts.append(f'<line x1="{x}" y1="{row:.0f}" x2="{x + 20}" y2="{row:.0f}" '
                     f'stroke="{PATH_COLOURS[number % len(PATH_COLOURS)]}" stroke-width="3"/>'
                     f'<text x="{x + 25}" y="{row + 4:.0f}">path {number + 1}</text>')
    parts.append("</g>")
    return "".join(parts)


def svg(graph: InteractionGraph, result: PathResult, text: NodeText, size: int = 640) -> str:
    """A standalone SVG: users as circles, items as squares, path edges coloured, the pair's ends outlined, and
    a legend under it."""
    drawn, paths = drawing_graph(graph, result)
    layout = nx.spring_layout(drawn, seed=0)
    coordinates = np.array([layout[node] for node in drawn.nodes]) if layout else np.zeros((1, 2))
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    position = {node: (40 + (size - 80) * (layout[node] - low) / span) for node in drawn.nodes}
    height = size + legend_height(len(paths), size)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{height}" '
             f'viewBox="0 0 {size} {height}" font-family="sans-serif" font-size="10">',
             f"<title>{html.escape(text.label('user', result.user))} to "
             f"{html.escape(text.label('item', result.item))}</title>"]
    path_edges = {}
    for number, nodes in enumerate(paths):
        for a, b in zip(nodes, nodes[1:]):
            path_edges.setdefault(frozenset((a, b)), number)
    for a, b in drawn.edges:
        number = path_edges.get(frozenset((a, b)))
        colour, width = (PATH_COLOURS[number % len(PATH_COLOURS)], 3) if number is not None else ("#cccccc", 1)
        (x1, y1), (x2, y2) = position[a], position[b]
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     f'stroke-width="{width}"/>')
    endpoints = {graph.user_node(result.user), graph.item_node(result.item)}
    on_path = {node for nodes in paths for node in nodes}
    for node in drawn.nodes:
        parts.append(_node_svg(graph, node, position[node], text, node in endpoints, node in on_path))
    parts.append(legend_svg(len(paths), size, size))
    parts.append("</svg>")
    return "\n".join(parts)


def _node_svg(graph: InteractionGraph, node: int, at, text: NodeText, endpoint: bool, on_path: bool) -> str:
    kind, token = graph.node_type(node), graph.node_token(node)
    x, y = at
    fill = "#ffffff" if not on_path else ("#fde0c5" if kind == "item" else "#d6e6f5")
    stroke = 'stroke="#000000" stroke-width="2.5"' if endpoint else 'stroke="#555555" stroke-width="1"'
    tooltip = html.escape(text.label(kind, token) + (f": {shown_profile(text, kind, token)}" if on_path else ""))
    shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{fill}" {stroke}/>' if kind == "user" else
             f'<rect x="{x - 7:.1f}" y="{y - 7:.1f}" width="14" height="14" fill="{fill}" {stroke}/>')
    label = (f'<text x="{x + 9:.1f}" y="{y - 9:.1f}">{html.escape(token)}</text>' if on_path else "")
    return f"<g><title>{tooltip}</title>{shape}{label}</g>"


def write_drawing(path: Path, graph: InteractionGraph, result: PathResult, text: NodeText) -> Path:
    """``.svg``: the drawing; ``.html``: the drawing and the described paths on one page."""
    path = Path(path)
    if path.suffix not in (".svg", ".html"):
        raise InputError(f"--draw {path}: the drawing is written as .svg or .html")
    picture = svg(graph, result, text)
    if path.suffix == ".html":
        picture = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Paths {html.escape(result.user)} to "
                   f"{html.escape(result.item)}</title></head><body>{picture}"
                   f"<pre>{html.escape(describe(result, text))}</pre></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(picture, encoding="utf-8")
    return path


def show_pair(config, user: str, item: str, draw: Optional[Path] = None) -> str:
    """The described paths of one pair (and the drawing written to ``draw``)."""
    graph, result = pair_paths(config, user, item)
    text = NodeText.from_config(config)
    if draw is not None:
        write_drawing(draw, graph, result, text)
    return describe(result, text)
