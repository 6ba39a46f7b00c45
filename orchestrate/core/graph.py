"""The DAG of a selection as text (Graphviz DOT, mermaid) or as an SVG laid
out here (pure).

One node per agent, labelled `pipeline:agent` and coloured by its state; one
node per external signal of `wait_for`, shown present or absent; `after`
edges solid, `after_any` dashed, `wait_for` dotted. The SVG layout is for
machines without Graphviz: layers from the longest upstream path, each
pipeline its own block, wide layers wrapped into rows so that 50 agents stay
readable.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .spec import Agent

# state -> (fill, stroke)
STATE_COLORS = {
    "pending": ("#f5f5f5", "#9e9e9e"),
    "waiting": ("#fff8e1", "#f9a825"),
    "queued": ("#ffe0b2", "#ef6c00"),
    "running": ("#e3f2fd", "#1565c0"),
    "done": ("#e8f5e9", "#2e7d32"),
    "failed": ("#ffebee", "#c62828"),
    "cancelled": ("#f3e5f5", "#6a1b9a"),
    "removed": ("#eeeeee", "#bdbdbd"),
}
SIGNAL_COLORS = {True: ("#e8f5e9", "#2e7d32"), False: ("#ffffff", "#9e9e9e")}
EDGE_STYLES = {"after": "solid", "after_any": "dashed", "wait_for": "dotted"}


def node_state(state: str) -> str:
    """A decision's state as the graph shows it."""
    return {"launching": "running"}.get(state, state)


@dataclass(frozen=True)
class Node:
    id: str              # `pipeline:agent`, or `signal:NAME`
    label: str
    state: str           # an agent's state; "present"/"absent" for a signal
    pipeline: str | None = None   # None for a signal

    @property
    def is_signal(self) -> bool:
        return self.pipeline is None

    @property
    def colors(self) -> tuple[str, str]:
        if self.is_signal:
            return SIGNAL_COLORS[self.state == "present"]
        return STATE_COLORS.get(self.state, STATE_COLORS["pending"])


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str            # after, after_any, wait_for


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def pipelines(self) -> list[str]:
        seen: dict[str, None] = {}
        for node in self.nodes:
            if node.pipeline is not None:
                seen.setdefault(node.pipeline)
        return list(seen)


# a fan-out drawn as one node takes the state that most needs a look
STATE_RANK = ("failed", "cancelled", "running", "queued", "waiting", "pending", "done",
              "removed")


def collapse_fanouts(graph: Graph, agents: list[Agent]) -> Graph:
    """Each fan-out's instances (and its row) as one node `pipeline:agent`
    labelled with its count; edges to or from an instance go to that node."""
    group = {a.task: f"{a.pipeline}:{a.fanout}" for a in agents if a.fanout}
    if not group:
        return graph
    members: dict[str, list[Node]] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        target = group.get(node.id)
        if target is None:
            nodes.append(node)
            continue
        if target not in members:
            members[target] = []
            nodes.append(node)   # placeholder, replaced below, keeps the order
        members[target].append(node)
    counts = {g: sum(1 for a in agents if a.fanout and f"{a.pipeline}:{a.fanout}" == g
                     and not a.gate) for g in members}
    merged = []
    for node in nodes:
        target = group.get(node.id)
        if target is None:
            merged.append(node)
            continue
        state = min((m.state for m in members[target]),
                    key=lambda s: STATE_RANK.index(s) if s in STATE_RANK else len(STATE_RANK))
        label = f"{target} ×{counts[target]}"
        merged.append(Node(target, label, state, node.pipeline))
    edges: dict[tuple[str, str, str], Edge] = {}
    for edge in graph.edges:
        source, target = group.get(edge.source, edge.source), group.get(edge.target, edge.target)
        if source != target:
            edges.setdefault((source, target, edge.kind), Edge(source, target, edge.kind))
    return Graph(tuple(merged), tuple(edges.values()))


def build(agents: list[Agent], states: dict[str, str], signals_present: set[str],
          expand: bool = True) -> Graph:
    """Agents (upstream first) and their states by task -> the graph;
    `expand=False` draws each fan-out as one node with its count."""
    graph = _build(agents, states, signals_present)
    return graph if expand else collapse_fanouts(graph, agents)


def _build(agents: list[Agent], states: dict[str, str], signals_present: set[str]) -> Graph:
    nodes = [Node(a.task, a.task, node_state(states.get(a.task, "pending")), a.pipeline)
             for a in agents]
    signals: dict[str, None] = {}
    edges = []
    for agent in agents:
        for name in agent.wait_for:
            signals.setdefault(name)
            edges.append(Edge(f"signal:{name}", agent.task, "wait_for"))
        for name in agent.after + agent.awaits:
            edges.append(Edge(f"{agent.pipeline}:{name}", agent.task, "after"))
        for name in agent.after_any:
            if name not in agent.after:
                edges.append(Edge(f"{agent.pipeline}:{name}", agent.task, "after_any"))
    nodes += [Node(f"signal:{name}", f"signal {name}",
                   "present" if name in signals_present else "absent") for name in signals]
    known = {n.id for n in nodes}   # a selection holds every upstream; keep it drawable anyway
    return Graph(tuple(nodes), tuple(e for e in edges if e.source in known))


