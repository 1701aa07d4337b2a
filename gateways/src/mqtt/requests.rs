//! Device requests on `$iothub/...` topics (twin GET/PATCH, direct method responses) and
//! the topics of the answers (spec §2.6–2.7); an edge's requests on `$weir/edge/...`.

/// What an edge subscribes to for its answers and its children's changes.
pub const EDGE_FILTER: &str = "$weir/edge/#";
const CHILDREN_GET: &str = "$weir/edge/children/GET/?$rid=";

/// The rid of an edge's request for its children (`$weir/edge/children/GET/?$rid=`).
pub fn children_request(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(CHILDREN_GET)
        .filter(|r| !r.is_empty() && !r.contains(['&', '/']))
}

/// Where the edge asks for its children with `rid`.
pub fn children_request_topic(rid: &str) -> String {
    format!("{CHILDREN_GET}{rid}")
}

/// `$weir/edge/children/res/{status}/?$rid={rid}`
pub fn children_response(status: u16, rid: &str) -> String {
    format!("$weir/edge/children/res/{status}/?$rid={rid}")
}

/// `$weir/edge/{child}/twin/PATCH/properties/desired/?$version={v}`
pub fn child_desired_topic(child: &str, version: u64) -> String {
    format!("$weir/edge/{child}/twin/PATCH/properties/desired/?$version={version}")
}

/// `$weir/edge/{child}/methods/POST/{method}/?$rid={rid}&$timeout={secs}`
pub fn child_method_topic(child: &str, method: &str, rid: &str, timeout_secs: u64) -> String {
    format!("$weir/edge/{child}/methods/POST/{method}/?$rid={rid}&$timeout={timeout_secs}")
}

/// `$weir/edge/{child}/messages/devicebound/{bag}`: a cloud-to-device message for a child,
/// its properties as the device topic carries them.
pub fn child_c2d_topic(child: &str, bag: &str) -> String {
    format!("$weir/edge/{child}/messages/devicebound/{bag}")
}

/// `$weir/edge/{child}/methods/res/{status}/?$rid={rid}`: the edge answers for its child.
pub fn child_method_response_topic(child: &str, status: i32, rid: &str) -> String {
    format!("$weir/edge/{child}/methods/res/{status}/?$rid={rid}")
}

/// An edge's answer for its child: (child, status, rid).
pub fn child_method_response(topic: &str) -> Option<(&str, i32, &str)> {
    let rest = topic.strip_prefix("$weir/edge/")?;
    let (child, rest) = rest.split_once("/methods/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let rid = param(query, "$rid").filter(|r| !r.is_empty())?;
    Some((child, status.parse().ok()?, rid))
}

/// What the hub sends an edge on `$weir/edge/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToEdge<'a> {
    Children {
        status: u16,
        rid: &'a str,
    },
    ChildDesired {
        child: &'a str,
    },
    ChildMethod {
        child: &'a str,
        method: &'a str,
        rid: &'a str,
        timeout_secs: u64,
    },
    /// A cloud-to-device message for `child` with its encoded property bag.
    ChildC2d {
        child: &'a str,
        bag: &'a str,
    },
}

/// Recognises the hub's publishes to an edge.
pub fn to_edge(topic: &str) -> Option<ToEdge<'_>> {
    let rest = topic.strip_prefix("$weir/edge/")?;
    if let Some(r) = rest.strip_prefix("children/res/") {
        let (status, query) = r.split_once("/?")?;
        return Some(ToEdge::Children {
            status: status.parse().ok()?,
            rid: param(query, "$rid")?,
        });
    }
    let (child, r) = rest.split_once('/')?;
    if let Some(m) = r.strip_prefix("methods/POST/") {
        let (method, query) = m.split_once("/?")?;
        return Some(ToEdge::ChildMethod {
            child,
            method,
            rid: param(query, "$rid").filter(|r| !r.is_empty())?,
            timeout_secs: param(query, "$timeout")?.parse().ok()?,
        });
    }
    if let Some(bag) = r.strip_prefix("messages/devicebound/") {
        return Some(ToEdge::ChildC2d { child, bag });
    }
    r.starts_with("twin/PATCH/properties/desired/")
        .then_some(ToEdge::ChildDesired { child })
}

