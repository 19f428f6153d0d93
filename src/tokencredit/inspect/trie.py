"""A recorded group's prefix tree as a radix trie (unary chains merged into one edge), laid out for drawing.

Built from the records' per-token `node` ids: token t of a response leads to node `node[t]`, whose parent is
the node of token t−1 (the root for t = 0). A node with one child that no response ends at is merged with that
child, so each trie node is a run of tokens `[start, end)` shared by exactly the same responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokencredit.inspect.records import GroupRecord

ROW = 30  # pixels between two leaves
LEVEL = 160  # pixels between two trie levels
MARGIN = 14


@dataclass
class TrieNode:
    """`parent` (−1: the root), tokens `[start, end)` of the responses through it (`label_response` spells them),
    `count` responses, their mean reward `value`, `delta` = value − the parent's value, and position `x`, `y`."""

    parent: int
    start: int
    end: int
    count: int
    value: float
    delta: float
    label_response: int
    x: float = 0.0
    y: float = 0.0


@dataclass
class Trie:
    nodes: list[TrieNode]
    paths: list[list[int]]  # per response: the trie nodes it passes, root excluded
    width: float
    height: float


def build_trie(group: GroupRecord) -> Trie:
    """The radix trie of `group`'s responses (node 0 is the root: the prompt), with a tidy layout: leaves one
    row apart in order of first appearance, each inner node at the middle of its children, x by level."""
    # raw trie over record node ids: parent, children (in order of first appearance), responses through, rewards
    parent: dict[int, int] = {}
    children: dict[int, list[int]] = {-1: []}
    through: dict[int, list[int]] = {-1: list(range(len(group.responses)))}
    depth: dict[int, int] = {-1: 0}
    for i, r in enumerate(group.responses):
        prev = -1
        for t, n in enumerate(r.node):
            if n not in parent:
                parent[n] = prev
                children[prev].append(n)
                children[n] = []
                through[n] = []
                depth[n] = t + 1
            through[n].append(i)
            prev = n
    rewards = [r.reward for r in group.responses]

    def merged_end(n: int) -> int:
        """The last raw node of the unary chain starting at raw node `n`."""
        while len(children[n]) == 1 and len(through[children[n][0]]) == len(through[n]):
            n = children[n][0]
        return n

    nodes = [TrieNode(-1, 0, 0, len(rewards), _mean(rewards), 0.0, 0)]
    last_of = {0: -1}  # trie node -> its last raw node
    raw_to_trie: dict[int, int] = {}
    stack = [(child, 0) for child in reversed(children[-1])]
    while stack:
        first, up = stack.pop()
        last = merged_end(first)
        members = through[first]
        value = _mean([rewards[i] for i in members])
        index = len(nodes)
        nodes.append(TrieNode(up, depth[first] - 1, depth[last], len(members), value, value - nodes[up].value,
                              members[0]))
        last_of[index] = last
        n = first
        while True:
            raw_to_trie[n] = index
            if n == last:
                break
            n = children[n][0]
        stack.extend((child, index) for child in reversed(children[last]))
    paths = [list(dict.fromkeys(raw_to_trie[n] for n in r.node)) for r in group.responses]
    width, height = _layout(nodes)
    return Trie(nodes, paths, width, height)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _layout(nodes: list[TrieNode]) -> tuple[float, float]:
    kids: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes[1:], 1):
        kids[n.parent].append(i)
    level = [0] * len(nodes)
    for i, n in enumerate(nodes[1:], 1):  # parents come before children
        level[i] = level[n.parent] + 1
    row = 0
    order: list[int] = []  # post-order: children before parents
    stack = [(0, False)]
    while stack:
        i, done = stack.pop()
        if done:
            order.append(i)
            continue
        stack.append((i, True))
        stack.extend((k, False) for k in reversed(kids[i]))
    for i in order:
        if kids[i]:
            nodes[i].y = (nodes[kids[i][0]].y + nodes[kids[i][-1]].y) / 2
        else:
            nodes[i].y = MARGIN + row * ROW
            row += 1
        nodes[i].x = MARGIN + level[i] * LEVEL
    return MARGIN * 2 + max(level) * LEVEL + LEVEL, MARGIN * 2 + max(row - 1, 0) * ROW
