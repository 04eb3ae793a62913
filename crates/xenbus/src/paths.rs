//! Where XenBus devices live in XenStore (libxl's
//! `libxl__device_backend_path` / `libxl__device_frontend_path`):
//!
//! * backend: `/local/domain/<be>/backend/<type>/<fe>/<devid>`
//! * frontend: `/local/domain/<fe>/device/<type>/<devid>`, unless the
//!   backend type overrides it ([`crate::BackendType::frontend_path`]); the
//!   console's index 0 lives at `/local/domain/<fe>/console`
//!   ([`console_frontend_path`]).
//!
//! Directory names under a backend type dir come from whoever wrote them
//! (the toolstack, or anyone with write access there), so they are parsed
//! strictly: [`parse_domid`] and [`parse_devid`].

use platform::DomId;

/// `/local/domain/<domid>`.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// `/local/domain/<be>/backend/<type>`: the directory the bus watches.
pub fn backend_type_dir(backend: DomId, backend_type: &str) -> String {
    format!("/local/domain/{backend}/backend/{backend_type}")
}

/// `/local/domain/<be>/backend/<type>/<fe>`.
pub fn backend_frontend_dir(backend: DomId, backend_type: &str, frontend: DomId) -> String {
    format!("{}/{frontend}", backend_type_dir(backend, backend_type))
}

/// `/local/domain/<be>/backend/<type>/<fe>/<devid>`.
pub fn backend_path(backend: DomId, backend_type: &str, frontend: DomId, devid: u32) -> String {
    format!(
        "{}/{devid}",
        backend_frontend_dir(backend, backend_type, frontend)
    )
}

/// The default frontend path, `/local/domain/<fe>/device/<type>/<devid>`.
pub fn frontend_path(frontend: DomId, device_type: &str, devid: u32) -> String {
    format!("/local/domain/{frontend}/device/{device_type}/{devid}")
}

/// The console's frontend path: index 0 (the primary console, which the
/// domain builder sets up) is `/local/domain/<fe>/console`, the others
/// follow the default layout (`libxl__device_frontend_path`).
pub fn console_frontend_path(frontend: DomId, devid: u32) -> String {
    if devid == 0 {
        format!("/local/domain/{frontend}/console")
    } else {
        frontend_path(frontend, "console", devid)
    }
}

/// Plain decimal digits with no sign and no leading zero (so `01` and `1`
/// cannot name the same device twice).
fn canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// A frontend domid from a directory name: canonical decimal and a real
/// domain (below `DOMID_FIRST_RESERVED`).
pub fn parse_domid(s: &str) -> Option<DomId> {
    if !canonical_decimal(s) {
        return None;
    }
    s.parse::<u16>().ok().map(DomId).filter(|d| d.is_valid())
}

/// A device id from a directory name: canonical decimal `u32`.
pub fn parse_devid(s: &str) -> Option<u32> {
    if !canonical_decimal(s) {
        return None;
    }
    s.parse().ok()
}

/// `path` split into the components below `dir`: `Some([])` for `dir`
/// itself, `None` if `path` is not at or below `dir`.
pub fn components_below<'a>(dir: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_prefix('/')?;
    Some(rest.split('/').collect())
}

/// Whether `name` may be used as a single node name below a device
/// directory: non-empty, no `/`, no NUL, at most 256 bytes.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_@.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_frontend_paths_follow_libxl() {
        assert_eq!(
            backend_path(DomId(0), "console", DomId(7), 3),
            "/local/domain/0/backend/console/7/3"
        );
        assert_eq!(
            backend_type_dir(DomId(2), "vif"),
            "/local/domain/2/backend/vif"
        );
        assert_eq!(
            frontend_path(DomId(7), "console", 12),
            "/local/domain/7/device/console/12"
        );
        assert_eq!(domain_path(DomId(5)), "/local/domain/5");
    }

    #[test]
    fn console_index_zero_is_the_primary_console_dir() {
        assert_eq!(
            console_frontend_path(DomId(7), 0),
            "/local/domain/7/console"
        );
        assert_eq!(
            console_frontend_path(DomId(7), 1),
            "/local/domain/7/device/console/1"
        );
        assert_eq!(
            console_frontend_path(DomId(7), 100),
            "/local/domain/7/device/console/100"
        );
    }

    #[test]
    fn directory_names_parse_strictly() {
        assert_eq!(parse_domid("0"), Some(DomId(0)));
        assert_eq!(parse_domid("32751"), Some(DomId(0x7fef)));
        assert_eq!(parse_domid("32752"), None); // DOMID_FIRST_RESERVED
        assert_eq!(parse_domid("65535"), None); // DOMID_INVALID
        for bad in ["", "01", "+1", "-1", " 1", "1 ", "0x1", "65536", "a"] {
            assert_eq!(parse_domid(bad), None, "{bad:?}");
        }
        assert_eq!(parse_devid("0"), Some(0));
        assert_eq!(parse_devid("4294967295"), Some(u32::MAX));
        for bad in ["", "00", "007", "+3", "4294967296", "3a", "٣"] {
            assert_eq!(parse_devid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn components_below_splits_relative_parts() {
        let dir = "/local/domain/0/backend/console";
        assert_eq!(components_below(dir, dir), Some(vec![]));
        assert_eq!(
            components_below(dir, "/local/domain/0/backend/console/5/1/state"),
            Some(vec!["5", "1", "state"])
        );
        assert_eq!(
            components_below(dir, "/local/domain/0/backend/consoles/5"),
            None
        );
        assert_eq!(components_below(dir, "/local/domain/0/backend"), None);
    }

    #[test]
    fn node_names_are_single_components() {
        assert!(is_node_name("ring-ref"));
        assert!(is_node_name("feature_x.y"));
        for bad in ["", "a/b", "/a", "a\0", "a b"] {
            assert!(!is_node_name(bad), "{bad:?}");
        }
    }
}
