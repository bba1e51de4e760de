"""Grafana's PostgreSQL macros and template variables, expanded as Grafana expands them.

Covers what tierguard's dashboard uses: $__timeFilter, $__timeGroupAlias, $__timeGroup,
$__timeFrom(), $__timeTo(), $__interval and multi-value variables ($category → 'a','b').
"""

from __future__ import annotations

import datetime as dt
import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    if not m:
        raise ValueError(f"unsupported interval {interval!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


def _args(sql: str, start: int) -> tuple[list[str], int]:
    """Split the macro's parenthesised arguments (respecting nested parentheses)."""
    depth, args, cur, i = 0, [], "", start
    while True:
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth > 1:
                cur += ch
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(cur.strip())
                return [a for a in args if a], i + 1
            cur += ch
        elif ch == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1


def expand(sql: str, start: dt.datetime, end: dt.datetime, interval: str = "1m",
           variables: dict[str, list[str]] | None = None) -> str:
    iso = {"from": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    for name, values in (variables or {}).items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = sql.replace("${" + name + "}", quoted).replace("$" + name, quoted)
    sql = sql.replace("$__interval", interval)
    out, i = "", 0
    pattern = re.compile(r"\$__(timeFilter|timeGroupAlias|timeGroup|timeFrom|timeTo)\(")
    while (m := pattern.search(sql, i)) is not None:
        out += sql[i:m.start()]
        args, i = _args(sql, m.end() - 1)
        macro = m.group(1)
        if macro == "timeFilter":
            out += f"{args[0]} BETWEEN '{iso['from']}' AND '{iso['to']}'"
        elif macro in ("timeGroup", "timeGroupAlias"):
            n = _seconds(args[1])
            out += f"floor(extract(epoch from {args[0]})/{n})*{n}"
            if macro == "timeGroupAlias":
                out += ' AS "time"'
        else:
            out += f"'{iso['from' if macro == 'timeFrom' else 'to']}'"
    return out + sql[i:]