# -- DOT -------------------------------------------------------------------
def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_node(node: Node) -> str:
    fill, stroke = node.colors
    shape = "ellipse" if node.is_signal else "box"
    style = "filled" if node.is_signal else "rounded,filled"
    if node.is_signal and node.state == "absent":
        style += ",dashed"
    tooltip = f"{node.label}: {node.state}"
    return (f"{_dot_id(node.id)} [label={_dot_id(node.label)}, shape={shape}, "
            f"style={_dot_id(style)}, fillcolor={_dot_id(fill)}, color={_dot_id(stroke)}, "
            f"tooltip={_dot_id(tooltip)}];")


def _dot_legend() -> list[str]:
    cells = "".join(f'<tr><td bgcolor="{fill}" color="{stroke}">{state}</td></tr>'
                    for state, (fill, stroke) in STATE_COLORS.items())
    cells += ('<tr><td bgcolor="#e8f5e9" color="#2e7d32">signal present</td></tr>'
              '<tr><td bgcolor="#ffffff" color="#9e9e9e">signal absent</td></tr>'
              '<tr><td>── after<br/>- - after_any<br/>··· wait_for</td></tr>')
    return ['  subgraph cluster_legend {', '    label="legend"; fontsize=10; color="#bdbdbd";',
            '    legend [shape=plaintext, fontsize=10, label=<<table border="0" '
            f'cellborder="1" cellspacing="2" cellpadding="3">{cells}</table>>];', '  }']


def to_dot(graph: Graph, legend: bool = True) -> str:
    """Graphviz DOT: one cluster per pipeline (side by side), signals outside."""
    lines = ["digraph orchestrate {", "  rankdir=TB;", '  fontname="Helvetica";',
             '  node [fontname="Helvetica", fontsize=11];', '  edge [color="#616161"];']
    for index, pipeline in enumerate(graph.pipelines()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f'    label={_dot_id(pipeline)}; style="rounded"; color="#bdbdbd";')
        lines += [f"    {_dot_node(n)}" for n in graph.nodes if n.pipeline == pipeline]
        lines.append("  }")
    lines += [f"  {_dot_node(n)}" for n in graph.nodes if n.is_signal]
    for edge in graph.edges:
        style = EDGE_STYLES[edge.kind]
        lines.append(f"  {_dot_id(edge.source)} -> {_dot_id(edge.target)}"
                     + (f" [style={style}];" if style != "solid" else ";"))
    if legend:
        lines += _dot_legend()
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- mermaid ---------------------------------------------------------------
def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(graph: Graph) -> str:
    """A mermaid flowchart: subgraph per pipeline, a class per state."""
    ids = {node.id: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = ["flowchart TB"]
    for index, pipeline in enumerate(graph.pipelines()):
        lines.append(f"  subgraph p{index}[{_mermaid_label(pipeline)}]")
        lines += [f"    {ids[n.id]}[{_mermaid_label(n.label)}]:::{n.state}"
                  for n in graph.nodes if n.pipeline == pipeline]
        lines.append("  end")
    lines += [f"  {ids[n.id]}([{_mermaid_label(n.label)}]):::signal_{n.state}"
              for n in graph.nodes if n.is_signal]
    for edge in graph.edges:
        arrow = "-->" if edge.kind == "after" else "-.->"
        lines.append(f"  {ids[edge.source]} {arrow} {ids[edge.target]}")
    for state, (fill, stroke) in STATE_COLORS.items():
        lines.append(f"  classDef {state} fill:{fill},stroke:{stroke}")
    for present, (fill, stroke) in SIGNAL_COLORS.items():
        name = "present" if present else "absent"
        dash = "" if present else ",stroke-dasharray:4 3"
        lines.append(f"  classDef signal_{name} fill:{fill},stroke:{stroke}{dash}")
    return "\n".join(lines) + "\n"


# -- our own layered SVG ---------------------------------------------------
ROW_MAX = 6                  # nodes per row: a wider layer wraps
CHAR_W, NODE_H, GAP_X, GAP_Y, PAD = 7.2, 26, 14, 34, 14
PAGE_W = 1500                # blocks flow left to right, wrapping at this width


def layers(graph: Graph) -> dict[str, int]:
    """Node -> its longest upstream path (signals are layer 0)."""
    parents: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for edge in graph.edges:
        parents[edge.target].append(edge.source)
    depth: dict[str, int] = {}
    for node in graph.nodes:   # agents come upstream first; signals have no parents
        if node.is_signal:
            depth[node.id] = 0
    for node in graph.nodes:
        if not node.is_signal:
            depth[node.id] = max((depth.get(p, 0) + 1 for p in parents[node.id]), default=0)
    return depth


@dataclass(frozen=True)
class Box:
    node: Node
    x: float
    y: float
    w: float


def _block_of(graph: Graph) -> dict[str, str]:
    """Each node's block: its pipeline; a signal joins its first waiter's block."""
    block = {n.id: n.pipeline for n in graph.nodes if n.pipeline is not None}
    for edge in graph.edges:
        if edge.source.startswith("signal:") and edge.source not in block:
            block[edge.source] = block[edge.target]
    return block


def _order_layer(members: list[Node], parents: dict[str, list[str]],
                 placed: dict[str, float]) -> list[Node]:
    """Barycenter ordering: each node under the mean position of its parents."""
    def key(item: tuple[int, Node]) -> tuple[float, int]:
        index, node = item
        xs = [placed[p] for p in parents[node.id] if p in placed]
        return (sum(xs) / len(xs) if xs else index, index)
    return [node for _, node in sorted(enumerate(members), key=key)]


def _layout_block(nodes: list[Node], depth: dict[str, int], parents: dict[str, list[str]],
                  left: float, top: float) -> tuple[list[Box], float, float]:
    """Boxes of one pipeline's nodes from (left, top): (boxes, width, height)."""
    width = max(len(n.label) for n in nodes) * CHAR_W + 2 * PAD
    by_layer: dict[int, list[Node]] = {}
    for node in nodes:
        by_layer.setdefault(depth[node.id], []).append(node)
    boxes: list[Box] = []
    placed: dict[str, float] = {}
    y = top + 30
    columns = 1
    for layer in sorted(by_layer):
        ordered = _order_layer(by_layer[layer], parents, placed)
        for start in range(0, len(ordered), ROW_MAX):
            row = ordered[start:start + ROW_MAX]
            columns = max(columns, len(row))
            for i, node in enumerate(row):
                box = Box(node, left + PAD + i * (width + GAP_X), y, width)
                boxes.append(box)
                placed[node.id] = box.x
            y += NODE_H + GAP_Y
    block_w = columns * (width + GAP_X) - GAP_X + 2 * PAD
    return boxes, block_w, y - GAP_Y + PAD - top


def _edge_path(source: Box, target: Box) -> str:
    x1, y1 = source.x + source.w / 2, source.y + NODE_H
    x2, y2 = target.x + target.w / 2, target.y
    bend = max(20.0, abs(y2 - y1) / 2)
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}"


