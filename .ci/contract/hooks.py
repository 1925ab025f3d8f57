"""Schemathesis hooks for City Events' contract run (loaded through SCHEMATHESIS_HOOKS).

One hook leaves out generated *schema-valid* requests that the document cannot describe as
invalid but the server rightly refuses; schema-violating ones still go out (and must be
refused), and every other check stays as strict:
- a `cursor` is opaque and issued by the server (`next_cursor`): a generated one is never a real
  cursor and is refused with 400 (tested in services/common's page tests and every list test);
- `q` of GET /api/v1/events needs a word of at least 3 letters or digits, a Unicode rule that JSON
  Schema's regular expressions cannot state portably; and two rules across its parameters that
  OpenAPI cannot state: `sort=relevance` needs `q`, and `to` must be after `from` (all tested in
  the events service's list tests).
"""

import datetime

import schemathesis
from schemathesis.generation import GenerationMode


def _has_search_word(q):
    word = 0
    for c in q:
        word = word + 1 if c.isalnum() else 0
        if word >= 3:
            return True
    return False


@schemathesis.hook
def filter_case(ctx, case):
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return True
    query = case.query if isinstance(case.query, dict) else {}
    if query.get("cursor") not in (None, ""):
        return False
    op = case.operation
    if op.path == "/api/v1/events" and op.method.upper() == "GET":
        q = query.get("q")
        searched = isinstance(q, str) and q.strip() != ""
        if searched and not _has_search_word(q):
            return False
        if query.get("sort") == "relevance" and not searched:
            return False
        start, end = _instant(query.get("from")), _instant(query.get("to"))
        try:
            if start is not None and end is not None and end <= start:
                return False
        except TypeError:  # one with an offset, one without: the server refuses neither
            pass
    return True


def _instant(value):
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
