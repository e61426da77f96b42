-- hostPort: the port mappings a CNI ADD asked for (`runtimeConfig.portMappings`), per CNI
-- attachment (container_id, ifname). Written in the ADD's lease transaction and removed in the
-- transaction that frees the attachment's leases (DEL, garbage collection), so a mapping never
-- outlives the addresses it forwards to, and a refused ADD leaves none.

CREATE TABLE port_mappings (
    -- The order of arrival: when two attachments claim one host port, the earlier keeps it.
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    container_id   TEXT NOT NULL CHECK (container_id <> ''),
    ifname         TEXT NOT NULL CHECK (ifname <> ''),
    host_port      INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    container_port INTEGER NOT NULL CHECK (container_port BETWEEN 1 AND 65535),
    protocol       TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp', 'sctp')),
    -- '' for any of the node's addresses; else Rust's canonical text of the address.
    host_ip        TEXT NOT NULL,
    UNIQUE (container_id, ifname, host_port, protocol, host_ip)
) STRICT;

CREATE INDEX port_mappings_attachment ON port_mappings (container_id, ifname);
