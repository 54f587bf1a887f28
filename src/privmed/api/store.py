"""API keys and the hash-chained audit log, in any SQLAlchemy database (SQLite by default).

Keys: ``pmk_<key id>_<secret>``. Only the key id, the role, a random salt and
HMAC-SHA256(salt, secret) are stored; the key itself is shown once, at creation. Keys expire (90 days
unless ``expires_days=None`` is asked for) and rotate: ``rotate_key`` makes a new key with the same role
and label and lets the old one work for a grace period. ``Store(url, readonly=True)`` is the auditor's
view: it reads and verifies but cannot write.

Audit log: append-only rows. Each row stores ``prev_hash`` (the previous row's hash, 64 zeros for
the first) and ``row_hash = sha256(prev_hash + canonical JSON of the row)``; a one-row head table
holds the count and last hash, written in the same transaction. ``verify`` recomputes the chain and
names the first edited, inserted or deleted row.

Several writers (uvicorn workers, replicas) share one chain, so appends are serialised by the
database itself, not by a Python lock: ``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite (the write lock is taken before the last row is read). Without that, two writers read the
same last row and one of them fails or forks the chain. Rows hold who (key id), when, what (method,
path, status, latency), input SHA-256s, model id and version (weights SHA-256), epsilon and the
output (labels and probabilities); never pixels, file names or patient identifiers.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Float,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from privmed.config import settings
from privmed.errors import PrivmedError

ROLES = ("clinician", "auditor", "admin")
MAX_KEY_DAYS = 3650  # the longest lifetime a key may be given (the API, the CLI and the store check it)
GENESIS = "0" * 64
KEY_PREFIX = "pmk"
# pg_advisory_xact_lock key of the audit chain: a fixed 63-bit number (sha256 of the name)
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"privmed.audit_log").digest()[:8], "big") >> 1


def default_db_url() -> str:
    s = settings()
    if s.db_url:
        return s.db_url.get_secret_value()
    home = s.home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'privmed.db'}"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(40))
    revoked_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # ISO UTC; NULL = never expires (explicitly asked for, or a key made before keys expired)
    expires_at: Mapped[str | None] = mapped_column(String(40), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    model_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    output: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


# the append's and the key lookup's statements, built once: building them per call (bind parameters, cache
# keys) cost more CPU than running them
_ROWS, _HEAD, _KEYS = AuditRow.__table__, AuditHead.__table__, ApiKey.__table__
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_LAST_ROW = select(_ROWS.c.seq, _ROWS.c.row_hash).order_by(_ROWS.c.seq.desc()).limit(1)
_INSERT_ROW = insert(_ROWS)
_BUMP_HEAD = (update(_HEAD).where(_HEAD.c.id == 1)
              .values(count=_HEAD.c.count + 1, last_seq=bindparam("new_seq"), last_hash=bindparam("new_hash")))
_INSERT_HEAD = insert(_HEAD)
_KEY_BY_ID = select(_KEYS.c.key_id, _KEYS.c.role, _KEYS.c.salt, _KEYS.c.key_hash, _KEYS.c.revoked_at,
                    _KEYS.c.expires_at).where(_KEYS.c.key_id == bindparam("key_id"))

HASHED_FIELDS = ("seq", "ts", "key_id", "role", "method", "path", "status", "latency_ms", "model_id",
                 "model_version", "epsilon", "input_sha256", "output", "detail")


def canonical(row: dict) -> str:
    return json.dumps({k: row.get(k) for k in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, row: dict) -> str:
    return hashlib.sha256((prev_hash + canonical(row)).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Principal:
    key_id: str | None
    role: str


class ExpiredKey(PrivmedError):
    """A correct key past its expiry (only its holder learns that it expired, and when)."""

    def __init__(self, key_id: str, role: str, expires_at: str):
        self.key_id, self.role, self.expires_at = key_id, role, expires_at
        super().__init__(f"expired API key (expired {expires_at}): ask an admin to rotate it")


class UnknownKey(PrivmedError, LookupError):
    pass


class RevokedKey(PrivmedError):
    pass


class ReadOnlyStore(PrivmedError):
    pass


def _hash_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _in_hours(hours: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat(timespec="milliseconds")


def _expired(expires_at: str | None) -> bool:
    return expires_at is not None and dt.datetime.fromisoformat(expires_at) <= dt.datetime.now(dt.UTC)


def _check_days(expires_days: float | None) -> None:
    if expires_days is not None and not 0 < expires_days <= MAX_KEY_DAYS:
        raise ValueError(f"a key's lifetime must be 1 to {MAX_KEY_DAYS} days, got {expires_days}; for a key that never "
                         "expires ask for it explicitly (--never-expires, never_expires)")


def _add_key(s: Session, role: str, label: str | None, expires_days: float | None) -> tuple[str, str]:
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    s.add(ApiKey(key_id=key_id, role=role, label=label, salt=salt, key_hash=_hash_secret(salt, secret),
                 created_at=_now(), expires_at=None if expires_days is None else _in_hours(24 * expires_days)))
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def _key_dict(k: ApiKey) -> dict:
    return {"key_id": k.key_id, "role": k.role, "label": k.label, "created_at": k.created_at,
            "expires_at": k.expires_at, "expired": _expired(k.expires_at), "revoked_at": k.revoked_at}


class Store:
    def __init__(self, url: str | None = None, readonly: bool = False):
        """``readonly`` (auditors): nothing is created or migrated, and appends and key changes raise
        ``ReadOnlyStore``. SQLite opens the file read-only (``mode=ro``, or ``immutable=1`` where no writer
        can be active; see ``_sqlite_ro_connect``). PostgreSQL: every transaction is READ ONLY, but the real
        guard is the database role: the auditor connects as a role granted SELECT only, e.g.
        ``GRANT SELECT ON audit_log, audit_head TO privmed_auditor`` (no INSERT, UPDATE, DELETE)."""
        self.url, self.readonly = url or default_db_url(), readonly
        self.engine = _make_engine(self.url, readonly)
        self.dialect = self.engine.dialect.name
        if not readonly:
            Base.metadata.create_all(self.engine)
            _migrate(self.engine)
        self._lock = threading.Lock()  # one writer per process; the database serialises the processes
        self.reads_never_wait = _reads_never_wait(self.engine)

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyStore("this store is opened read-only (auditor): it cannot append to the audit log or "
                                "change keys; do that with a writable store (the API server's database role)")

    # ---- keys
    def create_key(self, role: str, label: str | None = None, expires_days: float | None = 90) -> tuple[str, str]:
        """(key id, full key). The full key is not stored and cannot be shown again. ``expires_days=None``:
        the key never expires (must be asked for; rotating keys is the safer habit)."""
        if role not in ROLES:
            raise ValueError(f"unknown role '{role}'; choose one of {', '.join(ROLES)}")
        _check_days(expires_days)
        self._writable()
        with Session(self.engine) as s, s.begin():
            return _add_key(s, role, label, expires_days)

    def authenticate(self, key: str | None) -> Principal | None:
        """The key's principal; None for a missing, malformed, unknown, wrong or revoked key. A correct
        key past its ``expires_at`` raises ``ExpiredKey``."""
        if not key:
            return None
        parts = key.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with self.engine.connect() as conn:  # read on every request: a revoked key stops at once
            row = conn.execute(_KEY_BY_ID, {"key_id": parts[1]}).first()
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, _hash_secret(row.salt, parts[2])):
                return None
            if _expired(row.expires_at):
                raise ExpiredKey(row.key_id, row.role, row.expires_at)
            return Principal(row.key_id, row.role)

    def list_keys(self) -> list[dict]:
        with Session(self.engine) as s:
            return [_key_dict(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def key_info(self, key_id: str) -> dict | None:
        """What ``list_keys`` says about one key (never the key or its hash); None if there is none."""
        with Session(self.engine) as s:
            k = s.get(ApiKey, key_id)
            return _key_dict(k) if k is not None else None

    def revoke_key(self, key_id: str) -> bool:
        self._writable()
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or _now()
            return True

    def rotate_key(self, key_id: str, grace_hours: float = 24, expires_days: float | None = 90) -> tuple[str, str]:
        """(new key id, new full key) with the old key's role and label. The old key keeps working for
        ``grace_hours`` more (less if it expires sooner) so that its clients can switch; an expired key
        can be rotated too. Raises ``UnknownKey`` or ``RevokedKey``."""
        if not 0 <= grace_hours <= 24 * 365:
            raise ValueError(f"grace_hours must be between 0 and 8760, got {grace_hours}")
        _check_days(expires_days)
        self._writable()
        with Session(self.engine) as s, s.begin():
            old = s.get(ApiKey, key_id)
            if old is None:
                raise UnknownKey(f"no key with id '{key_id}'; see `privmed keys list`")
            if old.revoked_at is not None:
                raise RevokedKey(f"key '{key_id}' was revoked at {old.revoked_at} and cannot be rotated; create a "
                                 f"new one (`privmed keys create --role {old.role}`)")
            end = _in_hours(grace_hours)
            if old.expires_at is None or dt.datetime.fromisoformat(old.expires_at) > dt.datetime.fromisoformat(end):
                old.expires_at = end
            return _add_key(s, old.role, old.label, expires_days)

    # ---- audit log
    def append(self, **fields) -> dict:
        """Append one row to the chain (retries if another process appended concurrently)."""
        self._writable()
        row = {k: fields.get(k) for k in HASHED_FIELDS if k != "seq"}
        row["ts"] = row.get("ts") or _now()
        for k in ("input_sha256", "output"):
            if row.get(k) is not None and not isinstance(row[k], str):
                row[k] = json.dumps(row[k], sort_keys=True, separators=(",", ":"))
        if row.get("latency_ms") is not None:
            row["latency_ms"] = round(float(row["latency_ms"]), 3)
        if row.get("epsilon") is not None:
            row["epsilon"] = float(row["epsilon"])
        tries = 3 if self.dialect in ("sqlite", "postgresql") else 20
        with self._lock:
            for attempt in range(tries):
                try:
                    return self._append_once(row)
                except (IntegrityError, OperationalError) as e:
                    # serialised dialects never collide; a lock timeout or another dialect's race retries,
                    # a full disk or a lost connection does not get better by retrying at once
                    cause = _write_failure(e)
                    if cause or attempt == tries - 1:
                        cause = cause or f"a lock timeout or {type(e).__name__} from concurrent writers"
                        raise AuditWriteError(f"the audit log could not be written: {cause}") from None
        raise AssertionError("unreachable")

    def _append_once(self, row: dict) -> dict:
        with self.engine.connect().execution_options(privmed_write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(_PG_LOCK, {"k": PG_LOCK_KEY})
            last = conn.execute(_LAST_ROW).first()
            seq = (last.seq if last else 0) + 1
            prev = last.row_hash if last else GENESIS
            full = dict(row, seq=seq)
            h = chain_hash(prev, full)
            conn.execute(_INSERT_ROW, dict(full, prev_hash=prev, row_hash=h))
            if not conn.execute(_BUMP_HEAD, {"new_seq": seq, "new_hash": h}).rowcount:
                conn.execute(_INSERT_HEAD, {"id": 1, "count": 1, "last_seq": seq, "last_hash": h})
        return dict(full, prev_hash=prev, row_hash=h)

    def rows(self, after_seq: int = 0, limit: int = 100) -> list[dict]:
        with Session(self.engine) as s:
            q = select(AuditRow).where(AuditRow.seq > after_seq).order_by(AuditRow.seq).limit(limit)
            return [_row_dict(r) for r in s.scalars(q)]

    def verify(self) -> dict:
        """Recompute the chain. ``ok`` False names the first row that was edited, deleted or inserted."""
        prev, expect, n = GENESIS, 1, 0
        # one snapshot for the head and every row: under READ COMMITTED a row appended between the two
        # reads would look like tampering (SQLite's deferred BEGIN in WAL mode is a snapshot already)
        opts = {"isolation_level": "REPEATABLE READ"} if self.dialect == "postgresql" else {}
        with self.engine.connect().execution_options(**opts) as conn, Session(bind=conn) as s:
            head = s.get(AuditHead, 1)
            for r in s.execute(select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=1000)).scalars():
                d = _row_dict(r)
                if r.seq != expect:
                    return _bad(n, r.seq, f"rows {expect}..{r.seq - 1} are missing (deleted)" if r.seq > expect
                                else f"row {r.seq} is out of order (inserted)")
                if r.prev_hash != prev:
                    return _bad(n, r.seq, f"row {r.seq} does not link to row {r.seq - 1} (a row was replaced)")
                if chain_hash(prev, d) != r.row_hash:
                    return _bad(n, r.seq, f"row {r.seq} was edited (its content does not match its hash)")
                prev, expect, n = r.row_hash, expect + 1, n + 1
        if head is not None and (head.count != n or head.last_hash != prev):
            return _bad(n, n + 1, f"the log ends at row {n} but {head.count} rows were written: "
                                  f"rows {n + 1}..{head.last_seq} are missing (deleted from the end)")
        if head is None and n:
            return _bad(n, None, "the chain head record is missing (deleted)")
        return {"ok": True, "rows": n, "last_hash": prev, "first_bad_seq": None, "problem": None}


def _make_engine(url: str, readonly: bool):
    if url.startswith("sqlite"):
        if readonly:
            return _sqlite_readonly_engine(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
        _sqlite_setup(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True)  # a restarted database server is not an error for the next request
    if readonly:
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _):
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()  # a session SET is undone by a rollback
    return engine


def _migrate(engine) -> None:
    """Add columns that databases made by older versions lack: ``api_keys.expires_at`` (their keys get
    NULL, i.e. no expiry: rotate them to give them one). Of two processes starting at once, the second
    one's duplicate-column error is ignored."""
    def has() -> bool:
        return "expires_at" in {c["name"] for c in inspect(engine).get_columns("api_keys")}

    if has():
        return
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE api_keys ADD COLUMN expires_at VARCHAR(40)"))
    except DBAPIError:
        if not has():
            raise


