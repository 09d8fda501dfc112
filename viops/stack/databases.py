"""The stack's PostgreSQL databases: created when missing, dropped only when asked (``viops stack down --drop``)."""

from __future__ import annotations

from contextlib import closing

__all__ = ["ensure_database", "drop_database"]


def _admin(server: str):
    import psycopg2

    from viops.stack.services import StackError

    try:
        conn = psycopg2.connect(f"{server.rstrip('/')}/postgres", connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise StackError(f"PostgreSQL at {server} is unreachable (the profile's `postgres`): "
                         f"{' '.join(str(exc).split())}") from None
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


def ensure_database(server: str, name: str) -> bool:
    """Create database ``name`` on ``server`` unless it exists; True when created."""
    from psycopg2 import sql

    with closing(_admin(server)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone():
            return False
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(server: str, name: str) -> None:
    """Drop ``name`` (closing its other connections first)."""
    from psycopg2 import sql

    with closing(_admin(server)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid()", (name,))
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
