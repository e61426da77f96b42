//! Unit tests of the pure parts: configuration, environment and `CNI_ARGS` checks with the error
//! code and the name each must carry, result and `VERSION` documents per spec version, and the
//! daemon's decoding of requests. Socket round trips are in `tests/socket.rs`.

use super::*;
use crate::env::Invocation;
use serde_json::{Value, json};

const CONF: &str = r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein"}"#;

/// An environment for `command` with every variable an attachment command needs, valid, and
/// `overrides` applied (an empty value removes the variable).
fn env(command: &str, overrides: &[(&str, &str)]) -> Env {
    let mut vars = std::collections::BTreeMap::from([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "4c3f0ab1d2"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]);
    for (name, value) in overrides {
        if value.is_empty() {
            vars.remove(name);
        } else {
            vars.insert(name, value);
        }
    }
    vars.into_iter().collect()
}

fn run_json(env: &Env, stdin: &str) -> (Value, bool) {
    let (out, ok) = run(env, stdin.as_bytes());
    let value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (value, ok)
}

#[test]
fn invalid_input_yields_the_spec_error_code_naming_the_culprit() {
    struct Case {
        what: &'static str,
        command: &'static str,
        env: &'static [(&'static str, &'static str)],
        stdin: &'static str,
        code: u32,
        names: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "no command",
            command: "",
            env: &[],
            stdin: CONF,
            code: 4,
            names: &["CNI_COMMAND"],
        },
        Case {
            what: "unknown command",
            command: "ATTACH",
            env: &[],
            stdin: CONF,
            code: 4,
            names: &["CNI_COMMAND", "ATTACH", "GC"],
        },
        Case {
            what: "malformed JSON",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0" "name": "x"}"#,
            code: 6,
            names: &["stdin", "line 1 column 24"],
        },
        Case {
            what: "empty stdin",
            command: "ADD",
            env: &[],
            stdin: " \n",
            code: 6,
            names: &["stdin is empty"],
        },
        Case {
            what: "not an object",
            command: "ADD",
            env: &[],
            stdin: "[1, 2]",
            code: 6,
            names: &["expected a JSON object, found a list"],
        },
        Case {
            what: "old version",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "0.4.0", "name": "skein", "type": "skein"}"#,
            code: 1,
            names: &["\"0.4.0\"", "1.0.0, 1.1.0"],
        },
        Case {
            what: "newer version",
            command: "GC",
            env: &[],
            stdin: r#"{"cniVersion": "1.2.0", "name": "skein", "type": "skein"}"#,
            code: 1,
            names: &["\"1.2.0\"", "1.0.0, 1.1.0"],
        },
        Case {
            what: "no version",
            command: "ADD",
            env: &[],
            stdin: r#"{"name": "skein", "type": "skein"}"#,
            code: 7,
            names: &["`cniVersion` is missing"],
        },
        Case {
            what: "version not a string",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": 1.1, "name": "skein", "type": "skein"}"#,
            code: 7,
            names: &["`cniVersion` must be a string, found a number"],
        },
        Case {
            what: "no name",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "type": "skein"}"#,
            code: 7,
            names: &["`name` is missing"],
        },
        Case {
            what: "bad name",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "-pods", "type": "skein"}"#,
            code: 7,
            names: &["`name`", "\"-pods\""],
        },
        Case {
            what: "no type",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein"}"#,
            code: 7,
            names: &["`type` is missing"],
        },
        Case {
            what: "relative socket",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein", "socket": "cni.sock"}"#,
            code: 7,
            names: &["`socket`", "absolute", "\"cni.sock\""],
        },
        Case {
            what: "socket not a string",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein", "socket": 7}"#,
            code: 7,
            names: &["`socket` must be a string, found a number"],
        },
        Case {
            what: "ipam section",
            command: "ADD",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein", "ipam": {"type": "host-local"}}"#,
            code: 2,
            names: &["`ipam`", r#"{"type":"host-local"}"#],
        },
        Case {
            what: "attachments not a list",
            command: "GC",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein", "cni.dev/valid-attachments": {}}"#,
            code: 7,
            names: &["`cni.dev/valid-attachments`", "found an object"],
        },
        Case {
            what: "attachment without ifname",
            command: "GC",
            env: &[],
            stdin: r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein", "cni.dev/attachments": [{"containerID": "a"}]}"#,
            code: 7,
            names: &["`cni.dev/attachments[0].ifname` is missing"],
        },
        Case {
            what: "no container",
            command: "ADD",
            env: &[("CNI_CONTAINERID", "")],
            stdin: CONF,
            code: 4,
            names: &["CNI_CONTAINERID", "not set"],
        },
        Case {
            what: "bad container",
            command: "DEL",
            env: &[("CNI_CONTAINERID", "-4c3f")],
            stdin: CONF,
            code: 4,
            names: &["CNI_CONTAINERID", "\"-4c3f\""],
        },
        Case {
            what: "no interface",
            command: "DEL",
            env: &[("CNI_IFNAME", "")],
            stdin: CONF,
            code: 4,
            names: &["CNI_IFNAME", "not set"],
        },
        Case {
            what: "interface with colon",
            command: "ADD",
            env: &[("CNI_IFNAME", "eth0:1")],
            stdin: CONF,
            code: 4,
            names: &["CNI_IFNAME", "\"eth0:1\""],
        },
        Case {
            what: "interface too long",
            command: "CHECK",
            env: &[("CNI_IFNAME", "abcdefghijklmnop")],
            stdin: CONF,
            code: 4,
            names: &["CNI_IFNAME", "at most 15"],
        },
        Case {
            what: "no netns for ADD",
            command: "ADD",
            env: &[("CNI_NETNS", "")],
            stdin: CONF,
            code: 4,
            names: &["CNI_NETNS", "not set"],
        },
        Case {
            what: "no netns for CHECK",
            command: "CHECK",
            env: &[("CNI_NETNS", "")],
            stdin: CONF,
            code: 4,
            names: &["CNI_NETNS"],
        },
        Case {
            what: "relative netns",
            command: "ADD",
            env: &[("CNI_NETNS", "netns/x")],
            stdin: CONF,
            code: 4,
            names: &["CNI_NETNS", "absolute"],
        },
        Case {
            what: "netns gone",
            command: "ADD",
            env: &[("CNI_NETNS", "/run/netns/skein-test-no-such-namespace")],
            stdin: CONF,
            code: 3,
            names: &["/run/netns/skein-test-no-such-namespace", "does not exist"],
        },
        Case {
            what: "netns not a namespace",
            command: "ADD",
            env: &[("CNI_NETNS", "/proc/self/status")],
            stdin: CONF,
            code: 4,
            names: &["CNI_NETNS", "/proc/self/status", "not a namespace"],
        },
        Case {
            what: "unknown CNI_ARGS key",
            command: "ADD",
            env: &[("CNI_ARGS", "K8S_POD_NAME=web;COLOUR=blue")],
            stdin: CONF,
            code: 4,
            names: &["CNI_ARGS", "\"COLOUR\""],
        },
    ];
    for case in cases {
        let (out, ok) = run_json(&env(case.command, case.env), case.stdin);
        assert!(!ok, "{}: should fail", case.what);
        assert_eq!(out["code"], case.code, "{}: {out}", case.what);
        let msg = out["msg"].as_str().expect("msg is a string");
        for name in case.names {
            assert!(
                msg.contains(name),
                "{}: {msg:?} should name {name:?}",
                case.what
            );
        }
        assert!(out["cniVersion"].is_string(), "{}: {out}", case.what);
    }
}

