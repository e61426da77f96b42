//! Table-driven checks of every name rule.

use super::*;

#[test]
fn interface_names_follow_linux_and_stay_safe_in_rules() {
    let cases = [
        ("eth0", true),
        ("skein-wg", true),
        ("sk_a.1", true),
        ("abcdefghijklmno", true),
        ("abcdefghijklmnop", false),
        ("", false),
        (".", false),
        ("..", false),
        ("a/b", false),
        ("a:b", false),
        ("a b", false),
        ("a\tb", false),
        ("wg\"; flush ruleset; \"", false),
        ("a;b", false),
        ("a\"b", false),
        ("a\\b", false),
        ("é", false),
    ];
    for (name, ok) in cases {
        assert_eq!(IfName::new(name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn refusals_say_what_is_wrong() {
    assert_eq!(IfName::new("").unwrap_err().to_string(), "is empty");
    let long = IfName::new("abcdefghijklmnop").unwrap_err().to_string();
    assert!(
        long.contains("16 bytes") && long.contains("at most 15"),
        "{long}"
    );
    let quote = IfName::new("a\"b").unwrap_err().to_string();
    assert!(
        quote.contains("'\"'") && quote.contains("letters, digits"),
        "{quote}"
    );
}

#[test]
fn nft_names_are_identifiers() {
    let cases = [
        ("postrouting", true),
        ("svc_1a2b3c4d_default_web", true),
        ("Svc", true),
        ("1svc", false),
        ("_svc", false),
        ("svc-web", false),
        ("svc web", false),
        ("svc;", false),
        ("", false),
        (&"a".repeat(64), true),
        (&"a".repeat(65), false),
    ];
    for (name, ok) in cases {
        assert_eq!(NftName::new(name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn comments_refuse_what_could_end_the_string() {
    let cases = [
        ("pod traffic leaving the cluster", true),
        ("default/web:http", true),
        ("a\"b", false),
        ("a\\b", false),
        ("a\nb", false),
        ("", false),
        (&"x".repeat(128), true),
        (&"x".repeat(129), false),
    ];
    for (text, ok) in cases {
        assert_eq!(NftComment::new(text).is_ok(), ok, "{text:?}");
    }
}

#[test]
fn lossy_comments_are_always_valid_and_bounded() {
    let c = NftComment::lossy("ns/\"evil\"\n; drop");
    assert_eq!(c.as_str(), "ns/_evil__; drop");
    assert!(NftComment::new(c.as_str()).is_ok());
    let long = NftComment::lossy(&"ü".repeat(100));
    assert!(
        long.as_str().len() <= MAX_NFT_COMMENT,
        "{}",
        long.as_str().len()
    );
    assert!(long.as_str().ends_with('…'));
    assert!(NftComment::new(long.as_str()).is_ok());
    assert_eq!(NftComment::lossy("").as_str(), "_");
}

#[test]
fn deserializing_validates() {
    let ok: IfName = serde_json::from_str("\"skein0\"").unwrap();
    assert_eq!(ok.as_str(), "skein0");
    let bad = serde_json::from_str::<IfName>("\"a;b\"")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("';'"), "{bad}");
}
