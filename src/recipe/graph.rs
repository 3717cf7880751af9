//! The build graph: sources and steps as nodes, references as edges; target
//! selection and a deterministic topological plan.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::recipe::{suggest, Recipe};
use crate::syntax::diag::{Diag, RecipeError};

/// How much of a sweep a drawing of the graph shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every instance of a `matrix:` step as its own node (`yibuild graph`).
    Instances,
    /// One node per `matrix:` step (the model card's lineage).
    Sweeps,
}

/// Checks that every reference names a source or step and that steps form no
/// cycle; a cycle is reported as `a -> b -> a` at the reference that closes it.
pub fn check_references(recipe: &Recipe, diag: &Diag) -> Result<(), RecipeError> {
    let names: Vec<&str> = recipe
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .chain(recipe.steps.iter().map(|s| s.name.as_str()))
        .collect();
    for step in &recipe.steps {
        for input in step.step.inputs() {
            if !names.contains(&input.name.as_str()) {
                let err = diag.error(
                    input.span,
                    format!(
                        "step `{}` refers to `{}`, which is neither a source nor a step",
                        step.name, input.name
                    ),
                );
                return Err(suggest(err, &input.name, names.iter().copied()));
            }
            if input.name == step.name {
                return Err(diag.error(
                    input.span,
                    format!("step `{}` depends on itself", step.name),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(recipe) {
        let closing = &cycle[cycle.len() - 2];
        let target = &cycle[cycle.len() - 1];
        let span = recipe
            .step(closing)
            .and_then(|s| s.step.inputs().into_iter().find(|i| &i.name == target))
            .map(|i| i.span)
            .unwrap_or_default();
        return Err(diag.error(span, format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    Ok(())
}

/// A cycle among steps as a path whose first and last names are equal.
fn find_cycle(recipe: &Recipe) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, Vec<String>> = recipe
        .steps
        .iter()
        .map(|s| {
            let inputs = s
                .step
                .inputs()
                .into_iter()
                .map(|i| i.name)
                .filter(|n| recipe.step(n).is_some())
                .collect();
            (s.name.as_str(), inputs)
        })
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut path: Vec<String> = Vec::new();
    fn visit<'a>(
        n: &'a str,
        deps: &'a BTreeMap<&str, Vec<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n.to_owned());
        for d in &deps[n] {
            if let Some(c) = visit(d, deps, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    for s in &recipe.steps {
        if let Some(c) = visit(&s.name, &deps, &mut state, &mut path) {
            return Some(c);
        }
    }
    None
}

/// The DAG of one recipe.
#[derive(Debug)]
pub struct BuildGraph {
    graph: DiGraph<String, ()>,
    index: BTreeMap<String, NodeIndex>,
}

impl BuildGraph {
    /// Builds the graph (the recipe has been validated, so it is acyclic).
    pub fn new(recipe: &Recipe) -> BuildGraph {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for name in recipe
            .sources
            .iter()
            .map(|s| &s.name)
            .chain(recipe.steps.iter().map(|s| &s.name))
        {
            index.insert(name.clone(), graph.add_node(name.clone()));
        }
        for s in &recipe.steps {
            for input in s.step.inputs() {
                graph.update_edge(index[&input.name], index[&s.name], ());
            }
        }
        BuildGraph { graph, index }
    }

    /// The direct inputs of `name`.
    pub fn inputs(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .graph
            .neighbors_directed(self.index[name], petgraph::Direction::Incoming)
            .map(|i| self.graph[i].clone())
            .collect();
        v.sort();
        v
    }

    /// Steps no other step depends on.
    pub fn leaves(&self, recipe: &Recipe) -> Vec<String> {
        recipe
            .steps
            .iter()
            .filter(|s| {
                self.graph
                    .neighbors_directed(self.index[&s.name], petgraph::Direction::Outgoing)
                    .next()
                    .is_none()
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// The targets and everything they depend on, sources included, in a
    /// topological order that is deterministic (recipe order breaks ties).
    pub fn plan(&self, recipe: &Recipe, targets: &[String]) -> Vec<String> {
        let order: BTreeMap<&str, usize> = recipe
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(recipe.steps.iter().map(|s| s.name.as_str()))
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        let mut needed = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = targets.iter().map(|t| self.index[t]).collect();
        while let Some(n) = stack.pop() {
            if needed.insert(n) {
                stack.extend(
                    self.graph
                        .neighbors_directed(n, petgraph::Direction::Incoming),
                );
            }
        }
        // Kahn's algorithm with the recipe order as priority.
        let mut indegree: BTreeMap<NodeIndex, usize> = needed
            .iter()
            .map(|&n| {
                let d = self
                    .graph
                    .neighbors_directed(n, petgraph::Direction::Incoming)
                    .filter(|m| needed.contains(m))
                    .count();
                (n, d)
            })
            .collect();
        let mut ready: BTreeSet<(usize, NodeIndex)> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| (order[self.graph[*n].as_str()], *n))
            .collect();
        let mut out = Vec::new();
        while let Some(first) = ready.pop_first() {
            let n = first.1;
            out.push(self.graph[n].clone());
            for m in self
                .graph
                .neighbors_directed(n, petgraph::Direction::Outgoing)
            {
                if let Some(d) = indegree.get_mut(&m) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((order[self.graph[m].as_str()], m));
                    }
                }
            }
        }
        out
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self, recipe: &Recipe) -> String {
        let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", recipe.name);
        for s in &recipe.sources {
            out.push_str(&format!(
                "  \"{}\" [shape=cylinder, label=\"{}\\n{}\"];\n",
                s.name,
                s.name,
                s.describe()
            ));
        }
        for s in &recipe.steps {
            out.push_str(&format!(
                "  \"{}\" [shape=box, label=\"{}\\n({})\"];\n",
                s.name,
                s.name,
                s.step.kind()
            ));
        }
        for s in &recipe.steps {
            for i in self.inputs(&s.name) {
                out.push_str(&format!("  \"{i}\" -> \"{}\";\n", s.name));
            }
        }
        out.push_str("}\n");
        out
    }

    /// The graph as a mermaid flowchart. With [`Detail::Sweeps`] (what the
    /// model card embeds) the instances of a `matrix:` step are one node,
    /// labelled with their count, and their edges are merged: a sweep of 21
    /// evals reads as one box, not 21 boxes and 42 arrows.
    pub fn to_mermaid(&self, recipe: &Recipe, detail: Detail) -> String {
        let id = |name: &str| -> String {
            name.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        // Each step's node: its own, or its sweep's when collapsed.
        let sweep_of: BTreeMap<&str, &str> = match detail {
            Detail::Instances => BTreeMap::new(),
            Detail::Sweeps => recipe
                .matrices
                .iter()
                .flat_map(|e| {
                    e.instances
                        .iter()
                        .map(|i| (i.name.as_str(), e.step.as_str()))
                })
                .collect(),
        };
        let node_of =
            |name: &str| -> String { sweep_of.get(name).copied().unwrap_or(name).to_owned() };
        let mut out = String::from("flowchart LR\n");
        for s in &recipe.sources {
            out.push_str(&format!(
                "  {}[(\"{}\")]\n",
                id(&s.name),
                s.name.replace('"', "'")
            ));
        }
        // Nodes in recipe order, each with its kind and instance count.
        let mut nodes: Vec<(String, &str, usize)> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for s in &recipe.steps {
            let node = node_of(&s.name);
            match index.get(&node) {
                Some(&at) => nodes[at].2 += 1,
                None => {
                    index.insert(node.clone(), nodes.len());
                    nodes.push((node, s.step.kind(), 1));
                }
            }
        }
        for (node, kind, count) in &nodes {
            let label = node.replace('"', "'");
            let label = match detail {
                Detail::Sweeps if recipe.matrices.iter().any(|e| &e.step == node) => {
                    format!("{label} ×{count} ({kind})")
                }
                _ => format!("{label} ({kind})"),
            };
            out.push_str(&format!("  {}[\"{label}\"]\n", id(node)));
        }
        let mut edges: Vec<(String, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        for s in &recipe.steps {
            for i in self.inputs(&s.name) {
                let edge = (node_of(&i), node_of(&s.name));
                if edge.0 != edge.1 && seen.insert(edge.clone()) {
                    edges.push(edge);
                }
            }
        }
        for (from, to) in &edges {
            out.push_str(&format!("  {} --> {}\n", id(from), id(to)));
        }
        out
    }
}