#[test]
fn errors_are_written_in_the_requested_version_when_skein_speaks_it() {
    let cases = [
        (
            r#"{"cniVersion": "1.0.0", "name": "skein", "type": "skein"}"#,
            "1.0.0",
        ),
        (CONF, "1.1.0"),
        (
            r#"{"cniVersion": "0.3.1", "name": "skein", "type": "skein"}"#,
            "1.1.0",
        ),
        ("not json", "1.1.0"),
    ];
    for (stdin, version) in cases {
        let (out, ok) = run_json(&env("ADD", &[("CNI_IFNAME", "")]), stdin);
        assert!(!ok);
        assert_eq!(out["cniVersion"], version, "{stdin}");
    }
}

#[test]
fn version_is_answered_without_a_daemon_or_a_valid_configuration() {
    let cases = [
        (r#"{"cniVersion": "1.0.0"}"#, "1.0.0"),
        (r#"{"cniVersion": "1.1.0"}"#, "1.1.0"),
        (r#"{"cniVersion": "0.4.0"}"#, "1.1.0"),
        ("", "1.1.0"),
        ("{", "1.1.0"),
    ];
    for (stdin, version) in cases {
        let (out, ok) = run_json(&env("VERSION", &[]), stdin);
        assert!(ok, "{stdin}");
        assert_eq!(
            out,
            json!({"cniVersion": version, "supportedVersions": ["1.0.0", "1.1.0"]}),
            "{stdin}"
        );
    }
}

#[test]
fn cni_args_give_the_pod_identity() {
    let pod = |ns: &str, name: &str, uid: &str, infra: &str| PodIdentity {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        infra_container_id: Some(infra.into()),
    };
    let cases: [(&str, Result<PodIdentity, &str>); 11] = [
        ("", Ok(PodIdentity::default())),
        // containerd's exact string.
        (
            "K8S_POD_INFRA_CONTAINER_ID=9f1c;K8S_POD_UID=7d2e-11;IgnoreUnknown=1;\
             K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-x7q2n",
            Ok(pod(
                "kube-system",
                "coredns-5d78c9869d-x7q2n",
                "7d2e-11",
                "9f1c",
            )),
        ),
        // CRI-O's order.
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=ab12;K8S_POD_UID=u-1",
            Ok(pod("default", "web-0", "u-1", "ab12")),
        ),
        (
            "K8S_POD_NAME=web;",
            Ok(PodIdentity {
                name: Some("web".into()),
                ..PodIdentity::default()
            }),
        ),
        ("K8S_POD_NAME=", Ok(PodIdentity::default())),
        ("FOO=bar;IgnoreUnknown=true", Ok(PodIdentity::default())),
        ("IgnoreUnknown=1;FOO=a=b", Ok(PodIdentity::default())),
        ("FOO=bar", Err("unknown key \"FOO\"")),
        ("IgnoreUnknown=0;FOO=bar", Err("unknown key \"FOO\"")),
        (
            "IgnoreUnknown=maybe",
            Err("IgnoreUnknown=\"maybe\" is not a boolean"),
        ),
        ("K8S_POD_NAME", Err("\"K8S_POD_NAME\" is not KEY=VALUE")),
    ];
    for (args, expected) in cases {
        match (PodIdentity::from_cni_args(args), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{args}"),
            (Err(e), Err(want)) => {
                assert_eq!(e.code(), code::INVALID_ENVIRONMENT, "{args}");
                let msg = e.to_string();
                assert!(
                    msg.contains("CNI_ARGS") && msg.contains(want),
                    "{args}: {msg}"
                );
            }
            (got, want) => panic!("{args}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn each_command_requires_only_its_variables() {
    let only_command = |command: &str| {
        env(
            command,
            &[
                ("CNI_CONTAINERID", ""),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", ""),
                ("CNI_PATH", ""),
            ],
        )
    };
    let cases = [
        ("STATUS", Command::Status, only_command("STATUS"), true),
        ("GC", Command::Gc, only_command("GC"), true),
        ("VERSION", Command::Version, only_command("VERSION"), true),
        ("DEL", Command::Del, env("DEL", &[("CNI_NETNS", "")]), true),
        ("ADD", Command::Add, env("ADD", &[("CNI_NETNS", "")]), false),
        (
            "CHECK",
            Command::Check,
            env("CHECK", &[("CNI_NETNS", "")]),
            false,
        ),
        ("DEL", Command::Del, only_command("DEL"), false),
    ];
    for (name, command, env, valid) in cases {
        assert_eq!(Command::from_env(&env).expect("command"), command);
        let parsed = Invocation::from_env(&env, command);
        assert_eq!(parsed.is_ok(), valid, "{name}: {parsed:?}");
    }
    let full = Invocation::from_env(
        &env("ADD", &[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web")]),
        Command::Add,
    )
    .expect("valid");
    assert_eq!(full.container_id, "4c3f0ab1d2");
    assert_eq!(full.ifname, "eth0");
    assert_eq!(full.netns, "/proc/self/ns/net");
    assert_eq!(full.pod.name.as_deref(), Some("web"));
}

#[test]
fn container_ids_and_interface_names_follow_the_spec() {
    let ids = [
        ("a", true),
        ("4c3f0ab1d2e5", true),
        ("pod_1.a-b", true),
        ("", false),
        ("_a", false),
        ("a/b", false),
        ("a b", false),
    ];
    for (id, ok) in ids {
        assert_eq!(crate::env::check_container_id(id).is_ok(), ok, "{id:?}");
    }
    // Interface names follow skein's one validator (its own table covers the rule).
    assert!(crate::env::check_ifname("eth0").is_ok());
    assert!(crate::env::check_ifname("a/b").is_err());
}

#[test]
fn configuration_keeps_what_skein_does_not_interpret() {
    let conf = NetConf::parse(
        br#"{"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "pods",
             "type": "skein", "mtu": 1420,
             "prevResult": {"cniVersion": "1.0.0", "ips": []},
             "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080}]}}"#,
    )
    .expect("valid");
    assert_eq!(conf.cni_version, CniVersion::V1_0_0);
    assert_eq!(conf.name, "pods");
    assert_eq!(conf.plugin_type, "skein");
    assert_eq!(conf.socket, std::path::Path::new(DEFAULT_SOCKET));
    assert_eq!(
        conf.prev_result,
        Some(json!({"cniVersion": "1.0.0", "ips": []}))
    );
    assert_eq!(
        conf.runtime_config,
        Some(json!({"portMappings": [{"hostPort": 80, "containerPort": 8080}]}))
    );
    assert_eq!(conf.raw["mtu"], 1420);
    assert_eq!(conf.valid_attachments, None);

    let conf = NetConf::parse(
        br#"{"cniVersion": "1.1.0", "name": "pods", "type": "skein", "socket": "/tmp/s.sock"}"#,
    )
    .expect("valid");
    assert_eq!(conf.socket, std::path::Path::new("/tmp/s.sock"));
}

#[test]
fn gc_attachments_are_read_from_both_keys() {
    let a = |id: &str, ifname: &str| Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    };
    let list =
        json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth0"}]);
    let cases = [
        (
            json!({"cni.dev/valid-attachments": list}),
            Some(vec![a("c1", "eth0"), a("c2", "eth0")]),
        ),
        (
            json!({"cni.dev/attachments": list}),
            Some(vec![a("c1", "eth0"), a("c2", "eth0")]),
        ),
        // libcni sends both with the same list: no duplicates.
        (
            json!({"cni.dev/valid-attachments": list, "cni.dev/attachments": list}),
            Some(vec![a("c1", "eth0"), a("c2", "eth0")]),
        ),
        (
            json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
                   "cni.dev/attachments": [{"containerID": "c3", "ifname": "net1"}]}),
            Some(vec![a("c1", "eth0"), a("c3", "net1")]),
        ),
        (json!({"cni.dev/valid-attachments": []}), Some(vec![])),
        (json!({}), None),
    ];
    for (extra, want) in cases {
        let mut conf = json!({"cniVersion": "1.1.0", "name": "skein", "type": "skein"});
        conf.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        let parsed = NetConf::from_value(conf).expect("valid");
        assert_eq!(parsed.valid_attachments, want, "{extra}");
    }
}

fn sample_result() -> AddResult {
    AddResult {
        interfaces: vec![
            Interface {
                name: "skv4c3f0ab1".into(),
                mac: Some("9a:3e:0c:11:22:33".into()),
                mtu: Some(1420),
                ..Interface::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:2a:01:07".into()),
                mtu: Some(1420),
                sandbox: Some("/var/run/netns/cni-1".into()),
                socket_path: Some("/run/vhost.sock".into()),
                pci_id: Some("0000:00:1f.6".into()),
            },
        ],
        ips: vec![
            IpConfig {
                address: "10.42.1.7/24".parse().expect("cidr"),
                gateway: Some("10.42.1.1".parse().expect("ip")),
                interface: Some(1),
            },
            IpConfig {
                address: "fd42::1:7/64".parse().expect("cidr"),
                gateway: None,
                interface: Some(1),
            },
        ],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().expect("cidr"),
            gw: Some("10.42.1.1".parse().expect("ip")),
            mtu: Some(1420),
            advmss: Some(1380),
            priority: Some(100),
            table: Some(254),
            scope: Some(0),
        }],
        dns: Dns {
            nameservers: vec!["10.43.0.10".parse().expect("ip")],
            domain: None,
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        },
    }
}

#[test]
fn results_are_written_in_each_versions_schema() {
    let v1_1 = json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "skv4c3f0ab1", "mac": "9a:3e:0c:11:22:33", "mtu": 1420},
            {"name": "eth0", "mac": "0a:58:0a:2a:01:07", "mtu": 1420,
             "sandbox": "/var/run/netns/cni-1", "socketPath": "/run/vhost.sock",
             "pciID": "0000:00:1f.6"}
        ],
        "ips": [
            {"address": "10.42.1.7/24", "gateway": "10.42.1.1", "interface": 1},
            {"address": "fd42::1:7/64", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.42.1.1", "mtu": 1420, "advmss": 1380,
             "priority": 100, "table": 254, "scope": 0}
        ],
        "dns": {
            "nameservers": ["10.43.0.10"],
            "search": ["default.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5"]
        }
    });
    let v1_0 = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "skv4c3f0ab1", "mac": "9a:3e:0c:11:22:33"},
            {"name": "eth0", "mac": "0a:58:0a:2a:01:07", "sandbox": "/var/run/netns/cni-1"}
        ],
        "ips": [
            {"address": "10.42.1.7/24", "gateway": "10.42.1.1", "interface": 1},
            {"address": "fd42::1:7/64", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.1.1"}],
        "dns": {
            "nameservers": ["10.43.0.10"],
            "search": ["default.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5"]
        }
    });
    let cases = [(CniVersion::V1_1_0, v1_1), (CniVersion::V1_0_0, v1_0)];
    for (version, golden) in cases {
        assert_eq!(sample_result().to_json(version), golden, "{version}");
    }
    let minimal = AddResult {
        ips: vec![IpConfig {
            address: "10.42.1.7/24".parse().expect("cidr"),
            gateway: None,
            interface: None,
        }],
        ..AddResult::default()
    };
    assert_eq!(
        minimal.to_json(CniVersion::V1_0_0),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.42.1.7/24"}]}),
        "empty lists and DNS are left out"
    );
}

