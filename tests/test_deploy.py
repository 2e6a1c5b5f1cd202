"""The deploy artefacts under deploy/ and the Dockerfile, checked as far as this machine allows:
no container registry is reachable, so no image is built and no cluster or Compose project runs.

What is real here: the Kubernetes objects against the Kubernetes OpenAPI schemas
(kubernetes-validate ships them), the Compose file against the Compose Specification's JSON
Schema (vendored in tests/schemas/), every shipped hoopwire.toml through `hoopwire check-config`
and then served by a real gateway whose probe paths, ports and tokens are exercised, the
Dockerfile's HEALTHCHECK command run against a real gateway, and the systemd unit through
`systemd-analyze verify`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request

import jsonschema
import pytest
import yaml

from gwfixtures import conninfo, gateway_env
from helpers import APP_DB, REPO_ROOT, Gateway, api, free_port, psql

DEPLOY = os.path.join(REPO_ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
COMPOSE = os.path.join(DEPLOY, "compose")
K8S_VERSION = "1.30.0"     # the oldest Kubernetes these manifests are checked against


def run_hoopwire(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, env=e, timeout=timeout)


def listen_port(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


# -- Dockerfile ----------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    with open(os.path.join(REPO_ROOT, "Dockerfile"), encoding="utf-8") as f:
        for line in f:
            s = line.rstrip("\n")
            if not cur and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def final_stage(instrs):
    last_from = max(i for i, (w, _) in enumerate(instrs) if w == "FROM")
    return instrs[last_from:]


def test_dockerfile_user_volume_healthcheck_entrypoint():
    instrs = dockerfile()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in instrs if w == "ARG" and "=" in a}
    # the base pinned by exact tag (a digest needs a registry): Python's patch version and the
    # Debian release, and both stages from that one image
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"]), args
    froms = [a.split()[0] for w, a in instrs if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"], froms
    # the Hyperscan compiled against is the one loaded: same pinned version in both stages
    runs = " ".join(a for w, a in instrs if w == "RUN")
    assert "libhyperscan-dev=${HYPERSCAN_VERSION}" in runs
    assert "libhyperscan5=${HYPERSCAN_VERSION}" in runs
    assert re.fullmatch(r"[0-9][0-9A-Za-z.+~-]*", args["HYPERSCAN_VERSION"])
    # the tree the lead moves: still copied as it is today
    assert ("COPY", "ext ./ext") in instrs

    final = final_stage(instrs)
    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users     # numeric: runAsNonRoot can check it
    final_runs = " ".join(a for w, a in final if w == "RUN")
    assert f"--uid {uid}" in final_runs
    volumes = [v for w, a in final if w == "VOLUME" for v in json.loads(a)]
    assert volumes == ["/var/lib/hoopwire"]
    assert re.search(r"chown -R hoopwire:hoopwire /var/lib/hoopwire", final_runs)
    # USER after the chown and the VOLUME: a fresh named volume starts owned by hoopwire
    order = [w for w, _ in final]
    assert order.index("VOLUME") < max(i for i, w in enumerate(order) if w == "USER")

    (health,) = [a for w, a in final if w == "HEALTHCHECK"]
    opts = dict(re.findall(r"--([a-z-]+)=(\S+)", health))
    assert opts.get("timeout") and opts.get("interval"), health
    cmd = json.loads(health.split("CMD", 1)[1])
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", cmd[-1])
    example = tomllib.load(open(os.path.join(DEPLOY, "hoopwire.toml"), "rb"))
    assert int(url.group(1)) == listen_port(example["admin"]["listen"])
    assert url.group(2) == "/readyz"
    assert "timeout=" in cmd[-1]              # the probe's own socket timeout is bounded
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {listen_port(example["admin"]["listen"]),
                       *(listen_port(c["listen"]) for c in example["connection"])}

    (entry,) = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    scripts = tomllib.load(open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb"))["project"]["scripts"]
    assert entry[0] in scripts and scripts[entry[0]] == "hoopwire.cli:main"
    (command,) = [json.loads(a) for w, a in final if w == "CMD"]
    assert command[:3] == ["serve", "--config", "/etc/hoopwire/hoopwire.toml"]
    from hoopwire.cli import build_parser
    parsed = build_parser().parse_args(command)       # the CMD is a command the CLI takes
    assert parsed.command == "serve"


def healthcheck_cmd(port: int) -> list[str]:
    (health,) = [a for w, a in final_stage(dockerfile()) if w == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1])
    cmd[-1] = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", cmd[-1])
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def test_dockerfile_healthcheck_command_against_a_real_gateway(pg, idp, tmp_path):
    """The HEALTHCHECK's own command: exit 0 on a ready gateway, non-zero once it is gone."""
    cfg = example_served("hoopwire.toml", pg, idp, tmp_path)
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        r = subprocess.run(healthcheck_cmd(gw.admin_port), capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        port = gw.admin_port
    r = subprocess.run(healthcheck_cmd(port), capture_output=True, timeout=30)
    assert r.returncode != 0


# -- the shipped configurations, checked and served ----------------------------------------------

def example_served(name: str, pg, idp, tmp_path, toml_text: str | None = None) -> dict:
    """A shipped config made servable here: its listen ports freed, upstream -> the test
    PostgreSQL, issuer -> the test IdP, paths under /var/lib/hoopwire -> tmp_path. Everything
    else (guardrails, admin groups, audit, state kind) as shipped."""
    text = toml_text if toml_text is not None else open(os.path.join(DEPLOY, name)).read()
    cfg = tomllib.loads(text.replace("/var/lib/hoopwire", str(tmp_path)))
    cfg["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    for c in cfg["connection"]:
        c.update(listen=f"127.0.0.1:{free_port()}", upstream=f"127.0.0.1:{pg.port}",
                 database=APP_DB, user="app", password_env="APP_DB_PASSWORD",
                 upstream_tls="disable")
        c.pop("password_file", None)
    cfg["identity"]["issuer"] = [dict(i, **idp.issuer_config()) for i in cfg["identity"]["issuer"]]
    return cfg


def test_example_config_passes_check_config(tmp_path):
    r = run_hoopwire("check-config", os.path.join(DEPLOY, "hoopwire.toml"),
                     env={"ORDERS_DB_PASSWORD": "x"})
    assert r.returncode == 0, r.stdout + r.stderr


# -- Kubernetes ----------------------------------------------------------------------------------

def k8s_objects() -> dict[str, list[dict]]:
    out = {}
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d is not None]
    return out


def one(kind: str, name: str | None = None) -> dict:
    found = [o for objs in k8s_objects().values() for o in objs
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def check_service_monitor(obj: dict) -> None:
    """No schema ships for this CRD: its structure by hand (monitoring.coreos.com/v1)."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = obj["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, spec
    assert spec["selector"]["matchLabels"]
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, ep
        assert isinstance(ep["port"], str) and ep["path"].startswith("/")


def test_kubernetes_objects_are_schema_valid():
    import kubernetes_validate.utils as kv
    objs = k8s_objects()
    kustomization = objs.pop("kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    # every manifest is in the kustomization, and nothing else
    assert sorted(kustomization["resources"]) == sorted(objs), kustomization["resources"]
    kinds = set()
    for name, docs in objs.items():
        for obj in docs:
            kinds.add(obj["kind"])
            if obj["kind"] == "ServiceMonitor":
                check_service_monitor(obj)
                continue
            try:
                # strict: an unknown field (a misspelt key) is an error, not ignored
                kv.validate(obj, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{name} {obj['kind']}/{obj['metadata']['name']}: {e.message} at "
                            f"{'.'.join(map(str, e.path))}")
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Secret",
            "ServiceMonitor"} <= kinds


def test_kubernetes_pods_are_hardened_and_consistent():
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sts["spec"]["replicas"] >= 2
    # selectors that select the pods
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [o for docs in k8s_objects().values() for o in docs if o["kind"] == "Service"]
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for s in services:
        assert s["spec"]["selector"].items() <= labels.items()
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in port_names, p
    # the ServiceMonitor scrapes a port of a Service it selects
    sm = one("ServiceMonitor")["spec"]
    chosen = [s for s in services if sm["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
              and not any(e["operator"] == "DoesNotExist" and e["key"] in s["metadata"]["labels"]
                          for e in sm["selector"].get("matchExpressions", []))]
    assert len(chosen) == 1, "each pod must be scraped through exactly one Service"
    assert {ep["port"] for ep in sm["endpoints"]} <= {p["name"] for p in chosen[0]["spec"]["ports"]}
    # every mount has its volume; the audit directory is a per-replica claim
    volumes = {v["name"] for v in spec["volumes"]} | {
        t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in c["volumeMounts"]} <= volumes
    cfg = tomllib.loads(one("ConfigMap")["data"]["hoopwire.toml"])
    audit_mount = [m for p, m in mounts.items() if cfg["audit"]["path"].startswith(p + "/")]
    assert [m["name"] for m in audit_mount] == [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    # with a read-only root: every path the gateway writes is a mount
    assert "/tmp" in mounts
    # the ports the config listens on are the container's
    assert port_names["admin"] == listen_port(cfg["admin"]["listen"])
    for conn in cfg["connection"]:
        assert port_names[conn["name"]] == listen_port(conn["listen"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "admin"}
    # several replicas share state: not SQLite
    assert cfg["state"]["url"].startswith("postgresql://")


def secret_files(cfg_text: str) -> dict[str, str]:
    """The config's *_file paths -> the Secret key that must provide each."""
    sts = one("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    secret_mounts = {m["mountPath"]: vols[m["name"]]["secret"]["secretName"]
                     for m in c["volumeMounts"] if "secret" in vols.get(m["name"], {})}
    out = {}
    for path in re.findall(r'_file\s*=\s*"([^"]+)"', cfg_text):
        mount = os.path.dirname(path)
        assert mount in secret_mounts, f"{path} is not in a mounted Secret"
        secret = one("Secret", secret_mounts[mount])
        key = os.path.basename(path)
        assert key in secret.get("stringData", {}) or key in secret.get("data", {}), (path, key)
        out[path] = key
    assert out, "the ConfigMap reads no secret from a file"
    return out


def test_kubernetes_configmap_passes_check_config(tmp_path):
    text = one("ConfigMap")["data"]["hoopwire.toml"]
    files = secret_files(text)
    root = tmp_path / "etc-hoopwire"
    for path in files:
        local = root / os.path.relpath(path, "/etc/hoopwire")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("secret-value\n")
    path = tmp_path / "hoopwire.toml"
    path.write_text(text.replace("/etc/hoopwire", str(root)))
    r = run_hoopwire("check-config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    # a Secret key the config does not find is an error there (what the test above relies on)
    first = next(iter(files))
    (root / os.path.relpath(first, "/etc/hoopwire")).unlink()
    assert run_hoopwire("check-config", str(path)).returncode != 0


def test_kubernetes_probes_answer_on_a_gateway_with_the_configmap(pg, idp, tmp_path):
    """The ConfigMap's config served for real (state shared through the test PostgreSQL, as
    the replicas share theirs): the probe paths answer 200 on its admin port."""
    text = one("ConfigMap")["data"]["hoopwire.toml"]
    cfg = example_served("", pg, idp, tmp_path, toml_text=text)
    pw = tmp_path / "state-password"
    pw.write_text(pg.passwords["app"])
    cfg["state"] = {"url": f"postgresql://app@127.0.0.1:{pg.port}/{APP_DB}",
                    "password_file": str(pw)}
    sts = one("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        for probe in ("livenessProbe", "readinessProbe"):
            url = gw.admin_url + c[probe]["httpGet"]["path"]
            with urllib.request.urlopen(url, timeout=c[probe]["timeoutSeconds"]) as r:
                assert r.status == 200, url
        # a path that does not exist does not answer 200: the check above means something
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(gw.admin_url + "/readyz-not-there", timeout=5)
        r = psql(conninfo(gw, idp.token(), name=cfg["connection"][0]["name"]), "-c", "SELECT 1")
        assert r.returncode == 0, r.stderr


# -- Docker Compose ------------------------------------------------------------------------------

def compose_doc() -> dict:
    with open(os.path.join(COMPOSE, "compose.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_compose_file_is_valid_against_the_compose_specification():
    with open(os.path.join(REPO_ROOT, "tests", "schemas", "compose-spec.json")) as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(schema)
    doc = compose_doc()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    services = doc["services"]
    assert {"hoopwire", "postgres", "mariadb", "http", "prometheus", "devkey"} <= set(services)
    # files the services mount exist beside compose.yaml
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(COMPOSE, src)), src
    # Prometheus scrapes the gateway's admin port
    cfg = tomllib.load(open(os.path.join(COMPOSE, "hoopwire.toml"), "rb"))
    prom = yaml.safe_load(open(os.path.join(COMPOSE, "prometheus.yml")))
    (target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"hoopwire:{listen_port(cfg['admin']['listen'])}"
    published = {p.split(":")[1].split()[0] for p in services["hoopwire"]["ports"]}
    assert published == {str(listen_port(cfg["admin"]["listen"])),
                         *(str(listen_port(c["listen"])) for c in cfg["connection"])}
    # the gateway's upstream is the compose postgres, with the password it sets
    (conn,) = cfg["connection"]
    assert conn["upstream"].split(":")[0] in services
    assert services["hoopwire"]["environment"][conn["password_env"]] == \
        services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_compose_quickstart_prints_tokens_a_real_gateway_accepts(pg, idp, tmp_path):
    """quickstart.sh --print with hoopwire run here instead of in the container: its agent
    token logs in through a gateway running the quick start's own hoopwire.toml (the dev
    issuer, paths, guardrails), and its admin token reads the admin API."""
    key = tmp_path / "dev-key.pem"
    r = run_hoopwire("token", "--create-key", "--key", str(key))
    assert r.returncode == 0, r.stderr
    text = open(os.path.join(COMPOSE, "hoopwire.toml")).read()
    assert "file:///devkey/dev-key.pem.jwks.json" in text
    text = text.replace("/devkey/", f"{tmp_path}/")
    cfg = tomllib.loads(text.replace("/var/lib/hoopwire", str(tmp_path)))
    cfg["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    (conn,) = cfg["connection"]
    conn.update(listen=f"127.0.0.1:{free_port()}", upstream=f"127.0.0.1:{pg.port}",
                database=APP_DB, user="app", password_env="APP_DB_PASSWORD")
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT,
                   HOOPWIRE_CMD=f"{shlex.quote(sys.executable)} -m hoopwire",
                   HOOPWIRE_DEVKEY=str(key), HOOPWIRE_HOST="127.0.0.1",
                   HOOPWIRE_PORT=str(gw.port(conn["name"])), HOOPWIRE_ADMIN=gw.admin_url)
        r = subprocess.run(["bash", os.path.join(COMPOSE, "quickstart.sh"), "--print"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        agent = out.splitlines()[1].strip()
        dsn = re.search(r'psql "(host=[^"]+)"', out).group(1).replace(f"dbname=orders", f"dbname={APP_DB}")
        assert f"password={agent}" in dsn
        q = psql(dsn, "-c", "SELECT 41 + 1")
        assert q.returncode == 0 and "42" in q.stdout, q.stderr
        # the guardrail the printed commands promise
        q = psql(dsn, "-c", "DROP TABLE items")
        assert q.returncode != 0, q.stdout
        assert "items" in psql(dsn, "-c", r"\dt").stdout
        admin = re.search(r"Bearer (\S+?)\"", out).group(1)
        status, body = api(gw, "GET", "/api/v1/approvals", admin)
        assert status == 200, body


# -- systemd -------------------------------------------------------------------------------------

UNIT = os.path.join(DEPLOY, "systemd", "hoopwire.service")


def unit_options() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in open(UNIT, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_hardening_and_reload():
    o = unit_options()
    assert o["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ReadWritePaths": "/var/lib/hoopwire", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": "",
                       "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}.items():
        assert o.get(key) == [value], (key, o.get(key))
    assert o["User"] != ["root"]
    serve = shlex.split(o["ExecStart"][0])
    from hoopwire.cli import build_parser
    assert build_parser().parse_args(serve[1:]).command == "serve"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` warns (exit 0) on an unknown key or a bad value: no output
    at all is the pass. The unit names /usr/local/bin/hoopwire; verify checks the binary
    exists, so the copy verified names this machine's."""
    exe = shutil.which("hoopwire")
    assert exe, "hoopwire is not on PATH (pip install -e .)"
    text = open(UNIT).read().replace("/usr/local/bin/hoopwire", exe)
    unit = tmp_path / "hoopwire.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