def _sqlite_readonly_engine(url: str):
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        raise PrivmedError(f"a read-only store needs a SQLite file (sqlite:///PATH), got '{url}'")
    if not Path(path).is_file():
        raise PrivmedError(f"no audit database at {path}: check --db-url (a read-only store never creates one)")
    engine = create_engine("sqlite://", creator=lambda: _sqlite_ro_connect(path), poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn):  # one snapshot per transaction, as in _sqlite_setup
        conn.exec_driver_sql("BEGIN")
    return engine


def _sqlite_ro_connect(path: str) -> sqlite3.Connection:
    """``mode=ro``: reads a WAL database through its shared-memory index (-shm), which it creates when
    missing. Where it cannot (a 0444 file in a 0555 folder), no writer can be active either, so the file is
    opened ``immutable=1`` instead, unless a write-ahead log holds rows not yet merged into it."""
    uri = Path(path).resolve().as_uri()
    try:
        return _probe(sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False,
                                      timeout=60))
    except sqlite3.OperationalError as e:
        if Path(path + "-shm").exists():  # a writer may be active: immutable would read torn pages
            raise PrivmedError(f"cannot open {path} read-only: {e}") from None
    wal = Path(path + "-wal")
    if wal.exists() and wal.stat().st_size:
        raise PrivmedError(f"cannot open {path} read-only: {wal.name} holds rows not yet merged into it and its "
                           "folder is not writable; ask its owner to run any privmed command on it once (that "
                           "merges the log), or give the auditor write access to the folder")
    return _probe(sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                  check_same_thread=False))