#[test]
fn a_result_reads_back_from_its_json() {
    let result = sample_result();
    let read = AddResult::from_json(&result.to_json(CniVersion::V1_1_0)).expect("reads back");
    assert_eq!(read, result);
    assert!(AddResult::from_json(&json!({"ips": [{"address": "not a cidr"}]})).is_err());
}

#[test]
fn a_result_must_point_at_its_own_interfaces() {
    let mut result = sample_result();
    assert_eq!(result.check(), Ok(()));
    result.ips[1].interface = Some(2);
    let problem = result.check().expect_err("index 2 of 2 interfaces");
    assert!(
        problem.contains("ips[1]") && problem.contains("interface 2"),
        "{problem}"
    );
}

#[test]
fn error_objects_carry_code_msg_and_details() {
    let cases = [
        (
            CniError::TryAgainLater("skein daemon is not running".into()),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "skein daemon is not running"}),
        ),
        (
            CniError::Custom {
                code: 110,
                msg: "no free address in 10.42.1.0/24".into(),
                details: "254 of 254 leased".into(),
            },
            json!({"cniVersion": "1.0.0", "code": 110, "msg": "no free address in 10.42.1.0/24",
                   "details": "254 of 254 leased"}),
        ),
        (
            CniError::env("CNI_IFNAME", "is not set"),
            json!({"cniVersion": "1.0.0", "code": 4,
                   "msg": "invalid environment variable CNI_IFNAME: is not set"}),
        ),
    ];
    for (error, golden) in cases {
        let object = serde_json::to_value(error.to_object("1.0.0")).expect("serializes");
        assert_eq!(object, golden);
    }
    let codes = [
        (
            CniError::IncompatibleVersion {
                requested: "0.4.0".into(),
            },
            1,
        ),
        (
            CniError::UnsupportedField {
                key: "ipam".into(),
                value: "{}".into(),
                reason: String::new(),
            },
            2,
        ),
        (CniError::UnknownContainer(String::new()), 3),
        (CniError::Io(String::new()), 5),
        (
            CniError::Decoding {
                what: String::new(),
                problem: String::new(),
            },
            6,
        ),
        (CniError::config("name", ""), 7),
        (CniError::NotAvailable(String::new()), 50),
        (CniError::NotAvailableImpaired(String::new()), 51),
    ];
    for (error, code) in codes {
        assert_eq!(error.code(), code, "{error:?}");
    }
}

