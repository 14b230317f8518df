"""Small ONNX graph questions the toolchain asks: who produces and consumes a tensor, which nodes
come after one, which nodes every path to the output passes through."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that only move or regroup values: a quantization scale shared across them changes nothing.
LAYOUT_OPS = frozenset({"Reshape", "Concat", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


class Graph:
    """Index of an ``onnx.GraphProto``'s nodes (in their file order, which ONNX requires to be
    topological)."""

    def __init__(self, graph: Any) -> None:
        self.nodes: list[Any] = list(graph.node)
        self.initializers = {t.name for t in graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for out in node.output:
                self.producer[out] = i
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.outputs = [o.name for o in graph.output]

    def successors(self, i: int) -> list[int]:
        return sorted({c for out in self.nodes[i].output for c in self.consumers.get(out, [])})

    def predecessors(self, i: int) -> list[int]:
        return sorted({self.producer[n] for n in self.nodes[i].input if n in self.producer})

    def descendants(self, start: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        todo = deque(start)
        while todo:
            for nxt in self.successors(todo.popleft()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def sources(self) -> list[int]:
        """Nodes fed by no other node (by graph inputs or initializers only)."""
        return [i for i in range(len(self.nodes)) if not self.predecessors(i)]

    def dominators_of(self, target: int) -> list[int]:
        """Nodes every path from the graph's inputs to ``target`` passes through (``target``
        included), nearest the input first."""
        starts = self.sources()
        result = []
        for d in sorted(self.ancestors(target) | {target}):
            reached = self._reach(starts, blocked=d)
            if target not in reached:
                result.append(d)
        return result

    def ancestors(self, target: int) -> set[int]:
        seen: set[int] = set()
        todo = deque([target])
        while todo:
            for prev in self.predecessors(todo.popleft()):
                if prev not in seen:
                    seen.add(prev)
                    todo.append(prev)
        return seen

    def _reach(self, starts: Iterable[int], blocked: int) -> set[int]:
        seen = {s for s in starts if s != blocked}
        todo = deque(seen)
        while todo:
            for nxt in self.successors(todo.popleft()):
                if nxt != blocked and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def has_weights(self, i: int) -> bool:
        node = self.nodes[i]
        return node.op_type in WEIGHTED_OPS and any(n in self.initializers for n in node.input)
