#!/usr/bin/env python3
"""What a schema cannot say about GET /v1/stream, checked against a running server.

Usage: stream_check.py BASE_URL   (the server must have stored a few ticks of each currency)

Schemathesis (check.sh) sends /v1/stream generated queries and checks each answer and the first
events against openapi.json. This adds what the document states in words, for queries whose
answer is known:

- a valid query is a 200 `text/event-stream` with `Cache-Control: no-store` that opens with
  `retry:`; its first event matches the document's StreamEvent (its data the schema of its
  kind), and is the one the query asks for: the oldest stored tick from `since=0`, only the
  asked currency, nothing at or before a `Last-Event-ID` position, no tick from a future `since`;
- bad input (a query parameter or Last-Event-ID) is a 400 `application/json` with
  `Cache-Control: no-store` whose body matches BadRequestError and names the parameter at fault.

Prints one line per case; exits 1 if any fails.
"""

import datetime
import http.client
import json
import sys
import urllib.parse
import urllib.request

import jsonschema_rs

TIMEOUT = 20


def instant(timedate):
    """A timedate as a time: as text, `…:40.250Z` sorts before `…:40Z`."""
    return datetime.datetime.fromisoformat(timedate.replace("Z", "+00:00"))


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=TIMEOUT) as answer:
        return json.load(answer)


class Document:
    def __init__(self, base):
        self.doc = get(base, "/openapi.json")
        self.validators = {}

    def errors(self, reference, instance):
        if reference not in self.validators:
            root = dict(self.doc)
            root["$ref"] = reference
            self.validators[reference] = jsonschema_rs.Draft202012Validator(
                root, validate_formats=True)
        return [error.message for error in self.validators[reference].iter_errors(instance)]

    def event_errors(self, event):
        """The event against StreamEvent, and its JSON data against its kind's contentSchema
        (JSON Schema only annotates with contentSchema)."""
        errors = self.errors("#/components/schemas/StreamEvent", event)
        for branch in self.doc["components"]["schemas"]["StreamEvent"]["oneOf"]:
            name = branch["properties"]["event"]
            if event["event"] == name.get("const") or event["event"] in name.get("enum", []):
                content = branch["properties"]["data"].get("contentSchema")
                if content:
                    try:
                        data = json.loads(event["data"])
                    except ValueError as e:
                        return errors + [f"data is not JSON: {e}"]
                    errors += [f"data: {e}" for e in self.errors(content["$ref"], data)]
        return errors


def open_stream(base, query, headers):
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    connection.request("GET", "/v1/stream" + (f"?{query}" if query else ""), headers=headers)
    return connection, connection.getresponse()


def read_block(answer):
    """The next block of the stream: its fields, comment lines skipped."""
    fields = []
    while True:
        line = answer.readline().decode("utf-8")
        if line == "":
            raise EOFError("the stream ended")
        line = line.rstrip("\r\n")
        if line == "":
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.append((name, value.removeprefix(" ")))


def first_event(answer):
    """The `retry` the stream opens with, and its first event as an EventSource delivers it."""
    opening = read_block(answer)
    retry = dict(opening).get("retry") if all(n == "retry" for n, _ in opening) else None
    block = opening if retry is None else read_block(answer)
    event = {"event": "message", "data": ""}
    data = []
    for name, value in block:
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            event[name] = value
    event["data"] = "\n".join(data)
    return retry, event


def check_valid(doc, base, query, headers, expect):
    connection, answer = open_stream(base, query, headers)
    try:
        problems = []
        if answer.status != 200:
            return [f"status {answer.status}: {answer.read(500)!r}"]
        if answer.getheader("Content-Type", "").split(";")[0].strip() != "text/event-stream":
            problems.append(f"Content-Type {answer.getheader('Content-Type')}")
        if answer.getheader("Cache-Control") != "no-store":
            problems.append(f"Cache-Control {answer.getheader('Cache-Control')}")
        retry, event = first_event(answer)
        if retry is None:
            problems.append("the stream does not open with retry:")
        problems += doc.event_errors(event)
        problems += expect(event)
        return problems
    finally:
        connection.close()