/// A handler that must not be reached: the requests below fail in decoding.
#[derive(Debug)]
struct Unreachable;

impl Handler for Unreachable {
    async fn add(&self, _: AddRequest) -> Result<AddResult, CniError> {
        panic!("add reached")
    }
    async fn del(&self, _: DelRequest) -> Result<(), CniError> {
        panic!("del reached")
    }
    async fn check(&self, _: CheckRequest) -> Result<(), CniError> {
        panic!("check reached")
    }
    async fn status(&self) -> Result<(), CniError> {
        panic!("status reached")
    }
    async fn gc(&self, _: GcRequest) -> Result<(), CniError> {
        panic!("gc reached")
    }
}

#[tokio::test]
async fn the_daemon_refuses_requests_it_cannot_trust() {
    let request = |command: &str, extra: Value| {
        let mut request = json!({
            "v": 1, "command": command, "containerId": "4c3f", "ifname": "eth0",
            "netns": "/var/run/netns/x",
            "config": {"cniVersion": "1.0.0", "name": "skein", "type": "skein"}
        });
        request
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        request.to_string()
    };
    let cases = [
        (
            "not json".to_string(),
            code::DECODING_FAILURE,
            "the plugin's request",
        ),
        (
            request("ADD", json!({"v": 2})),
            code::PROTOCOL,
            "protocol 2",
        ),
        (
            request("ADD", json!({})),
            code::INVALID_ENVIRONMENT,
            "CNI_NETNS",
        ),
        (
            request("CHECK", json!({"netnsFd": true})),
            code::IO_FAILURE,
            "lost",
        ),
        (
            request("DEL", json!({"ifname": "a:b"})),
            code::INVALID_ENVIRONMENT,
            "CNI_IFNAME",
        ),
        (
            request("DEL", json!({"containerId": ""})),
            code::INVALID_ENVIRONMENT,
            "CNI_CONTAINERID",
        ),
        (
            request("GC", json!({})),
            code::INVALID_NETWORK_CONFIG,
            "`cni.dev/valid-attachments` is missing",
        ),
        (
            request(
                "ADD",
                json!({"config": {"cniVersion": "0.4.0", "name": "x", "type": "skein"}}),
            ),
            code::INCOMPATIBLE_VERSION,
            "0.4.0",
        ),
        (
            request(
                "ADD",
                json!({"config": {"cniVersion": "1.0.0", "name": "skein", "type": "skein",
                    "runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}}}),
            ),
            code::INVALID_NETWORK_CONFIG,
            "`runtimeConfig.portMappings[0].hostPort` must be a port from 1 to 65535, found 70000",
        ),
    ];
    for (line, code, names) in cases {
        let response = server::answer(&Unreachable, line.as_bytes(), Vec::new()).await;
        let error = response.error.unwrap_or_else(|| panic!("{line}: no error"));
        assert_eq!(error.code, code, "{line}: {error:?}");
        assert!(
            error.msg.contains(names),
            "{line}: {:?} should name {names:?}",
            error.msg
        );
        assert!(response.output.is_none());
    }
    let version = server::answer(
        &Unreachable,
        request("VERSION", json!({})).as_bytes(),
        Vec::new(),
    )
    .await;
    assert_eq!(
        version.output,
        Some(json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
    );
}

/// A daemon that cannot serve pods yet: STATUS says so; nothing else is reached.
struct NotYet;

impl Handler for NotYet {
    async fn add(&self, _: AddRequest) -> Result<AddResult, CniError> {
        panic!("add reached")
    }
    async fn del(&self, _: DelRequest) -> Result<(), CniError> {
        panic!("del reached")
    }
    async fn check(&self, _: CheckRequest) -> Result<(), CniError> {
        panic!("check reached")
    }
    async fn status(&self) -> Result<(), CniError> {
        Err(CniError::NotAvailable("no pod CIDR yet".into()))
    }
    async fn gc(&self, _: GcRequest) -> Result<(), CniError> {
        panic!("gc reached")
    }
}

#[tokio::test]
async fn the_socket_counts_requests_by_verb_and_result_and_times_them() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cni.sock");
    let listener = bind(&path).expect("bind");
    let metrics = skein_metrics::Metrics::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(serve(
        listener,
        std::sync::Arc::new(NotYet),
        RequestMetrics::register(&metrics),
        cancel.clone(),
    ));
    let config = json!({"cniVersion": "1.1.0", "name": "skein", "type": "skein"});
    for command in ["STATUS", "STATUS", "VERSION"] {
        let line = json!({"v": 1, "command": command, "config": config}).to_string() + "\n";
        let path = path.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut conn = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            conn.write_all(line.as_bytes()).expect("write");
            let mut answer = String::new();
            conn.read_to_string(&mut answer).expect("read");
            answer
        })
        .await
        .expect("client");
        assert!(!answer.is_empty(), "{command}: no answer");
    }
    cancel.cancel();
    serving.await.expect("served");
    let text = metrics.encode().expect("encodes");
    for line in [
        "skein_cni_requests_total{verb=\"status\",result=\"error\"} 2",
        "skein_cni_requests_total{verb=\"version\",result=\"ok\"} 1",
        "skein_cni_request_duration_seconds_count{verb=\"status\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(
        text.contains("skein_cni_request_duration_seconds_bucket{verb=\"status\",le=\"+Inf\"} 2"),
        "{text}"
    );
}

#[test]
fn a_request_names_its_verb_for_the_metrics() {
    for (line, verb) in [
        (r#"{"v":1,"command":"ADD"}"#, "add"),
        (r#"{"v":1,"command":"GC"}"#, "gc"),
        (r#"{"v":1,"command":"REBOOT"}"#, "unknown"),
        ("not json", "unknown"),
    ] {
        assert_eq!(server::requested_verb(line.as_bytes()), verb, "{line}");
    }
}

#[test]
fn port_mappings_are_read_as_runtimes_send_them() {
    let mapping = |host_port, container_port, protocol, host_ip: Option<&str>| PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip: host_ip.map(|ip| ip.parse().expect("address")),
    };
    let cases = [
        (json!(null), vec![]),
        (json!({}), vec![]),
        (json!({"bandwidth": {"ingressRate": 1}}), vec![]),
        (json!({"portMappings": null}), vec![]),
        (json!({"portMappings": []}), vec![]),
        // containerd: lower case, an unset hostIP as "".
        (
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
            ]}),
            vec![
                mapping(8080, 80, Protocol::Tcp, None),
                mapping(5353, 53, Protocol::Udp, None),
            ],
        ),
        // As Kubernetes spells the protocol; no protocol is TCP; a host IP of either family.
        (
            json!({"portMappings": [
                {"hostPort": 9000, "containerPort": 9000, "protocol": "SCTP"},
                {"hostPort": 443, "containerPort": 8443, "hostIP": "198.18.0.11"},
                {"hostPort": 443, "containerPort": 8443, "protocol": "", "hostIP": "fd00::11"},
                {"hostPort": 80, "containerPort": 80, "protocol": "Udp", "hostIP": "0.0.0.0"}
            ]}),
            vec![
                mapping(9000, 9000, Protocol::Sctp, None),
                mapping(443, 8443, Protocol::Tcp, Some("198.18.0.11")),
                mapping(443, 8443, Protocol::Tcp, Some("fd00::11")),
                mapping(80, 80, Protocol::Udp, Some("0.0.0.0")),
            ],
        ),
        // Keys skein does not use are left alone.
        (
            json!({"portMappings": [{"hostPort": 1, "containerPort": 65535, "name": "x"}]}),
            vec![mapping(1, 65535, Protocol::Tcp, None)],
        ),
    ];
    for (runtime_config, want) in cases {
        assert_eq!(
            parse_port_mappings(Some(&runtime_config)).expect("valid"),
            want,
            "{runtime_config}"
        );
    }
    assert_eq!(parse_port_mappings(None).expect("none"), vec![]);
}

