//! Where each node of a YAML document is (line and column), by path, so that errors
//! found after parsing (an undefined name, a shadowed rule) can still point at the
//! exact place in the file. Paths look like `rules.2.workloads.1`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default, Clone)]
pub struct Locations {
    /// Position of each node's value.
    nodes: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Collector {
    stack: Vec<Frame>,
    out: Locations,
}

fn join(base: &str, seg: &str) -> String {
    if base.is_empty() {
        seg.to_string()
    } else {
        format!("{base}.{seg}")
    }
}

impl Collector {
    /// The path of the node that starts now, and advances the parent's state.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = join(path, &index.to_string());
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
        }
    }

    /// In a mapping awaiting a key, a scalar is that key.
    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if self.is_key_position() {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        // The key's own position stands for the entry until its value is seen.
                        let p = join(path, &value);
                        self.out.nodes.insert(format!("{p}#key"), pos);
                        *key = Some(value);
                    }
                } else if let Some(p) = self.next_path() {
                    self.out.nodes.insert(p, pos);
                }
            }
            Event::Alias(_) => {
                if self.is_key_position() {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some("*alias".into());
                    }
                } else if let Some(p) = self.next_path() {
                    self.out.nodes.insert(p, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let p = if self.is_key_position() {
                    // A complex key: give it a placeholder name.
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some("?".into());
                    }
                    None
                } else {
                    self.next_path()
                };
                let path = p.unwrap_or_else(|| "?".into());
                self.out.nodes.insert(path.clone(), pos);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Locations {
    /// Indexes a document. A document that does not parse gives an empty index
    /// (serde reports the syntax error with its own position).
    pub fn of(text: &str) -> Self {
        let mut c = Collector {
            stack: Vec::new(),
            out: Locations::default(),
        };
        let mut p = Parser::new_from_str(text);
        let _ = p.load(&mut c, false);
        c.out
    }

    /// Line and column (both 1-based) of the node at `path`, else of its nearest
    /// ancestor that is known, else (1, 1).
    pub fn at(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.nodes.get(&p) {
                return *pos;
            }
            if let Some(pos) = self.nodes.get(&format!("{p}#key")) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p.truncate(i),
                None => return self.nodes.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    /// Position of the key of the entry at `path` (e.g. the `approval:` key).
    pub fn key(&self, path: &str) -> (usize, usize) {
        self.nodes
            .get(&format!("{path}#key"))
            .copied()
            .unwrap_or_else(|| self.at(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_positions() {
        let text = "apiVersion: x\nrules:\n  - id: a\n    workloads: [w1, w2]\n  - id: b\n    targets:\n      - t\n";
        let l = Locations::of(text);
        assert_eq!(l.at("apiVersion"), (1, 13));
        assert_eq!(l.at("rules.0.id"), (3, 9));
        assert_eq!(l.at("rules.0.workloads.1"), (4, 21));
        assert_eq!(l.at("rules.1.targets.0"), (7, 9));
        assert_eq!(l.key("rules.1.targets"), (6, 5));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(l.at("rules.1.targets.0.zzz"), (7, 9));
    }
}