def check_bad(doc, base, query, headers, parameter):
    connection, answer = open_stream(base, query, headers)
    try:
        body = answer.read()
        problems = []
        if answer.status != 400:
            return [f"status {answer.status}, not 400"]
        if answer.getheader("Content-Type", "").split(";")[0].strip() != "application/json":
            problems.append(f"Content-Type {answer.getheader('Content-Type')}")
        if answer.getheader("Cache-Control") != "no-store":
            problems.append(f"Cache-Control {answer.getheader('Cache-Control')}")
        error = json.loads(body)
        problems += doc.errors("#/components/schemas/BadRequestError", error)
        if error.get("parameter") != parameter:
            problems.append(f"names {error.get('parameter')!r}, not {parameter!r}: {error}")
        return problems
    finally:
        connection.close()


def main():
    base = sys.argv[1].rstrip("/")
    doc = Document(base)
    oldest = {
        c: get(base, f"/v1/ticks?since=0&currency={c}&limit=1")["ticks"][c][0] for c in ("USD", "EUR")
    }
    if not all(oldest.values()):
        sys.exit(f"stream_check.py: the server holds no tick of each currency yet: {oldest}")

    def tick_of(event):
        return event["event"].removeprefix("btc/"), json.loads(event["data"])

    def is_oldest(event):
        if not event["event"].startswith("btc/"):
            return [f"the first event is {event['event']}, not the oldest stored tick"]
        currency, tick = tick_of(event)
        return [] if tick == oldest[currency] else [f"{tick} is not the oldest {currency} tick"]

    def only(currency):
        def check(event):
            if event["event"].startswith("btc/") and event["event"] != f"btc/{currency}":
                return [f"a {event['event']} event on a {currency} stream"]
            return is_oldest(event)
        return check

    def after(position):
        def check(event):
            if not event["event"].startswith("btc/"):
                return []
            currency, tick = tick_of(event)
            later = instant(tick["timedate"]) > instant(position[currency])
            return [] if later else [
                f"{tick} is not after the Last-Event-ID position {position}"]
        return check

    def no_tick(event):
        return [f"a tick from a future since: {event}"] if event["event"].startswith("btc/") else []

    def any_event(_event):
        return []

    position = {c: t["timedate"] for c, t in oldest.items()}
    last_event_id = f"USD={position['USD']},EUR={position['EUR']}"
    valid = [
        ("since=0", {}, is_oldest),
        ("since=0&currency=EUR", {}, only("EUR")),
        ("currency=usd&since=1970-01-01T01:00:00%2B01:00", {}, only("USD")),
        ("", {}, any_event),
        ("since=9999-12-31T00:00:00Z", {}, no_tick),
        ("since=0", {"Last-Event-ID": last_event_id}, after(position)),
        ("since=0", {"Last-Event-ID": ""}, is_oldest),
    ]
    bad = [
        ("currency=JPY", {}, "currency"),
        ("currency=USD&currency=EUR", {}, "currency"),
        ("since=yesterday", {}, "since"),
        ("since=", {}, "since"),
        ("since=0&limit=10", {}, "limit"),
        ("foo=1", {}, "foo"),
        ("", {"Last-Event-ID": "GBP=2026-11-24T01:40:05Z"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "junk"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "USD=2026-11-24T01:40:05Z,USD=2026-11-24T01:40:10Z"}, "Last-Event-ID"),
    ]
    failed = 0
    cases = [(q, h, lambda q=q, h=h, e=e: check_valid(doc, base, q, h, e)) for q, h, e in valid]
    cases += [(q, h, lambda q=q, h=h, p=p: check_bad(doc, base, q, h, p)) for q, h, p in bad]
    for query, headers, run in cases:
        label = f"GET /v1/stream?{query}" + "".join(f" [{k}: {v}]" for k, v in headers.items())
        try:
            problems = run()
        except (OSError, EOFError, ValueError, http.client.HTTPException) as e:
            problems = [f"{type(e).__name__}: {e}"]
        print(f"{'ok  ' if not problems else 'FAIL'} {label}")
        for problem in problems:
            print(f"     {problem}")
        failed += bool(problems)
    print(f"{len(cases) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