def to_svg(graph: Graph) -> str:
    """An SVG drawing of the graph, for when Graphviz is not installed."""
    if not graph.nodes:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    depth = layers(graph)
    parents: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for edge in graph.edges:
        parents[edge.target].append(edge.source)
    block = _block_of(graph)
    boxes: dict[str, Box] = {}
    frames: list[str] = []
    left = top = 0.0
    row_h = total_w = 0.0
    for pipeline in graph.pipelines():
        members = [n for n in graph.nodes if block.get(n.id) == pipeline]
        placed, w, h = _layout_block(members, depth, parents, 0, 0)
        if left and left + w > PAGE_W:
            left, top, row_h = 0.0, top + row_h + 20, 0.0
        for box in placed:
            boxes[box.node.id] = Box(box.node, box.x + left, box.y + top, box.w)
        frames.append(f'<g class="pipeline"><rect x="{left + 1}" y="{top + 1}" width="{w - 2}" '
                      f'height="{h - 2}" rx="8" fill="none" stroke="#bdbdbd"/>'
                      f'<text x="{left + PAD}" y="{top + 20}" class="pl">{escape(pipeline)}'
                      '</text></g>')
        total_w = max(total_w, left + w)
        left += w + 20
        row_h = max(row_h, h)
    return _svg_text(graph, boxes, frames, total_w, top + row_h)


def _svg_text(graph: Graph, boxes: dict[str, Box], frames: list[str],
              width: float, height: float) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             'font-family="DejaVu Sans Mono, monospace" font-size="12">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
             'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
             '<path d="M0,0 L10,5 L0,10 z" fill="#616161"/></marker></defs>',
             '<style>.pl{font-weight:bold;fill:#424242}</style>', *frames]
    dashes = {"after": "", "after_any": ' stroke-dasharray="6 4"',
              "wait_for": ' stroke-dasharray="2 3"'}
    for edge in graph.edges:
        parts.append(f'<path d="{_edge_path(boxes[edge.source], boxes[edge.target])}" '
                     f'fill="none" stroke="#9e9e9e"{dashes[edge.kind]} marker-end="url(#arrow)"/>')
    for box in boxes.values():
        node = box.node
        fill, stroke = node.colors
        dash = ' stroke-dasharray="4 3"' if node.is_signal and node.state == "absent" else ""
        radius = NODE_H / 2 if node.is_signal else 5
        parts.append(f'<g class="node" data-node="{escape(node.id)}">'
                     f'<title>{escape(node.label)}: {escape(node.state)}</title>'
                     f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{NODE_H}" '
                     f'rx="{radius}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
                     f'<text x="{box.x + box.w / 2:.1f}" y="{box.y + NODE_H / 2 + 4:.1f}" '
                     f'text-anchor="middle">{escape(node.label)}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)