def _probe(con: sqlite3.Connection) -> sqlite3.Connection:
    try:
        con.execute("PRAGMA query_only=ON")
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL index, if any
    except sqlite3.Error:
        con.close()
        raise
    return con


class AuditWriteError(PrivmedError):
    """An audit row could not be written; the message says why (and never holds row content)."""


def _write_failure(e: Exception) -> str | None:
    """A plain reason for failures that are not write contention, from the driver's message."""
    orig = str(getattr(e, "orig", e)).strip()  # the driver's own words: SQLAlchemy's text adds the row's values
    said = orig.splitlines()[0][:200] if orig else ""
    msg = said.lower()
    if "full" in msg or "no space" in msg:
        return f"the audit database is full ({said}); free space and retry"
    if getattr(e, "connection_invalidated", False) or "connection" in msg and ("closed" in msg or "lost" in msg):
        return f"the connection to the audit database was lost ({said}); check the database server"
    return None


def _reads_never_wait(engine) -> bool:
    """True for a SQLite file in WAL mode: a read there never waits for a writer (a key lookup is a
    local primary-key read of ~0.1 ms), so the API does it on its event loop rather than paying a
    thread hop. A database server answers over the network: its reads go to a thread."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"


def _sqlite_setup(engine) -> None:
    """WAL + FULL sync; the driver's own implicit BEGIN is turned off so that appends can say
    ``BEGIN IMMEDIATE`` (take the write lock first) while reads stay plain ``BEGIN``."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers not blocked by the writer
        cur.execute("PRAGMA synchronous=FULL")  # durable appends
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("privmed_write") else "BEGIN")


def _bad(n: int, seq, problem: str) -> dict:
    return {"ok": False, "rows": n, "first_bad_seq": seq, "problem": problem}


def _row_dict(r: AuditRow) -> dict:
    return {k: getattr(r, k) for k in (*HASHED_FIELDS, "prev_hash", "row_hash")}
