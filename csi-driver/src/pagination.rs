//! ListVolumes / ListSnapshots paging. A token is the ID of the first entry
//! of the next page: stable while other entries come and go, and a token
//! naming nothing (never issued, or its entry deleted since) is ABORTED, as
//! the spec asks, so that the CO restarts the listing.

use tonic::Status;

/// One page of `items` (sorted by ID) starting at `token`; returns the page
/// and the next token (empty when the listing is complete).
pub fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<T>, String), Status> {
    let max = usize::try_from(max_entries).map_err(|_| Status::invalid_argument("max_entries must not be negative"))?;
    let start = if token.is_empty() {
        0
    } else {
        items
            .iter()
            .position(|item| id(item) == token)
            .ok_or_else(|| Status::aborted(format!("starting_token {token:?} does not name an entry")))?
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = if max > 0 && rest.len() > max {
        let tail = rest.split_off(max);
        id(&tail[0]).to_string()
    } else {
        String::new()
    };
    Ok((rest, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v{i}")).collect()
    }

    #[test]
    fn pages_walk_the_whole_list_once() {
        let (p1, t1) = page(ids(5), |s| s.as_str(), 2, "").unwrap();
        assert_eq!(p1, ["v0", "v1"]);
        let (p2, t2) = page(ids(5), |s| s.as_str(), 2, &t1).unwrap();
        assert_eq!(p2, ["v2", "v3"]);
        let (p3, t3) = page(ids(5), |s| s.as_str(), 2, &t2).unwrap();
        assert_eq!((p3.as_slice(), t3.as_str()), (["v4".to_string()].as_slice(), ""));
        let (all, t) = page(ids(5), |s| s.as_str(), 0, "").unwrap();
        assert_eq!((all.len(), t.as_str()), (5, ""));
    }

    #[test]
    fn bad_tokens_abort_and_negative_limits_are_invalid() {
        assert_eq!(page(ids(3), |s| s.as_str(), 0, "nope").unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(page(ids(3), |s| s.as_str(), -1, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
