//! The `Mcp-Param-*` headers each tool declares (see [`warden_core::param_headers`]), as the
//! servers behind this gateway last listed them: a call's headers are checked against these.
//!
//! Only tools that declare headers are remembered (a tool that declares none and one never
//! seen are judged alike: no header may be sent for it), at most [`MAX_TOOLS`] per server so
//! that one server cannot grow the agent without bound: past it the tool remembered longest
//! ago is forgotten (a header for it is refused until the tools are listed again, as clients do
//! on that refusal). Each tool's declarations are bounded by [`Declared::of`]. A server no
//! longer configured is forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use warden_core::bounded::BoundedMap;
use warden_core::param_headers::Declared;

/// Tools with declarations remembered per server at most.
pub const MAX_TOOLS: usize = 2_000;

/// One server's tools that declare headers, by name.
type Tools = BoundedMap<String, Arc<Declared>>;

/// Where one server's listed declarations go (what a list answer's filter holds).
#[derive(Clone)]
pub struct ServerDeclarations {
    /// The server.
    pub server: Arc<str>,
    /// Every server's declarations.
    pub store: Arc<Declarations>,
}

/// The declarations of the tools listed last, per server and tool name.
#[derive(Default)]
pub struct Declarations {
    /// Whether any tool declared anything yet: until then calls skip the lock.
    any: AtomicBool,
    servers: Mutex<HashMap<Arc<str>, Tools>>,
}

impl Declarations {
    /// Remembers what each tool of a `tools/list` answer of `server` declares.
    pub fn record(&self, server: &Arc<str>, tools: &[Value]) {
        let read = tools.iter().filter_map(|tool| {
            let name = tool.get("name").and_then(Value::as_str)?;
            Some((name, tool.get("inputSchema").and_then(Declared::of)))
        });
        let read: Vec<(&str, Option<Declared>)> = read.collect();
        if !self.any.load(Ordering::Acquire) && read.iter().all(|(_, d)| d.is_none()) {
            return;
        }
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let tools = servers.entry(server.clone()).or_insert_with(|| BoundedMap::new(MAX_TOOLS));
        for (name, declared) in read {
            let name = name.to_string();
            match declared {
                // (Unchanged declarations keep their entry.)
                Some(declared) if tools.get(&name).is_some_and(|d| **d == declared) => {}
                Some(declared) => {
                    tools.insert(name, Arc::new(declared));
                    self.any.store(true, Ordering::Release);
                }
                None => {
                    tools.remove(&name);
                }
            }
        }
        if tools.is_empty() {
            servers.remove(&**server);
        }
    }

    /// What `tool` of `server` declared when it was listed last, if anything.
    pub fn get(&self, server: &str, tool: &str) -> Option<Arc<Declared>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.get(server)?.get(&tool.to_string()).cloned()
    }

    /// Forgets the servers `keep` does not keep.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, header: Option<&str>) -> Value {
        let mut region = json!({"type": "string"});
        if let Some(h) = header {
            region["x-mcp-header"] = json!(h);
        }
        json!({"name": name, "inputSchema": {"type": "object", "properties": {"region": region}}})
    }

    #[test]
    fn the_last_listing_is_what_counts_and_bounds_hold() {
        let declarations = Declarations::default();
        let server: Arc<str> = Arc::from("github");
        declarations.record(&server, &[tool("plain", None)]);
        assert!(declarations.get("github", "plain").is_none());
        declarations.record(&server, &[tool("plain", None), tool("query", Some("Region"))]);
        assert!(
            matches!(declarations.get("github", "query").as_deref(), Some(Declared::Params(p)) if p[0].header == "Mcp-Param-Region")
        );
        // Listed again without the declaration: forgotten.
        declarations.record(&server, &[tool("query", None)]);
        assert!(declarations.get("github", "query").is_none());
        // Bounded per server, the longest remembered going first (a new tool is never locked
        // out); another server has its own room.
        let many: Vec<Value> = (0..MAX_TOOLS + 10).map(|i| tool(&format!("t{i}"), Some("Region"))).collect();
        declarations.record(&server, &many);
        assert!(declarations.get("github", "t0").is_none() && declarations.get("github", "t9").is_none());
        assert!(declarations.get("github", "t10").is_some());
        assert!(declarations.get("github", &format!("t{}", MAX_TOOLS + 9)).is_some());
        declarations.record(&Arc::from("other"), &[tool("query", Some("Region"))]);
        assert!(declarations.get("other", "query").is_some());
        declarations.retain(|name| name == "other");
        assert!(declarations.get("github", "t0").is_none());
        assert!(declarations.get("other", "query").is_some());
    }
}
