//! A byte-wise radix trie from path prefixes to route indices, used by the
//! router for each host level. It answers one question: which inserted prefix
//! is the longest plain-string prefix of a path. Host matching and precedence
//! between host levels belong to the parent module.

/// The longest-prefix lookup table of one host level.
///
/// Nodes live in one arena (`nodes[0]` is the root, labelled with the empty
/// string) and refer to their children by index, so the table is one
/// allocation per level plus the labels. Edges are compressed: each node holds
/// the bytes that lead to it from its parent, so a lookup visits one node per
/// branching point rather than one per byte.
#[derive(Debug, Clone)]
pub(super) struct PrefixTrie {
    nodes: Vec<Node>,
}

/// One node of the trie: its edge label, the route that ends here, and its
/// children keyed by the first byte of their label (sorted, for binary search).
#[derive(Debug, Clone, Default)]
struct Node {
    label: Box<[u8]>,
    route: Option<usize>,
    first_bytes: Vec<u8>,
    children: Vec<u32>,
}

// === impl PrefixTrie ===

impl Default for PrefixTrie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl PrefixTrie {
    /// Adds `prefix -> route`; an existing entry for the same prefix is kept
    /// (the first of two duplicates wins, as config order would suggest).
    pub(super) fn insert(&mut self, prefix: &[u8], route: usize) {
        let mut node = 0usize;
        let mut rest = prefix;
        loop {
            let Some(&first) = rest.first() else {
                let slot = &mut self.nodes[node].route;
                if slot.is_none() {
                    *slot = Some(route);
                }
                return;
            };
            let (pos, child) = match self.nodes[node].first_bytes.binary_search(&first) {
                Ok(pos) => (pos, self.nodes[node].children[pos] as usize),
                Err(pos) => {
                    let leaf = self.push(Node {
                        label: rest.into(),
                        route: Some(route),
                        ..Node::default()
                    });
                    let parent = &mut self.nodes[node];
                    parent.first_bytes.insert(pos, first);
                    parent.children.insert(pos, leaf);
                    return;
                }
            };
            let common = common_prefix_len(&self.nodes[child].label, rest);
            node = if common < self.nodes[child].label.len() {
                self.split(node, pos, child, common)
            } else {
                child
            };
            rest = &rest[common..];
        }
    }

    /// The route of the longest inserted prefix of `path`, if any.
    pub(super) fn lookup(&self, path: &[u8]) -> Option<usize> {
        let mut node = &self.nodes[0];
        let mut best = node.route;
        let mut rest = path;
        while let Some(&first) = rest.first() {
            let Ok(pos) = node.first_bytes.binary_search(&first) else {
                break;
            };
            let child = &self.nodes[node.children[pos] as usize];
            let Some(after) = rest.strip_prefix(&*child.label) else {
                break;
            };
            if child.route.is_some() {
                best = child.route;
            }
            node = child;
            rest = after;
        }
        best
    }

    /// Splits the edge `parent -> child` (the parent's child number `pos`)
    /// after `at` bytes of the child's label, `0 < at < label.len()`: a new
    /// node takes the first `at` bytes and adopts `child`. Returns the new node.
    fn split(&mut self, parent: usize, pos: usize, child: usize, at: usize) -> usize {
        let label = std::mem::take(&mut self.nodes[child].label);
        let (head, tail) = label.split_at(at);
        let tail_first = tail[0];
        self.nodes[child].label = tail.into();
        let mid = self.push(Node {
            label: head.into(),
            route: None,
            first_bytes: vec![tail_first],
            children: vec![child as u32],
        });
        self.nodes[parent].children[pos] = mid;
        mid as usize
    }

    fn push(&mut self, node: Node) -> u32 {
        let index = self.nodes.len();
        self.nodes.push(node);
        // Routes come from a config file; 4 billion trie nodes is not a
        // configuration anyone can load.
        u32::try_from(index).expect("router trie node count fits in u32")
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