/// A request a device publishes to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest<'a> {
    TwinGet { rid: &'a str },
    TwinPatchReported { rid: &'a str },
    MethodResponse { status: i32, rid: &'a str },
}

/// The value of `key` in a `k=v&k=v` query string.
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Recognises `$iothub/twin/GET/?$rid=`, `$iothub/twin/PATCH/properties/reported/?$rid=`
/// and `$iothub/methods/res/{status}/?$rid=`; `None` for anything else.
pub fn parse(topic: &str) -> Option<DeviceRequest<'_>> {
    let rest = topic.strip_prefix("$iothub/")?;
    let (path, query) = rest.split_once("/?")?;
    let rid = param(query, "$rid").filter(|r| !r.is_empty())?;
    match path {
        "twin/GET" => Some(DeviceRequest::TwinGet { rid }),
        "twin/PATCH/properties/reported" => Some(DeviceRequest::TwinPatchReported { rid }),
        p => {
            let status = p.strip_prefix("methods/res/")?.parse().ok()?;
            Some(DeviceRequest::MethodResponse { status, rid })
        }
    }
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sdk_topics() {
        assert_eq!(
            parse("$iothub/twin/GET/?$rid=abc"),
            Some(DeviceRequest::TwinGet { rid: "abc" })
        );
        assert_eq!(
            parse("$iothub/twin/PATCH/properties/reported/?$rid=7&x=1"),
            Some(DeviceRequest::TwinPatchReported { rid: "7" })
        );
        assert_eq!(
            parse("$iothub/methods/res/200/?$rid=1"),
            Some(DeviceRequest::MethodResponse {
                status: 200,
                rid: "1"
            })
        );
        assert_eq!(parse("$iothub/methods/res/x/?$rid=1"), None);
        assert_eq!(parse("$iothub/twin/GET/"), None);
        assert_eq!(parse("$iothub/twin/GET/?$rid="), None);
        assert_eq!(parse("devices/d/messages/events/"), None);
        assert_eq!(
            twin_response(204, "r", Some(3)),
            "$iothub/twin/res/204/?$rid=r&$version=3"
        );
    }

    #[test]
    fn edge_topics_round_trip() {
        assert_eq!(children_request(&children_request_topic("9")), Some("9"));
        assert_eq!(children_request("$weir/edge/children/GET/?$rid="), None);
        assert_eq!(
            to_edge(&children_response(200, "9")),
            Some(ToEdge::Children {
                status: 200,
                rid: "9"
            })
        );
        assert_eq!(
            to_edge(&child_desired_topic("c1", 4)),
            Some(ToEdge::ChildDesired { child: "c1" })
        );
        assert_eq!(to_edge("$weir/edge/c1/methods/POST/x"), None);
        assert_eq!(
            to_edge(&child_method_topic("c1", "reboot", "7", 30)),
            Some(ToEdge::ChildMethod {
                child: "c1",
                method: "reboot",
                rid: "7",
                timeout_secs: 30
            })
        );
        assert_eq!(
            child_method_response(&child_method_response_topic("c1", 404, "7")),
            Some(("c1", 404, "7"))
        );
        assert_eq!(
            child_method_response("$weir/edge/c1/methods/res/x/?$rid=7"),
            None
        );
        assert_eq!(
            to_edge(&child_c2d_topic("c1", "%24.mid=m1&a=b")),
            Some(ToEdge::ChildC2d {
                child: "c1",
                bag: "%24.mid=m1&a=b"
            })
        );
        assert_eq!(to_edge("$iothub/twin/res/200/?$rid=1"), None);
    }
}
