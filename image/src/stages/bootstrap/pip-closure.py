# Run by pip-venv.sh with the venv's Python, in the chroot: checks that every distribution the
# requirements name, and everything they require in turn (extras included), is installed at a
# version its dependents declare they accept: Debian's python3-* packages may be older than
# PyPI's. Then prints the closure, one `name==version<TAB>index<TAB>where` a line, where is
# "venv" or "debian:<package>=<version>" for what Debian's packages provide.
# Arguments: the requirements file, the entry's index.
import importlib.metadata as md
import subprocess
import sys

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

req_file, index = sys.argv[1], sys.argv[2]
dists = {}
for d in md.distributions():
    # sys.path order: the venv's own copy wins over the system's, as at import time.
    dists.setdefault(canonicalize_name(d.metadata["Name"]), d)

todo = []
with open(req_file) as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            todo.append((canonicalize_name(line.split("==")[0]), ()))
seen, bad, closure = set(), [], {}
while todo:
    name, extras = todo.pop()
    if (name, extras) in seen:
        continue
    seen.add((name, extras))
    d = dists.get(name)
    if d is None:
        bad.append(f"{name} is not installed")
        continue
    closure[name] = d
    envs = [{"extra": e} for e in extras] + [{"extra": ""}]
    for r in d.requires or []:
        req = Requirement(r)
        if req.marker and not any(req.marker.evaluate(e) for e in envs):
            continue
        dep = dists.get(canonicalize_name(req.name))
        if dep is None:
            bad.append(f"{d.metadata['Name']} {d.version} requires {req}: not installed")
            continue
        if not req.specifier.contains(dep.version, prereleases=True):
            bad.append(
                f"{d.metadata['Name']} {d.version} requires {req}: "
                f"{dep.metadata['Name']} {dep.version} is installed"
            )
        todo.append((canonicalize_name(req.name), tuple(sorted(req.extras))))
if bad:
    for b in sorted(set(bad)):
        print(f"cloudy: unmet requirement: {b}", file=sys.stderr)
    sys.exit(1)

for name in sorted(closure):
    d = closure[name]
    where = "venv"
    path = str(d._path)
    if not path.startswith(sys.prefix + "/"):
        owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
        package = owner.stdout.split(":")[0].strip() if owner.returncode == 0 else "?"
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
        ).stdout.strip()
        where = f"debian:{package}={version}"
    print(f"{d.metadata['Name']}=={d.version}\t{index}\t{where}")
