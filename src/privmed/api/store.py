"""API keys and the hash-chained audit log, in any SQLAlchemy database (SQLite by default).

Keys: ``pmk_<key id>_<secret>``. Only the key id, the role, a random salt and
HMAC-SHA256(salt, secret) are stored; the key itself is shown once, at creation.

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
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Float, Integer, String, Text, create_engine, event, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROLES = ("clinician", "auditor", "admin")
GENESIS = "0" * 64
KEY_PREFIX = "pmk"
# pg_advisory_xact_lock key of the audit chain: a fixed 63-bit number (sha256 of the name)
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"privmed.audit_log").digest()[:8], "big") >> 1


def default_db_url() -> str:
    env = os.environ.get("PRIVMED_DB_URL")
    if env:
        return env
    home = Path(os.environ.get("PRIVMED_HOME", "~/.privmed")).expanduser()
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


def _hash_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


class Store:
    def __init__(self, url: str | None = None):
        self.url = url or default_db_url()
        kwargs = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True  # a restarted database server is not an error for the next request
        self.engine = create_engine(self.url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        Base.metadata.create_all(self.engine)
        self._lock = threading.Lock()  # one writer per process; the database serialises the processes

    # ---- keys
    def create_key(self, role: str, label: str | None = None) -> tuple[str, str]:
        """(key id, full key). The full key is not stored and cannot be shown again."""
        if role not in ROLES:
            raise ValueError(f"unknown role '{role}'; choose one of {', '.join(ROLES)}")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        with Session(self.engine) as s, s.begin():
            s.add(ApiKey(key_id=key_id, role=role, label=label, salt=salt, key_hash=_hash_secret(salt, secret),
                         created_at=_now()))
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    def authenticate(self, key: str | None) -> Principal | None:
        if not key:
            return None
        parts = key.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with Session(self.engine) as s:
            row = s.get(ApiKey, parts[1])
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, _hash_secret(row.salt, parts[2])):
                return None
            return Principal(row.key_id, row.role)

    def list_keys(self) -> list[dict]:
        with Session(self.engine) as s:
            return [{"key_id": k.key_id, "role": k.role, "label": k.label, "created_at": k.created_at,
                     "revoked_at": k.revoked_at} for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def revoke_key(self, key_id: str) -> bool:
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or _now()
            return True

    # ---- audit log
    def append(self, **fields) -> dict:
        """Append one row to the chain (retries if another process appended concurrently)."""
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
                    # serialised dialects never collide; a lock timeout or another dialect's race retries
                    if attempt == tries - 1:
                        raise RuntimeError("could not append to the audit log: "
                                           f"{type(e).__name__} from concurrent writers") from None
        raise AssertionError("unreachable")

    def _append_once(self, row: dict) -> dict:
        rows_t, head_t = AuditRow.__table__, AuditHead.__table__
        with self.engine.connect().execution_options(privmed_write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            last = conn.execute(select(rows_t.c.seq, rows_t.c.row_hash).order_by(rows_t.c.seq.desc())
                                .limit(1)).first()
            seq = (last.seq if last else 0) + 1
            prev = last.row_hash if last else GENESIS
            full = dict(row, seq=seq)
            h = chain_hash(prev, full)
            conn.execute(insert(rows_t).values(**full, prev_hash=prev, row_hash=h))
            done = conn.execute(update(head_t).where(head_t.c.id == 1)
                                .values(count=head_t.c.count + 1, last_seq=seq, last_hash=h)).rowcount
            if not done:
                conn.execute(insert(head_t).values(id=1, count=1, last_seq=seq, last_hash=h))
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
