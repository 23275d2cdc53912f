"""Draw the computation graph behind a `Value`: each value (label, data, grad) and the operation that made it.

`draw_graph(v, "graph.svg")` writes an SVG or PNG (chosen by the file suffix). It uses Graphviz when both
the `graphviz` Python package and the `dot` program are installed, and otherwise draws the same picture
with matplotlib alone, so it works everywhere. `to_dot(v)` gives the Graphviz source text, which any
Graphviz viewer can render. Values are boxes, operations are small circles, and data flows left to right,
the opposite direction to the gradients that `backward()` sends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gator.autograd.engine import Value

FORMATS = ("svg", "png", "pdf")


def trace(root: Value) -> tuple[list[Value], list[tuple[Value, Value]]]:
    """The nodes of the graph (parents before children) and its edges (parent, child)."""
    nodes = root.topological_order()
    edges = [(p, n) for n in nodes for p in n.parents]
    return nodes, edges


def _box_text(v: Value, label: str | None = None) -> str:
    label = v.label if label is None else label
    name = f"{label} | " if label else ""
    return f"{name}data {v.data:.4g} | grad {v.grad:.4g}"


def _dot_escape(text: str) -> str:
    """Escape the characters that mean something inside a Graphviz record label."""
    return "".join("\\" + c if c in '\\{}|<>"' else c for c in text)


def to_dot(root: Value) -> str:
    """Graphviz source for the graph: a record box per value, an ellipse per operation."""
    nodes, _ = trace(root)
    lines = ["digraph gator {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for v in nodes:
        vid = f"v{id(v)}"
        lines.append(f'  {vid} [shape=record, label="{{ {_box_text(v, _dot_escape(v.label))} }}"];')
        if v.op:
            lines.append(f'  {vid}_op [shape=ellipse, label="{_dot_escape(v.op)}"];')
            lines.append(f"  {vid}_op -> {vid};")
            lines.extend(f"  v{id(p)} -> {vid}_op;" for p in v.parents)
    lines.append("}")
    return "\n".join(lines) + "\n"


def graphviz_available() -> bool:
    """True when the graphviz package imports and the `dot` program is on PATH."""
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def _draw_graphviz(root: Value, path: Path, fmt: str) -> None:
    import graphviz

    path.write_bytes(graphviz.Source(to_dot(root)).pipe(format=fmt))


def _layout(nodes: list[Value]) -> dict[int, tuple[float, float]]:
    """x: longest path to the root (so every input sits just left of its first use, output at the right);
    y: nodes of one column ordered by the mean row of the nodes they feed (fewer crossing arrows)."""
    steps: dict[int, int] = {id(nodes[-1]): 0}
    children: dict[int, list[Value]] = {}
    for v in reversed(nodes):  # children come before parents in reverse topological order
        for p in v.parents:
            steps[id(p)] = max(steps.get(id(p), 0), steps[id(v)] + 1)
            children.setdefault(id(p), []).append(v)
    by_column: dict[int, list[Value]] = {}
    for v in reversed(nodes):
        by_column.setdefault(steps[id(v)], []).append(v)
    rows: dict[int, float] = {}
    for c in sorted(by_column):
        members = by_column[c]
        if c > 0:
            members.sort(key=lambda v: sum(rows[id(k)] for k in children[id(v)]) / len(children[id(v)]))
        for r, v in enumerate(members):
            rows[id(v)] = r - (len(members) - 1) / 2
    last = max(steps.values())
    return {id(v): (2.0 * (last - steps[id(v)]), -rows[id(v)]) for v in nodes}


def _draw_matplotlib(root: Value, path: Path, fmt: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    nodes, _ = trace(root)
    pos = _layout(nodes)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    width = min(60.0, 2.2 * (max(xs) - min(xs) + 2))
    height = min(60.0, 1.0 * (max(ys) - min(ys) + 2))
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    box = dict(boxstyle="round,pad=0.3", facecolor="#e8f0fe", edgecolor="#3c6bc7")
    circle = dict(boxstyle="circle,pad=0.25", facecolor="#fff4d6", edgecolor="#c78a00")
    arrow = dict(arrowstyle="->", color="#777777", shrinkA=6, shrinkB=6)
    artists = {}
    for v in nodes:
        x, y = pos[id(v)]
        artists[id(v)] = ax.text(x, y, _box_text(v), ha="center", va="center", fontsize=8, bbox=box, zorder=3,
                                 parse_math=False)
    for v in nodes:
        if not v.op:
            continue
        x, y = pos[id(v)]  # the operation sits halfway between columns, in front of its output
        op = ax.text(x - 1.0, y, v.op, ha="center", va="center", fontsize=8, bbox=circle, zorder=3,
                     parse_math=False)
        # arrows join artists: from the right edge of one to the left edge of the next
        ax.annotate("", xy=(0, 0.5), xycoords=artists[id(v)], xytext=(1, 0.5), textcoords=op,
                    arrowprops=arrow)
        for p in v.parents:
            ax.annotate("", xy=(0, 0.5), xycoords=op, xytext=(1, 0.5), textcoords=artists[id(p)],
                        arrowprops=arrow, zorder=1)
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    fig.savefig(path, format=fmt, bbox_inches="tight")


def draw_graph(root: Value, path: str | Path, backend: str = "auto") -> Path:
    """Write the graph of `root` to `path` (.svg, .png or .pdf) and return the path; meant for graphs of
    tens of nodes (an expression, one neuron), not a whole training step.

    backend: "auto" (Graphviz if available, else matplotlib), "graphviz" or "matplotlib".
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"draw_graph writes {', '.join(FORMATS)} files; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend == "auto":
        backend = "graphviz" if graphviz_available() else "matplotlib"
    if backend == "graphviz":
        if not graphviz_available():
            raise ValueError("backend='graphviz' needs `pip install graphviz` and the `dot` program")
        _draw_graphviz(root, path, fmt)
    elif backend == "matplotlib":
        _draw_matplotlib(root, path, fmt)
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'graphviz' or 'matplotlib'")
    return path
