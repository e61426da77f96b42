//! Reading skein's table back: chains (base or not), each rule's handle and skein fingerprint,
//! sets and their elements as canonical bytes ([`super::element_bytes`]'s form), and the
//! ruleset's generation, from `NFT_MSG_GET*` requests and dumps.

use std::collections::BTreeSet;

use super::Netlink;
use super::consts::*;
use super::objects::{self, fingerprint_of};
use super::wire::{self, Msg, be_u32, be_u64, find, nft_attrs, nft_type, string};
use crate::NftError;
use crate::model::{ChainDump, RuleDump, SetDump, TableDump};

fn get(kind: u16, flags: u16, seq: u32) -> Msg {
    Msg::new(nft_type(kind), flags, seq, NFPROTO_INET, 0)
}

fn refused(what: &str, errno: i32) -> NftError {
    NftError::Dump(format!("{what}: {}", super::io::describe_errno(errno)))
}

/// A set as a dump describes it, enough to decode its elements.
pub(crate) struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
}

impl SetInfo {
    fn from_payload(payload: &[u8]) -> Option<Self> {
        let mut name = None;
        let (mut flags, mut key_type) = (0, 0);
        for (ty, v) in nft_attrs(payload) {
            match ty {
                NFTA_SET_NAME => name = Some(string(v)),
                NFTA_SET_FLAGS => flags = be_u32(v)?,
                NFTA_SET_KEY_TYPE => key_type = be_u32(v)?,
                _ => {}
            }
        }
        Some(Self {
            name: name?,
            flags,
            key_type,
        })
    }

    pub(crate) fn shape(&self) -> objects::Shape {
        objects::Shape {
            interval: self.flags & NFT_SET_INTERVAL != 0,
            // A concatenated key type holds more than one datatype id of TYPE_BITS.
            concat: self.key_type >> TYPE_BITS != 0,
        }
    }
}

impl Netlink {
    /// Every table in the ruleset, as (family, name): names only, nothing of their content
    /// (the service proxy looks for kube-proxy's by name and reads nothing else).
    pub fn table_names(&mut self) -> Result<Vec<(String, String)>, NftError> {
        let tables = match self
            .channel
            .dump(|seq| Msg::new(nft_type(NFT_MSG_GETTABLE), NLM_F_DUMP, seq, 0, 0))?
        {
            Ok(r) => r,
            Err(e) => return Err(refused("listing tables", e)),
        };
        Ok(tables
            .iter()
            .filter_map(|r| {
                let family = match r.payload.first()? {
                    1 => "inet",
                    2 => "ip",
                    3 => "arp",
                    5 => "netdev",
                    7 => "bridge",
                    10 => "ip6",
                    _ => "unknown",
                };
                let name = find(r.payload.get(4..)?, NFTA_TABLE_NAME).map(string)?;
                Some((family.to_string(), name))
            })
            .collect())
    }

    pub(crate) fn table_exists(&mut self) -> Result<bool, NftError> {
        let seq = self.channel.next_seq();
        let mut m = get(NFT_MSG_GETTABLE, 0, seq);
        m.str(NFTA_TABLE_NAME, self.table);
        match self.channel.request(m, seq)? {
            Ok(_) => Ok(true),
            Err(libc::ENOENT) => Ok(false),
            Err(e) => Err(refused("reading the table", e)),
        }
    }