#[test]
fn a_bad_port_mapping_names_its_field_and_value() {
    let one = |item: Value| json!({"portMappings": [{"hostPort": 80, "containerPort": 80}, item]});
    let cases = [
        (json!([]), "`runtimeConfig` must be an object, found a list"),
        (
            json!({"portMappings": {"hostPort": 80}}),
            "`runtimeConfig.portMappings` must be a list",
        ),
        (
            one(json!("80:80")),
            "`runtimeConfig.portMappings[1]` must be an object, found a string",
        ),
        (
            one(json!({"hostPort": 0, "containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` must be a port from 1 to 65535, found 0",
        ),
        (
            one(json!({"hostPort": 65536, "containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` must be a port from 1 to 65535, found 65536",
        ),
        (
            one(json!({"hostPort": -1, "containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` must be a port from 1 to 65535, found -1",
        ),
        (
            one(json!({"hostPort": 80.5, "containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` must be a port from 1 to 65535, found 80.5",
        ),
        (
            one(json!({"hostPort": "80", "containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` must be a port from 1 to 65535, found a \
             string",
        ),
        (
            one(json!({"containerPort": 80})),
            "`runtimeConfig.portMappings[1].hostPort` is missing",
        ),
        (
            one(json!({"hostPort": 81})),
            "`runtimeConfig.portMappings[1].containerPort` is missing",
        ),
        (
            one(json!({"hostPort": 81, "containerPort": 0})),
            "`runtimeConfig.portMappings[1].containerPort` must be a port from 1 to 65535, found 0",
        ),
        (
            one(json!({"hostPort": 81, "containerPort": 80, "protocol": "icmp"})),
            "`runtimeConfig.portMappings[1].protocol` must be tcp, udp or sctp, found \"icmp\"",
        ),
        (
            one(json!({"hostPort": 81, "containerPort": 80, "protocol": 6})),
            "`runtimeConfig.portMappings[1].protocol` must be a string, found a number",
        ),
        (
            one(json!({"hostPort": 81, "containerPort": 80, "hostIP": "node-1"})),
            "`runtimeConfig.portMappings[1].hostIP` must be an IP address or empty, found \
             \"node-1\"",
        ),
        (
            one(json!({"hostPort": 80, "containerPort": 8080, "protocol": "TCP"})),
            "`runtimeConfig.portMappings[1]` repeats runtimeConfig.portMappings[0]: hostPort \
             80/tcp twice",
        ),
    ];
    for (runtime_config, want) in cases {
        let err = parse_port_mappings(Some(&runtime_config)).expect_err("invalid");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG, "{runtime_config}");
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "{runtime_config}: {msg:?} should contain {want:?}"
        );
    }
    // The same port on two host IPs, or over two protocols, is two claims.
    let two = json!({"portMappings": [
        {"hostPort": 80, "containerPort": 80, "hostIP": "127.0.0.1"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "198.18.0.11"},
        {"hostPort": 80, "containerPort": 80, "protocol": "udp", "hostIP": "198.18.0.11"}
    ]});
    assert_eq!(parse_port_mappings(Some(&two)).expect("valid").len(), 3);
}

#[test]
fn port_mappings_are_read_for_add_only_so_a_del_always_gets_through() {
    let conf = NetConf::parse(
        br#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein",
             "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}"#,
    )
    .expect("the configuration itself is valid");
    assert!(conf.port_mappings().is_err());
    // The plugin refuses the ADD itself, before reaching for the daemon or the namespace.
    let stdin = r#"{"cniVersion": "1.1.0", "name": "skein", "type": "skein",
        "socket": "/nonexistent/skein.sock",
        "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "gre"}]}}"#;
    let (out, ok) = run_json(&env("ADD", &[]), stdin);
    assert!(!ok);
    assert_eq!(out["code"], 7, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("runtimeConfig.portMappings[0].protocol")),
        "{out}"
    );
}

#[test]
fn a_port_mapping_prints_as_people_write_it() {
    let mut m = PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Protocol::Udp,
        host_ip: None,
    };
    assert_eq!(m.to_string(), "8080/udp -> 80");
    m.host_ip = Some("198.18.0.11".parse().expect("v4"));
    assert_eq!(m.to_string(), "198.18.0.11:8080/udp -> 80");
    m.host_ip = Some("fd00::11".parse().expect("v6"));
    assert_eq!(m.to_string(), "[fd00::11]:8080/udp -> 80");
}

/// Answers DEL, and ADD with the mappings it was given (as the interface's name).
struct Recording;

impl Handler for Recording {
    async fn add(&self, request: AddRequest) -> Result<AddResult, CniError> {
        Ok(AddResult {
            interfaces: request
                .port_mappings
                .iter()
                .map(|m| Interface {
                    name: m.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
    async fn del(&self, _: DelRequest) -> Result<(), CniError> {
        Ok(())
    }
    async fn check(&self, _: CheckRequest) -> Result<(), CniError> {
        panic!("check reached")
    }
    async fn status(&self) -> Result<(), CniError> {
        panic!("status reached")
    }
    async fn gc(&self, _: GcRequest) -> Result<(), CniError> {
        panic!("gc reached")
    }
}

#[tokio::test]
async fn the_daemon_hands_add_its_mappings_and_never_fails_a_del_over_them() {
    let request = |command: &str, mappings: Value| {
        json!({
            "v": 1, "command": command, "containerId": "4c3f", "ifname": "eth0",
            "netns": "/proc/self/ns/net", "netnsFd": true,
            "config": {"cniVersion": "1.1.0", "name": "skein", "type": "skein",
                       "runtimeConfig": {"portMappings": mappings}}
        })
        .to_string()
    };
    let netns = || {
        vec![std::os::fd::OwnedFd::from(
            std::fs::File::open("/proc/self/ns/net").expect("netns"),
        )]
    };
    let add = request(
        "ADD",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": ""}]),
    );
    let response = server::answer(&Recording, add.as_bytes(), netns()).await;
    assert_eq!(response.error, None);
    assert_eq!(
        response.output.expect("a result")["interfaces"][0]["name"],
        "8080/tcp -> 80"
    );
    let del = request("DEL", json!([{"hostPort": 0}]));
    let response = server::answer(&Recording, del.as_bytes(), netns()).await;
    assert_eq!(
        response.error, None,
        "a DEL is not refused over its mappings"
    );
}
