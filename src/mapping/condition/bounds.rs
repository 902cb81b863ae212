//! Size limits of a `when` expression, checked before the CEL parser sees it.
//!
//! CEL's parser, its evaluator, the plan and dropping the tree all recurse once per level
//! of the expression's tree, so an expression nested deep enough (5,000 `+` terms, a
//! thousand brackets) overflows the stack of the thread that parses or evaluates it: a
//! crash of the whole daemon, at start, at a reload or on a change. So an expression must
//! stay within `MAX_CHARS` characters and `MAX_DEPTH` levels, measured here by one pass
//! over its tokens without recursion and without building the tree.
//!
//! The depth is an upper bound of the depth of the tree CEL builds: every operator of a
//! chain (`a + b + c`) adds a level, as CEL nests chains, except `&&` and `||` chains,
//! which CEL balances (64 terms are 6 levels); a bracket, a call or a selection adds a
//! level (a call two, for the macros `all`, `exists`, `map`, ... that CEL expands), and a
//! run of `!` or `-` one.
//!
//! Measured on release builds with a 2 MiB stack (a tokio worker's): CEL evaluates trees
//! about 1,200 levels deep (1.7 KiB a level), and parses chains about 5,000 long and
//! brackets up to its own limit of 96 (past which it reports an error). `MAX_DEPTH`
//! stays far below both. Debug builds take about 20 times more stack per level (40 KiB
//! a level to evaluate, 170 KiB a bracket to parse), so walhook compiles conditions on a
//! thread with a large stack (`PARSE_STACK`); they are evaluated on the pipeline's thread
//! (the main thread, 8 MiB), where a debug build needs 2.6 MiB at the limit.

/// The longest expression taken, in characters.
pub const MAX_CHARS: usize = 10_000;
/// The deepest expression taken, in levels of its tree (see the module doc).
pub const MAX_DEPTH: usize = 64;