    /// One set's description; `None` when it does not exist.
    pub(crate) fn set_info(&mut self, name: &str) -> Result<Option<SetInfo>, NftError> {
        let seq = self.channel.next_seq();
        let mut m = get(NFT_MSG_GETSET, 0, seq);
        m.str(NFTA_SET_TABLE, self.table).str(NFTA_SET_NAME, name);
        match self.channel.request(m, seq)? {
            Ok(r) => Ok(SetInfo::from_payload(&r.payload)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(refused(&format!("reading set {name}"), e)),
        }
    }

    pub(crate) fn read_generation(&mut self) -> Result<u32, NftError> {
        let seq = self.channel.next_seq();
        let m = Msg::new(nft_type(NFT_MSG_GETGEN), 0, seq, 0, 0);
        match self.channel.request(m, seq)? {
            Ok(r) => nft_attrs(&r.payload)
                .find(|(t, _)| *t == NFTA_GEN_ID)
                .and_then(|(_, v)| be_u32(v))
                .ok_or_else(|| NftError::Dump("a generation reply without an id".into())),
            Err(e) => Err(refused("reading the generation", e)),
        }
    }

    /// Rules of the table (or of one chain), by chain, in order.
    fn rules(&mut self, chain: Option<&str>) -> Result<Vec<(String, RuleDump)>, NftError> {
        let replies = self.channel.dump(|seq| {
            let mut m = get(NFT_MSG_GETRULE, NLM_F_DUMP, seq);
            m.str(NFTA_RULE_TABLE, self.table);
            if let Some(c) = chain {
                m.str(NFTA_RULE_CHAIN, c);
            }
            m
        })?;
        let replies = match replies {
            Ok(r) => r,
            Err(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(refused("listing rules", e)),
        };
        let mut out = Vec::new();
        for r in replies
            .iter()
            .filter(|r| r.kind == nft_type(NFT_MSG_NEWRULE))
        {
            let (mut chain, mut handle, mut fingerprint) = (None, None, None);
            for (ty, v) in nft_attrs(&r.payload) {
                match ty {
                    NFTA_RULE_TABLE if string(v) != self.table => chain = None,
                    NFTA_RULE_CHAIN => chain = Some(string(v)),
                    NFTA_RULE_HANDLE => handle = be_u64(v),
                    NFTA_RULE_USERDATA => fingerprint = fingerprint_of(v),
                    _ => {}
                }
            }
            if let (Some(chain), Some(handle)) = (chain, handle) {
                out.push((
                    chain,
                    RuleDump {
                        handle,
                        fingerprint,
                    },
                ));
            }
        }
        Ok(out)
    }

    pub(crate) fn read_chain(&mut self, name: &str) -> Result<Option<ChainDump>, NftError> {
        let seq = self.channel.next_seq();
        let mut m = get(NFT_MSG_GETCHAIN, 0, seq);
        m.str(NFTA_CHAIN_TABLE, self.table)
            .str(NFTA_CHAIN_NAME, name);
        let base = match self.channel.request(m, seq)? {
            Ok(r) => find(r.payload.get(4..).unwrap_or_default(), NFTA_CHAIN_HOOK).is_some(),
            Err(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(refused(&format!("reading chain {name}"), e)),
        };
        let rules = self.rules(Some(name))?;
        Ok(Some(ChainDump {
            base,
            rules: rules.into_iter().map(|(_, r)| r).collect(),
        }))
    }

    /// The table, read until two generations around the reads agree (a consistent picture).
    pub(crate) fn read_table(&mut self) -> Result<Option<TableDump>, NftError> {
        for _ in 0..10 {
            let generation = self.read_generation()?;
            if !self.table_exists()? {
                return Ok(None);
            }
            let mut dump = TableDump {
                generation,
                ..TableDump::default()
            };
            let chains = match self
                .channel
                .dump(|seq| get(NFT_MSG_GETCHAIN, NLM_F_DUMP, seq))?
            {
                Ok(r) => r,
                Err(e) => return Err(refused("listing chains", e)),
            };
            for r in &chains {
                let attrs = r.payload.get(4..).unwrap_or_default();
                if find(attrs, NFTA_CHAIN_TABLE).map(string).as_deref() != Some(self.table) {
                    continue;
                }
                if let Some(name) = find(attrs, NFTA_CHAIN_NAME).map(string) {
                    dump.chains.insert(
                        name,
                        ChainDump {
                            base: find(attrs, NFTA_CHAIN_HOOK).is_some(),
                            rules: Vec::new(),
                        },
                    );
                }
            }
            for (chain, rule) in self.rules(None)? {
                dump.chains.entry(chain).or_default().rules.push(rule);
            }
            let sets = match self.channel.dump(|seq| {
                let mut m = get(NFT_MSG_GETSET, NLM_F_DUMP, seq);
                m.str(NFTA_SET_TABLE, self.table);
                m
            })? {
                Ok(r) => r,
                Err(libc::ENOENT) => Vec::new(),
                Err(e) => return Err(refused("listing sets", e)),
            };
            let infos: Vec<SetInfo> = sets
                .iter()
                .filter(|r| {
                    find(r.payload.get(4..).unwrap_or_default(), NFTA_SET_TABLE)
                        .map(string)
                        .as_deref()
                        == Some(self.table)
                })
                .filter_map(|r| SetInfo::from_payload(&r.payload))
                .collect();
            for info in infos {
                let elements = self.stable_elements(&info)?;
                dump.sets.insert(info.name, SetDump { elements });
            }
            if self.read_generation()? == generation {
                return Ok(Some(dump));
            }
        }
        Err(NftError::Dump(
            "the ruleset kept changing while skein's table was read".into(),
        ))
    }

    /// A set's elements, read until two reads agree: a hash set walk during the kernel's
    /// deferred resize (right after a large insert) can skip or repeat elements, and nothing in
    /// the dump says so. Dynamic sets are read once.
    pub(crate) fn stable_elements(
        &mut self,
        info: &SetInfo,
    ) -> Result<BTreeSet<Vec<u8>>, NftError> {
        let mut last = self.read_elements(info)?;
        // A set the packet path adds to never holds still; one read is the best there is.
        if info.flags & NFT_SET_EVAL != 0 {
            return Ok(last);
        }
        for _ in 0..10 {
            let again = self.read_elements(info)?;
            if again == last {
                return Ok(again);
            }
            last = again;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(NftError::Dump(format!(
            "the elements of set {} kept changing while they were read",
            info.name
        )))
    }

    fn read_elements(&mut self, info: &SetInfo) -> Result<BTreeSet<Vec<u8>>, NftError> {
        let replies = match self.channel.dump(|seq| {
            let mut m = get(NFT_MSG_GETSETELEM, NLM_F_DUMP, seq);
            m.str(NFTA_SET_ELEM_LIST_TABLE, self.table)
                .str(NFTA_SET_ELEM_LIST_SET, &info.name);
            m
        })? {
            Ok(r) => r,
            Err(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(refused(&format!("listing set {}", info.name), e)),
        };
        let mut raw = Vec::new();
        for r in &replies {
            let attrs = r.payload.get(4..).unwrap_or_default();
            let Some(list) = find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, elem) in wire::attrs(list) {
                raw.push(RawElement::parse(elem));
            }
        }
        let shape = info.shape();
        if shape.interval && !shape.concat {
            Ok(pair_ranges(raw, info.key_type == TYPE_MARK))
        } else {
            Ok(raw
                .iter()
                .map(|e| {
                    let end = shape.interval.then_some(e.key_end.as_deref()).flatten();
                    objects::canonical(&e.key, end, e.verdict(), e.data.as_deref())
                })
                .collect())
        }
    }
}

struct RawElement {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    closing: bool,
    code: Option<i32>,
    chain: Option<String>,
    /// A data map's value.
    data: Option<Vec<u8>>,
}

impl RawElement {
    fn parse(elem: &[u8]) -> Self {
        let value = |ty| {
            find(elem, ty)
                .and_then(|d| find(d, NFTA_DATA_VALUE))
                .map(<[u8]>::to_vec)
        };
        let verdict = find(elem, NFTA_SET_ELEM_DATA).and_then(|d| find(d, NFTA_DATA_VERDICT));
        Self {
            key: value(NFTA_SET_ELEM_KEY).unwrap_or_default(),
            key_end: value(NFTA_SET_ELEM_KEY_END),
            closing: find(elem, NFTA_SET_ELEM_FLAGS)
                .and_then(be_u32)
                .is_some_and(|f| f & NFT_SET_ELEM_INTERVAL_END != 0),
            code: verdict
                .and_then(|v| find(v, NFTA_VERDICT_CODE))
                .and_then(be_u32)
                .map(|c| c as i32),
            chain: verdict
                .and_then(|v| find(v, NFTA_VERDICT_CHAIN))
                .map(string),
            data: value(NFTA_SET_ELEM_DATA),
        }
    }

    fn verdict(&self) -> Option<(i32, Option<&str>)> {
        self.code.map(|c| (c, self.chain.as_deref()))
    }
}

/// A single-field interval set holds a range as two elements, its start and the flagged
/// element after its end: pairs them back into one canonical element each.
fn pair_ranges(mut raw: Vec<RawElement>, host_order: bool) -> BTreeSet<Vec<u8>> {
    let numeric = |k: &[u8]| -> Vec<u8> {
        if host_order && k.len() == 4 {
            u32::from_ne_bytes([k[0], k[1], k[2], k[3]])
                .to_be_bytes()
                .to_vec()
        } else {
            k.to_vec()
        }
    };
    // At one key, the end of a range comes before the start of the next.
    raw.sort_by(|a, b| {
        numeric(&a.key)
            .cmp(&numeric(&b.key))
            .then(b.closing.cmp(&a.closing))
    });
    let mut out = BTreeSet::new();
    let mut open: Option<&RawElement> = None;
    for e in &raw {
        if e.closing {
            if let Some(start) = open.take() {
                out.insert(objects::canonical(
                    &start.key,
                    Some(&e.key),
                    start.verdict(),
                    start.data.as_deref(),
                ));
            }
        } else if let Some(start) = open.replace(e) {
            out.insert(objects::canonical(
                &start.key,
                Some(&vec![0; start.key.len()]),
                start.verdict(),
                start.data.as_deref(),
            ));
        }
    }
    if let Some(start) = open {
        out.insert(objects::canonical(
            &start.key,
            Some(&vec![0; start.key.len()]),
            start.verdict(),
            start.data.as_deref(),
        ));
    }
    out
}
