//! Deep-link extraction: finds `<prefix><digits>` as a whole word in a message body.
//!
//! Tenants hand out `https://wa.me/<gateway>?text=start_realty_<tenant_id>`; the
//! client's first message carries that text, possibly with words around it and in
//! any letter case. Pure and allocation-free.

/// Returns the tenant id of the first whole-word `<prefix><digits>` in `body`,
/// ignoring ASCII case. "Whole word" means no letter, digit or `_` touches the
/// match on either side, so `start_realty_2x` and `xstart_realty_2` do not count.
/// An id too large for a `u64` is not a link.
pub fn find_tenant_link(body: &str, prefix: &str) -> Option<u64> {
    let hay = body.as_bytes();
    let needle = prefix.as_bytes();
    if needle.is_empty() || hay.len() <= needle.len() {
        return None;
    }
    let first = needle[0].to_ascii_lowercase();
    let mut start = 0;
    while start + needle.len() < hay.len() {
        let offset = hay[start..].iter().position(|b| b.to_ascii_lowercase() == first)?;
        let at = start + offset;
        start = at + 1;
        let end = at + needle.len();
        if end >= hay.len() || !hay[at..end].eq_ignore_ascii_case(needle) {
            continue;
        }
        if !boundary_before(body, at) {
            continue;
        }
        let digits = hay[end..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || !boundary_after(body, end + digits) {
            continue;
        }
        // Safe to slice: ASCII digits are char boundaries.
        if let Ok(id) = body[end..end + digits].parse::<u64>() {
            return Some(id);
        }
    }
    None
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn boundary_before(body: &str, at: usize) -> bool {
    // `at` is where an ASCII byte matched, so it is a char boundary.
    body[..at].chars().next_back().is_none_or(|c| !is_word_char(c))
}

fn boundary_after(body: &str, at: usize) -> bool {
    body[at..].chars().next().is_none_or(|c| !is_word_char(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(body: &str, expected: Option<u64>) {
        assert_eq!(find_tenant_link(body, "start_realty_"), expected, "body {body:?}");
    }

    #[test]
    fn whole_word_case_insensitive_anywhere() {
        check("start_realty_2", Some(2));
        check(" START_REALTY_2 ", Some(2));
        check("Hi start_realty_2", Some(2));
        check("start_realty_2\nI want a flat", Some(2));
        check("Start_Realty_42.", Some(42));
        check("(start_realty_7)", Some(7));
        check("hello, start_realty_1000!", Some(1000));
        check("start_realty_2x", None);
        check("start_realty_2_", None);
        check("xstart_realty_2", None);
        check("éstart_realty_2", None);
        check("start_realty_", None);
        check("start_realty_ 2", None);
        check("start_realty", None);
        check("", None);
        check("no link here", None);
        check("start_realty_x start_realty_5", Some(5));
        check("start_realty_3 start_realty_5", Some(3));
        check("start_realty_99999999999999999999999", None);
        check("مرحبا start_realty_12 شكرا", Some(12));
        check("🏠start_realty_12", Some(12));
        check("start_realty_1٣", None);
    }

    #[test]
    fn other_prefixes() {
        assert_eq!(find_tenant_link("join-7 now", "join-"), Some(7));
        assert_eq!(find_tenant_link("anything", ""), None);
    }
}
