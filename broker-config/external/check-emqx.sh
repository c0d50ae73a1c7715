#!/usr/bin/env bash
# Syntax and sense check of broker-config/external/emqx/ (EMQX itself is not run: no EMQX here).
# emqx.conf: parsed as HOCON by pyhocon (installed from PyPI if python3 lacks it), then the keys
# the pricefeed setup depends on are checked. acl.conf: parsed as Erlang terms by a small parser
# below (and by Erlang's own file:consult, which EMQX uses, where erl is installed), each rule
# checked against the forms EMQX 5.8 accepts, and its topics compared with
# broker-config/mosquitto/acl. Exits 0 if all holds, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "check-emqx: FAIL: $*" >&2; exit 1; }
command -v python3 >/dev/null || fail "python3 not found"

if ! python3 -c 'import pyhocon' 2>/dev/null; then
    echo "installing pyhocon from PyPI" >&2
    python3 -m pip install -q 'pyhocon==0.3.63' || fail "could not install pyhocon from PyPI"
fi

if command -v erl >/dev/null; then
    erl -noshell -eval '
        case file:consult("'"$here/emqx/acl.conf"'") of
            {ok, Terms} -> io:format("check-emqx: erl file:consult read ~b rules~n", [length(Terms)]), halt(0);
            {error, Reason} -> io:format("check-emqx: FAIL: erl file:consult: ~p~n", [Reason]), halt(1)
        end.' || exit 1
fi

python3 - "$here/emqx/emqx.conf" "$here/emqx/acl.conf" "$here/../mosquitto/acl" <<'PY'
import re
import sys

from pyhocon import ConfigFactory

conf_path, acl_path, mosquitto_acl_path = sys.argv[1:]
problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


# --- emqx.conf ---------------------------------------------------------------------------------
try:
    conf = ConfigFactory.parse_file(conf_path, resolve=False)
except Exception as e:
    sys.exit(f"check-emqx: FAIL: emqx.conf does not parse as HOCON: {e}")
node_name = conf.get_string("node.name")
check(re.fullmatch(r"[^@\s]+@[^@\s]+", node_name), f"node.name {node_name!r} is not name@host")
check(conf.get_string("node.cookie", ""), "node.cookie is empty")
check(conf.get_string("cluster.discovery_strategy") == "static", "cluster.discovery_strategy is not static")
seeds = conf.get_list("cluster.static.seeds")
check(len(seeds) == 3 and all(re.fullmatch(r"[^@\s]+@[^@\s]+", s) for s in seeds),
      f"cluster.static.seeds is not 3 node names: {seeds}")
check(node_name in seeds, "node.name is not one of cluster.static.seeds")
public, publisher = conf.get("listeners.tcp.default"), conf.get("listeners.tcp.publisher")
check(public.get("enable_authn") is False, "the public listener (tcp.default) authenticates")
check(publisher.get("enable_authn") is True, "the publisher listener (tcp.publisher) does not authenticate")
check(public.get("bind") != publisher.get("bind"), "both listeners bind the same address")
authn = conf.get_list("authentication")
check(len(authn) == 1, "authentication is not one authenticator")
a = authn[0]
for key, value in [("mechanism", "password_based"), ("backend", "built_in_database"),
                   ("user_id_type", "username"), ("bootstrap_type", "plain")]:
    check(a.get(key) == value, f"authentication[0].{key} is not {value}")
check(str(a.get("bootstrap_file", "")).endswith(".csv"), "authentication[0].bootstrap_file is not a .csv")
check(conf.get_string("authorization.no_match") == "deny", "authorization.no_match is not deny")
sources = conf.get_list("authorization.sources")
check(len(sources) == 1 and sources[0].get("type") == "file" and sources[0].get("enable") is True
      and str(sources[0].get("path", "")).endswith("/acl.conf"),
      "authorization.sources is not the one file source acl.conf")


# --- acl.conf: the Erlang terms EMQX reads with file:consult -----------------------------------
class Atom(str):
    pass


TOKEN = re.compile(r"""
    (?P<space>\s+|%[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<qatom>'(?:[^'\\]|\\.)*')
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<int>\d+)
  | (?P<punct>[{}\[\],]|\.(?=\s|%|$))
""", re.X)


def tokens(text):
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"acl.conf: cannot read from {text[pos:pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            continue
        value = m.group()
        if kind == "string":
            yield "term", bytes(value[1:-1], "utf-8").decode("unicode_escape")
        elif kind == "qatom":
            yield "term", Atom(value[1:-1])
        elif kind == "atom":
            yield "term", Atom(value)
        elif kind == "int":
            yield "term", int(value)
        else:
            yield value, None


