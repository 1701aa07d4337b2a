//! Device requests on `$iothub/...` topics (twin GET/PATCH, direct method responses) and
//! the topics of the answers (spec §2.6–2.7).

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
}
