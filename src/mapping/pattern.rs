//! Subscriber event patterns: exact names, with `*` matching any run of characters
//! (`price.*`, `*.deleted`, `*`).

pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("*", "price.changed"));
        assert!(matches("price.*", "price.changed"));
        assert!(!matches("price.*", "prices.changed"));
        assert!(matches("*.deleted", "products.deleted"));
        assert!(matches("price.changed", "price.changed"));
        assert!(!matches("price.changed", "price.changed2"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("**", ""));
    }
}
