-- IPAM: the pod addresses handed out on this node, and where the round-robin stands.
--
-- A lease is taken and given back in one transaction each, so there is no "reserved" state:
-- an ADD that dies after its lease committed either runs again (and gets the same lease back),
-- or is followed by a DEL, or its container is gone and the garbage collection frees it.

-- One row per address held by a pod interface. A CNI attachment is (container_id, ifname); it
-- holds at most one address per family, so a dual-stack pod has two rows.
CREATE TABLE leases (
    -- The primary key: the database itself refuses to hand out an address twice. Always
    -- written in Rust's canonical text form (RFC 5952 for IPv6), so equal addresses are equal
    -- text.
    address       TEXT PRIMARY KEY NOT NULL,
    cidr          TEXT NOT NULL,  -- the pod CIDR it was taken from, network form: 10.42.1.0/24
    family        INTEGER NOT NULL CHECK (family IN (4, 6)),
    container_id  TEXT NOT NULL CHECK (container_id <> ''),
    ifname        TEXT NOT NULL CHECK (ifname <> ''),
    -- The pod, as the ADD named it; empty when the runtime did not say.
    pod_namespace TEXT NOT NULL,
    pod_name      TEXT NOT NULL,
    pod_uid       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,  -- unix seconds
    UNIQUE (container_id, ifname, family)
) STRICT;

-- The address last handed out per pod CIDR: the next lease starts after it, so an address
-- just released is the last to come back (as CNI host-local does).
CREATE TABLE ipam_cursor (
    cidr         TEXT PRIMARY KEY NOT NULL,
    last_address TEXT NOT NULL
) STRICT;
