#!/usr/bin/env python3
"""Whether what a process did (an `strace -f -s 4096` log) fits pricefeed.service's sandbox.

Usage: sandbox_fits.py TRACE SYSCALL_GROUPS STATE_DIR [UNIT]

SYSCALL_GROUPS is the output of `systemd-analyze syscall-filter` (the groups of this systemd);
UNIT defaults to pricefeed.service beside this script. Prints one line per violation and exits 1
if there is any:

- a system call the unit's SystemCallFilter= lines do not allow (the first line is the allow
  list, each `~` line after it removes from it, as systemd applies them);
- a socket of a family not in RestrictAddressFamilies=;
- a unit whose ExecStart keeps the store (--db) outside its StateDirectory=;
- a /proc file outside a process's own directory (ProcSubset=pid hides the rest);
- a file created, written, renamed or removed outside STATE_DIR (ProtectSystem=strict leaves
  only the state directory writable; /dev/null is writable in any sandbox). The service's private
  /tmp would be writable too, but pricefeed has no reason to write there, and the traced run keeps
  its state directory under /tmp, so a write there is flagged as well.
"""

import os
import re
import sys


def groups_of(text):
    groups, current = {}, None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(name, groups):
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        sys.exit(f"sandbox_fits.py: systemd has no system call group {name}")
    out = set()
    for member in groups[name]:
        out |= expand(member, groups)
    return out


def unit_settings(path):
    filters, families, settings = [], [], {}
    for line in open(path):
        line = line.strip()
        if line.startswith("SystemCallFilter="):
            filters.append(line.split("=", 1)[1])
        elif line.startswith("RestrictAddressFamilies="):
            families += line.split("=", 1)[1].split()
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return filters, set(families), settings


def store_problems(settings):
    """The store must be in the state directory: the only place ProtectSystem=strict and
    DynamicUser= leave writable, and kept across restarts."""
    state = settings.get("StateDirectory", "").split()
    args = settings.get("ExecStart", "").split()
    db = args[args.index("--db") + 1] if "--db" in args[:-1] else None
    if not state:
        return ["has no StateDirectory= for its store"]
    if db is None or not db.startswith(f"%S/{state[0]}/"):
        return [f"keeps its store ({db or 'no --db'}) outside its StateDirectory {state[0]}"]
    return []


def allowed_calls(filters, groups):
    if not filters or filters[0].startswith("~"):
        sys.exit("sandbox_fits.py: the unit's first SystemCallFilter= must be an allow list")
    allowed = set()
    for entry in filters[0].split():
        allowed |= expand(entry, groups)
    for line in filters[1:]:
        names = line.split()
        deny = names[0].startswith("~")
        names[0] = names[0].lstrip("~")
        for entry in names:
            allowed = allowed - expand(entry, groups) if deny else allowed | expand(entry, groups)
    return allowed


CALL = re.compile(r"^\d+\s+([a-z0-9_]+)\(")
RESUMED = re.compile(r"^\d+\s+<\.\.\. ([a-z0-9_]+) resumed>")
FAMILY = re.compile(r"^\d+\s+(?:socket|socketpair)\((AF_[A-Z0-9]+)")
OPEN = re.compile(r'^\d+\s+(?:open|openat|openat2|creat)\((?:[^,]*, )?"([^"]*)", ([A-Z_|]+)')
PATH_CHANGE = re.compile(
    r'^\d+\s+(?:unlink|unlinkat|rmdir|mkdir|mkdirat|rename|renameat|renameat2|truncate)\('
    r'(?:AT_FDCWD, |\d+, )?"([^"]*)"'
)
OWN_PROC = re.compile(r"^/proc/(self|thread-self|\d+)(/|$)")


def main():
    trace, groups_file, state = sys.argv[1:4]
    unit = sys.argv[4] if len(sys.argv) > 4 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "pricefeed.service")
    groups = groups_of(open(groups_file).read())
    filters, families, settings = unit_settings(unit)
    allowed = allowed_calls(filters, groups)
    state = os.path.realpath(state)

    for problem in store_problems(settings):
        print(f"pricefeed.service {problem}")
        sys.exit(1)
    calls, problems = set(), set()
    for line in open(trace, errors="replace"):
        match = CALL.match(line) or RESUMED.match(line)
        if match:
            calls.add(match.group(1))
        match = FAMILY.match(line)
        if match and match.group(1) not in families:
            problems.add(f"opens a socket of family {match.group(1)}, not in RestrictAddressFamilies")
        match = OPEN.match(line)
        if match:
            path, flags = match.groups()
            if path.startswith("/proc/") and not OWN_PROC.match(path):
                problems.add(f"opens {path}, hidden by ProcSubset=pid")
            writes = any(f in flags for f in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"))
            if writes and not (
                os.path.realpath(path).startswith(state + os.sep) or path == "/dev/null"
            ):
                problems.add(f"writes {path}, outside the state directory")
        match = PATH_CHANGE.match(line)
        if match and not os.path.realpath(match.group(1)).startswith(state + os.sep):
            problems.add(f"changes {match.group(1)}, outside the state directory")
    for call in sorted(calls - allowed):
        problems.add(f"calls {call}, which SystemCallFilter refuses")
    if len(calls) < 20:
        sys.exit(f"sandbox_fits.py: only {len(calls)} system calls in {trace}: not a trace of a run")
    for problem in sorted(problems):
        print(f"pricefeed.service: the process {problem}")
    if problems:
        sys.exit(1)
    print(f"the process fits pricefeed.service's sandbox ({len(calls)} distinct system calls)")


if __name__ == "__main__":
    main()