/// Why `source` is refused for its size, if it is.
pub fn check(source: &str) -> Result<(), String> {
    let chars = source.chars().count();
    if chars > MAX_CHARS {
        return Err(format!(
            "the expression is {chars} characters long; the limit is {MAX_CHARS}"
        ));
    }
    let depth = depth(source);
    if depth > MAX_DEPTH {
        return Err(format!(
            "the expression nests {depth} deep; the limit is {MAX_DEPTH}: use fewer nested \
             brackets and shorter chains of operators (chains of && and || may be long)"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// A literal or a name.
    Operand,
    /// A name after `.`.
    Field,
    /// A binary operator of this precedence (`?` and `:` are 1, `||` 2, `&&` 3,
    /// relations 4, `+ -` 5, `* / %` 6).
    Binary(u8),
    /// `!` or a `-` that starts an operand.
    Prefix,
    Dot,
    Comma,
    /// `?`, and `:`, which is also the separator of a map's key and value.
    Question,
    Colon,
    Open(u8),
    Close,
}

const OR: u8 = 2;
const AND: u8 = 3;
const PREFIX: u8 = 7;

/// The tokens of a CEL expression, as far as nesting goes. Anything the tokenizer does
/// not know counts as an operator (the parser refuses it anyway).
fn tokens(source: &str) -> Vec<Tok> {
    let s = source.as_bytes();
    let mut out: Vec<Tok> = Vec::new();
    let mut i = 0;
    // Whether the previous token ends an operand (then `-` is binary, `(` a call).
    let after_operand = |out: &Vec<Tok>| matches!(out.last(), Some(Tok::Operand | Tok::Field | Tok::Close));
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && next == Some(b'/') {
            while i < s.len() && s[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        // String and bytes literals, with their r/b prefixes; `quoted` identifiers.
        let prefix = s[i..]
            .iter()
            .take_while(|b| matches!(b, b'r' | b'R' | b'b' | b'B'))
            .count();
        if prefix <= 2 && matches!(s.get(i + prefix), Some(b'\'' | b'"')) || c == b'`' {
            let raw = s[i..i + prefix].iter().any(|b| matches!(b, b'r' | b'R'));
            i = skip_string(s, i + prefix, raw || c == b'`');
            out.push(Tok::Operand);
            continue;
        }
        if c.is_ascii_digit()
            || (c == b'.' && next.is_some_and(|d| d.is_ascii_digit()) && !after_operand(&out))
        {
            i = skip_number(s, i);
            out.push(Tok::Operand);
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
                i += 1;
            }
            out.push(if &s[start..i] == b"in" {
                Tok::Binary(4)
            } else if out.last() == Some(&Tok::Dot) {
                Tok::Field
            } else {
                Tok::Operand
            });
            continue;
        }
        let two = [c, next.unwrap_or(0)];
        let (tok, len) = match &two {
            b"||" => (Tok::Binary(OR), 2),
            b"&&" => (Tok::Binary(AND), 2),
            b"==" | b"!=" | b"<=" | b">=" => (Tok::Binary(4), 2),
            _ => match c {
                b'<' | b'>' => (Tok::Binary(4), 1),
                b'+' => (Tok::Binary(5), 1),
                b'-' if after_operand(&out) => (Tok::Binary(5), 1),
                b'-' | b'!' => (Tok::Prefix, 1),
                b'*' | b'/' | b'%' => (Tok::Binary(6), 1),
                b'?' => (Tok::Question, 1),
                b':' => (Tok::Colon, 1),
                b'.' => (Tok::Dot, 1),
                b',' => (Tok::Comma, 1),
                b'(' | b'[' | b'{' => (Tok::Open(c), 1),
                b')' | b']' | b'}' => (Tok::Close, 1),
                _ => (
                    Tok::Binary(4),
                    source[i..].chars().next().map_or(1, char::len_utf8),
                ),
            },
        };
        out.push(tok);
        i += len;
    }
    out
}

/// The end of the string literal whose opening quote is at `at`.
fn skip_string(s: &[u8], at: usize, raw: bool) -> usize {
    let q = s[at];
    let triple = s.len() >= at + 3 && s[at + 1] == q && s[at + 2] == q && q != b'`';
    let mut i = at + if triple { 3 } else { 1 };
    while i < s.len() {
        if s[i] == b'\\' && !raw {
            i += 2;
            continue;
        }
        if triple {
            if s.len() >= i + 3 && s[i..i + 3] == [q, q, q] {
                return i + 3;
            }
        } else if s[i] == q {
            return i + 1;
        }
        i += 1;
    }
    s.len()
}

/// The end of the number literal starting at `at`.
fn skip_number(s: &[u8], at: usize) -> usize {
    let mut i = at;
    if s[i] == b'0' && matches!(s.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
        while i < s.len() && s[i].is_ascii_hexdigit() {
            i += 1;
        }
    } else {
        let digits = |i: &mut usize| {
            while *i < s.len() && s[*i].is_ascii_digit() {
                *i += 1;
            }
        };
        digits(&mut i);
        if s.get(i) == Some(&b'.') && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            digits(&mut i);
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
            if s.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                i += 1 + sign;
                digits(&mut i);
            }
        }
    }
    if matches!(s.get(i), Some(b'u' | b'U')) {
        i += 1;
    }
    i
}

/// A value on the operand stack: its depth, and for a chain of `&&` or `||` (which CEL
/// balances) the operator, the number of terms and the deepest term.
#[derive(Debug, Clone, Copy)]
struct Operand {
    depth: usize,
    chain: Option<(u8, usize, usize)>,
}

impl Operand {
    fn leaf() -> Operand {
        Operand {
            depth: 1,
            chain: None,
        }
    }

    fn plain(depth: usize) -> Operand {
        Operand { depth, chain: None }
    }
}

/// One bracketed group (or the whole expression) being read.
struct Frame {
    /// `(`, `[`, `{` or 0 for the whole expression.
    open: u8,
    /// The operand the group applies to: a call's callee, an index's base, a message's type.
    base: Option<Operand>,
    operands: Vec<Operand>,
    ops: Vec<Tok>,
    /// The deepest element finished so far (elements are separated by `,`, and in a map
    /// by `:`).
    widest: usize,
    /// `?` without their `:` yet.
    open_questions: usize,
}

impl Frame {
    fn new(open: u8, base: Option<Operand>) -> Frame {
        Frame {
            open,
            base,
            operands: Vec::new(),
            ops: Vec::new(),
            widest: 0,
            open_questions: 0,
        }
    }

    fn prec(op: Tok) -> u8 {
        match op {
            Tok::Binary(p) => p,
            Tok::Prefix => PREFIX,
            _ => 1,
        }
    }

    /// Applies the operators on the stack that bind at least as tightly as `prec` (more
    /// tightly for the right-associative `?` and `:`).
    fn reduce(&mut self, prec: u8) {
        while let Some(&op) = self.ops.last() {
            let p = Frame::prec(op);
            if p < prec || (p == prec && p == 1) {
                break;
            }
            self.ops.pop();
            self.apply(op);
        }
    }

    fn apply(&mut self, op: Tok) {
        let mut pop = || self.operands.pop().unwrap_or(Operand::plain(0));
        let result = match op {
            Tok::Prefix => Operand::plain(pop().depth + 1),
            Tok::Binary(p @ (OR | AND)) => {
                let (b, a) = (pop(), pop());
                let (terms, deepest) = match a.chain {
                    Some((q, n, d)) if q == p => (n + 1, d.max(b.depth)),
                    _ => (2, a.depth.max(b.depth)),
                };
                // CEL balances a chain of n terms: ceil(log2(n)) levels.
                let levels = (usize::BITS - (terms - 1).leading_zeros()) as usize;
                Operand {
                    depth: deepest + levels,
                    chain: Some((p, terms, deepest)),
                }
            }
            _ => {
                let (b, a) = (pop(), pop());
                Operand::plain(a.depth.max(b.depth) + 1)
            }
        };
        self.operands.push(result);
    }

    /// Ends an element: its depth joins `widest`.
    fn end_element(&mut self) {
        self.reduce(0);
        let deepest = self.operands.drain(..).map(|o| o.depth).max().unwrap_or(0);
        self.widest = self.widest.max(deepest);
    }
}

/// An upper bound of the depth of the tree CEL makes of `source`, found without
/// recursion (see the module doc).
pub fn depth(source: &str) -> usize {
    let mut frames = vec![Frame::new(0, None)];
    let mut deepest_seen = 1;
    let mut prev = None;
    for tok in tokens(source) {
        let top = frames.last_mut().expect("the whole expression's frame stays");
        match tok {
            Tok::Operand => top.operands.push(Operand::leaf()),
            Tok::Field => {
                // A selection: one level over what it selects from.
                let from = top.operands.pop().unwrap_or(Operand::plain(0));
                top.operands.push(Operand::plain(from.depth + 1));
            }
            Tok::Dot => {}
            Tok::Prefix => {
                // A run of `!` or `-` is at most one level in CEL's tree.
                if prev != Some(Tok::Prefix) {
                    top.ops.push(Tok::Prefix);
                }
            }
            Tok::Binary(p) => {
                top.reduce(p);
                top.ops.push(tok);
            }
            Tok::Question => {
                top.reduce(1);
                top.open_questions += 1;
                top.ops.push(tok);
            }
            Tok::Colon if top.open == b'{' && top.open_questions == 0 => top.end_element(),
            Tok::Colon => {
                top.reduce(1);
                top.open_questions = top.open_questions.saturating_sub(1);
                top.ops.push(tok);
            }
            Tok::Comma => top.end_element(),
            Tok::Open(open) => {
                // After an operand: a call, an index or a message on it.
                let postfix = matches!(prev, Some(Tok::Operand | Tok::Field | Tok::Close));
                let base = if postfix { top.operands.pop() } else { None };
                frames.push(Frame::new(open, base));
            }
            Tok::Close => {
                if frames.len() > 1 {
                    let done = close(frames.pop().expect("more than one frame"));
                    let top = frames.last_mut().expect("the whole expression's frame stays");
                    top.operands.push(Operand::plain(done));
                }
            }
        }
        deepest_seen = deepest_seen.max(frames.len());
        prev = Some(tok);
    }
    // Brackets left open close at the end (the parser refuses them anyway).
    while frames.len() > 1 {
        let done = close(frames.pop().expect("more than one frame"));
        let top = frames.last_mut().expect("the whole expression's frame stays");
        top.operands.push(Operand::plain(done));
    }
    let mut whole = frames.pop().expect("the whole expression's frame stays");
    whole.end_element();
    whole.widest.max(deepest_seen - 1)
}

/// The depth of a finished group.
fn close(mut frame: Frame) -> usize {
    frame.end_element();
    let inner = frame.widest;
    match (frame.open, frame.base) {
        // A call: two levels, for the macros CEL expands into loops.
        (b'(', Some(callee)) => callee.depth.max(inner) + 2,
        (_, Some(base)) => base.depth.max(inner) + 1,
        (_, None) => inner + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_of_common_shapes() {
        for (expr, want) in [
            ("true", 1),
            ("new.qty", 2),
            ("new.qty > 0", 3),
            ("new.qty <= 0 && (op == 'insert' || old.qty > 0)", 6),
            ("!has(new.sku)", 5),
            ("!!!!!true", 2),
            ("-1 + 2", 3),
            ("new.a + new.b + new.c", 4),
            ("a ? b : c", 3),
            ("'a,b:c(' + \"d)\" + r'''e]''' + b'\\'f'", 4),
            ("[1, 2, [3]]", 3),
            ("{'a': 1, 'b': {'c': x ? 1 : 2}}", 5),
            ("new.tags.all(t, t != 'x')", 5),
            ("1.5e-3 + 0x1F + 3u", 3),
            ("new['qty'][0] // trailing [ ( comment", 3),
        ] {
            assert_eq!(depth(expr), want, "{expr}");
        }
        // && and || chains are balanced: 64 terms are 6 levels over their terms.
        let chain = vec!["new.qty > 0"; 64].join(" && ");
        assert_eq!(depth(&chain), 3 + 6);
        let sum = vec!["new.qty"; 60].join(" + ");
        assert_eq!(depth(&format!("{sum} == 60")), 62);
    }

    #[test]
    fn deep_or_long_expressions_are_refused_with_the_limit() {
        let sum = format!("{} > 0", vec!["1"; 3000].join("+"));
        assert_eq!(
            check(&sum).unwrap_err(),
            "the expression nests 3001 deep; the limit is 64: use fewer nested brackets and \
             shorter chains of operators (chains of && and || may be long)"
        );
        for deep in [
            format!("{}true{}", "(".repeat(100), ")".repeat(100)),
            format!("{}1{} == 1", "int(".repeat(40), ")".repeat(40)),
            format!("has(new{})", ".a".repeat(100)),
            format!("{}1{}", "[".repeat(70), "]".repeat(70)),
            format!("{}true", "true ? true : ".repeat(40)),
            // Unbalanced: the open brackets count.
            "(".repeat(5000),
            format!("new{}", "[0]".repeat(70)),
        ] {
            let e = check(&deep).unwrap_err();
            assert!(e.contains("the limit is 64"), "{deep}: {e}");
        }
        let long = format!("new.sku in [{}]", vec!["'SKU-0001'"; 1000].join(", "));
        assert_eq!(
            check(&long).unwrap_err(),
            "the expression is 12011 characters long; the limit is 10000"
        );
        let wide = format!("new.sku in [{}]", vec!["'A'"; 2000].join(","));
        assert_eq!(check(&wide), Ok(()), "a flat list is not deep");
    }

    /// The depth of CEL's tree.
    fn tree_depth(e: &cel::common::ast::IdedExpr) -> usize {
        use cel::common::ast::{EntryExpr, Expr};
        let entry = |x: &EntryExpr| match x {
            EntryExpr::StructField(f) => tree_depth(&f.value),
            EntryExpr::MapEntry(m) => tree_depth(&m.key).max(tree_depth(&m.value)),
        };
        1 + match &e.expr {
            Expr::Call(c) => c
                .target
                .iter()
                .map(|t| tree_depth(t))
                .chain(c.args.iter().map(tree_depth))
                .max()
                .unwrap_or(0),
            Expr::Select(s) => tree_depth(&s.operand),
            Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .map(tree_depth)
                .max()
                .unwrap_or(0),
            Expr::List(l) => l.elements.iter().map(tree_depth).max().unwrap_or(0),
            Expr::Map(m) => m.entries.iter().map(|x| entry(&x.expr)).max().unwrap_or(0),
            Expr::Struct(s) => s.entries.iter().map(|x| entry(&x.expr)).max().unwrap_or(0),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
        }
    }

    /// A random expression of every construct, `levels` deep at most.
    fn expression(rng: &mut rand::rngs::StdRng, levels: u32) -> String {
        use rand::Rng;
        const ATOMS: [&str; 9] = [
            "1", "2.5", "'a'", "true", "null", "new.qty", "old['q']", "x", "b\"z\"",
        ];
        const BINARY: [&str; 14] = [
            "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "in", "&&", "||",
        ];
        if levels == 0 || rng.gen_bool(0.2) {
            return ATOMS[rng.gen_range(0..ATOMS.len())].to_string();
        }
        let mut sub = || expression(rng, levels - 1);
        let (a, b, c) = (sub(), sub(), sub());
        match rng.gen_range(0..12) {
            0..=3 => {
                // A chain of one operator, as CEL nests or balances it.
                let op = BINARY[rng.gen_range(0..BINARY.len())];
                format!("{a} {op} {b} {op} {c}")
            }
            4 => format!("({a})"),
            5 => format!("!{a}"),
            6 => format!("-({a})"),
            7 => format!("{a} ? {b} : {c}"),
            8 => format!("[{a}, {b}][0]"),
            9 => format!("{{'k': {a}, {b}: {c}}}"),
            10 => format!("size({a}) + int({b})"),
            _ => format!("[{a}].all(v, {b} && v == {c})"),
        }
    }

    #[test]
    fn the_estimate_is_never_below_the_depth_of_cels_tree() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xdee9);
        let env = cel::Env::stdlib();
        let mut parsed = 0;
        for _ in 0..600 {
            let source = expression(&mut rng, 6);
            let Ok(real) = super::super::on_parse_stack(|| {
                env.compile(&source)
                    .map(|p| tree_depth(p.expression()))
                    .map_err(|e| e.to_string())
            }) else {
                continue;
            };
            parsed += 1;
            let estimate = depth(&source);
            assert!(
                estimate >= real,
                "{source}: estimated {estimate}, CEL's tree is {real} deep"
            );
            assert!(
                estimate <= 3 * real + 2,
                "{source}: estimated {estimate}, CEL's tree is only {real} deep"
            );
        }
        assert!(parsed > 400, "only {parsed} generated expressions parsed");
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [
            "", ")", "]]]", "'", "\"\"\"", "r'", "0x", "1e", ".", "a.", "?:", "{:}", "é ü", "`x",
        ] {
            let _ = check(junk);
        }
    }
}
