-- What the node keeps across restarts. Later schema versions add the IPAM leases and the
-- overlay's identity here; every change is a new numbered file, never an edit of an old one.

-- One row per key: facts about this state directory itself.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- Every start of the daemon, so a crash loop is visible on the status page.
CREATE TABLE daemon_starts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at INTEGER NOT NULL,  -- unix seconds
    pid        INTEGER NOT NULL,
    version    TEXT NOT NULL,
    clean_stop INTEGER NOT NULL DEFAULT 0 CHECK (clean_stop IN (0, 1))
) STRICT;