def parse(text):
    toks = list(tokens(text)) + [("eof", None)]
    i = 0

    def term():
        nonlocal i
        kind, value = toks[i]
        i += 1
        if kind == "term":
            return value
        if kind in "{[":
            close, items = "}" if kind == "{" else "]", []
            if toks[i][0] != close:
                items.append(term())
                while toks[i][0] == ",":
                    i += 1
                    items.append(term())
            if toks[i][0] != close:
                raise SyntaxError(f"acl.conf: expected {close!r}, got {toks[i]}")
            i += 1
            return tuple(items) if kind == "{" else items
        raise SyntaxError(f"acl.conf: unexpected {kind!r}")

    forms = []
    while toks[i][0] != "eof":
        forms.append(term())
        if toks[i][0] != ".":
            raise SyntaxError(f"acl.conf: a rule does not end with '.': {forms[-1]}")
        i += 1
    return forms


def is_str(x):
    return isinstance(x, str) and not isinstance(x, Atom)


def who_ok(w):  # emqx_authz_rule:compile_who/1 in EMQX 5.8
    if w == "all" and isinstance(w, Atom):
        return True
    if not (isinstance(w, tuple) and w and isinstance(w[0], Atom)):
        return False
    tag, rest = w[0], w[1:]
    pattern = lambda v: is_str(v) or (isinstance(v, tuple) and len(v) == 2 and v[0] == "re" and is_str(v[1]))
    if tag in ("user", "username", "client", "clientid") and len(rest) == 1:
        return pattern(rest[0])
    if tag == "client_attr" and len(rest) == 2:
        return is_str(rest[0]) and pattern(rest[1])
    if tag == "ipaddr" and len(rest) == 1:
        return is_str(rest[0])
    if tag == "ipaddrs" and len(rest) == 1:
        return isinstance(rest[0], list) and all(map(is_str, rest[0]))
    if tag in ("and", "or") and len(rest) == 1:
        return isinstance(rest[0], list) and all(map(who_ok, rest[0]))
    return False


def action_ok(a):
    if a in ("publish", "subscribe", "all") and isinstance(a, Atom):
        return True
    return (isinstance(a, tuple) and len(a) == 2 and a[0] in ("publish", "subscribe", "all")
            and isinstance(a[1], list))


def topic_ok(t):
    return is_str(t) or t == "all" or (isinstance(t, tuple) and len(t) == 2 and t[0] == "eq" and is_str(t[1]))


try:
    rules = parse(open(acl_path).read())
except SyntaxError as e:
    sys.exit(f"check-emqx: FAIL: {e}")
for rule in rules:
    if isinstance(rule, tuple) and len(rule) == 2:
        check(rule[0] in ("allow", "deny") and rule[1] == "all", f"not a rule: {rule}")
    elif isinstance(rule, tuple) and len(rule) == 4:
        perm, who, action, topics = rule
        check(perm in ("allow", "deny"), f"permission is not allow or deny: {rule}")
        check(who_ok(who), f"not a client condition EMQX accepts: {who}")
        check(action_ok(action), f"not an action EMQX accepts: {action}")
        check(isinstance(topics, list) and all(map(topic_ok, topics)), f"not a topic list: {topics}")
    else:
        problems.append(f"not a rule: {rule}")

check(rules and rules[-1] == ("deny", "all"), "the last rule is not {deny, all}")
check(not any(len(r) == 4 and r[0] == "allow" and r[2] in ("publish", "all") for r in rules),
      "a rule allows publishing: the public listener would let anyone use it")
readable = {t for r in rules if len(r) == 4 and r[:3] == ("allow", "all", "subscribe") for t in r[3]}
mosquitto_read = set()
for line in open(mosquitto_acl_path):
    if line.startswith("user "):
        break
    if line.startswith("topic read "):
        mosquitto_read.add(line.split(None, 2)[2].strip())
check(readable == mosquitto_read,
      f"anyone may subscribe to {sorted(readable)}, Mosquitto's anonymous clients read {sorted(mosquitto_read)}")

if problems:
    print("check-emqx: FAIL:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"check-emqx: ok (emqx.conf parses with the expected keys; acl.conf: {len(rules)} rules, "
      "read-only topics as Mosquitto's)")
PY
