"""deploy/: every manifest parses, and the names and ports that must agree across files do agree.

Nothing here builds an image or talks to Docker, Kubernetes or a Ray cluster: the files are parsed
and cross-checked against each other and against muxgate's own schema and metric definitions.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import tomllib
import types
import warnings
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement

from support import REPO

DEPLOY = REPO / "deploy"
NAMESPACE = "muxgate"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "cuda": DEPLOY / "docker" / "Dockerfile.cuda"}
# Labels Prometheus attaches to every series of a target (deploy/prometheus/prometheus.yml).
TARGET_LABELS = {"instance", "job", "pod", "namespace"}
# Metrics the dashboard uses ahead of the code that exports them (another change adds them to the
# gateway's tenancy metrics), with the labels the dashboard assumes. Once a name is exported for
# real, its real labels are checked instead and the entry here is inert.
PENDING_METRICS: dict[str, set[str]] = {}  # metrics a panel may show before the gateway exports them
# Config keys deploy/ uses ahead of the schema: stripped before validation only while
# MuxgateConfig lacks them, so this test tightens by itself once the product adds the field.
PENDING_CONFIG_KEYS = [("pool", "deploy")]
# The GPU the example worker group is sized for (L4 / A10G class); change with the worker group.
GPU_MEMORY_MB = 24_000


# --- loading ---------------------------------------------------------------------------------------

def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@cache
def k8s_objects() -> tuple[dict, ...]:
    """Every Kubernetes object under deploy/kubernetes and deploy/kuberay."""
    objs = []
    for path in sorted([*(DEPLOY / "kubernetes").glob("*.yaml"), *(DEPLOY / "kuberay").glob("*.yaml")]):
        for doc in yaml_docs(path):
            doc.setdefault("_file", str(path.relative_to(REPO)))
            objs.append(doc)
    return tuple(objs)


def find(kind: str, name: str) -> dict:
    hits = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def configmap_config(name: str = "muxgate-config") -> tuple[dict, str]:
    """The muxgate YAML inside the ConfigMap, and the ConfigMap key holding it."""
    data = find("ConfigMap", name)["data"]
    assert len(data) == 1, "the ConfigMap holds exactly one file, muxgate's config"
    (key, text), = data.items()
    return yaml.safe_load(text), key


def gateway_deployment() -> dict:
    return find("Deployment", "muxgate-gateway")


def gateway_container() -> dict:
    (container,) = gateway_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def rayservice() -> dict:
    return find("RayService", "muxgate-pool")


def serve_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def container_port(container: dict, port) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port name {port!r} is not declared by container {container['name']}"
    return by_name[port]


def env_value(container: dict, name: str) -> str:
    values = [e["value"] for e in container.get("env", []) if e["name"] == name and "value" in e]
    assert values, f"{container['name']} sets no {name}"
    return values[0]


def expand_env(container: dict, text: str) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env_value(container, m.group(1)), text)


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def module_constant(path: Path, name: str):
    """A module-level constant read from source, without importing the module (and Ray with it)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


@cache
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def strip_pending_keys(data: dict) -> dict:
    """Drop the PENDING_CONFIG_KEYS the current schema does not know yet (with a warning)."""
    from gateway.config import MuxgateConfig

    data = json.loads(json.dumps(data))  # a deep copy
    for section, key in PENDING_CONFIG_KEYS:
        model = MuxgateConfig.model_fields[section].annotation
        if key in data.get(section, {}) and key not in model.model_fields:
            warnings.warn(f"deploy config uses {section}.{key} ahead of the schema; stripped before validation")
            del data[section][key]
    return data


# --- Dockerfiles -----------------------------------------------------------------------------------

def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            op, _, rest = current.partition(" ")
            lines.append((op.upper(), rest.strip()))
            current = ""
    return lines


def dockerfile_args(path: Path) -> dict[str, str]:
    """ARG defaults, with ${VAR} references to earlier ARGs resolved."""
    out: dict[str, str] = {}
    for op, rest in dockerfile(path):
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            out[key] = re.sub(r"\$\{(\w+)\}", lambda m: out[m.group(1)], value)
    return out


# --- tests: parsing and consistency of the object set ------------------------------------------------

def test_every_yaml_and_json_under_deploy_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    assert len(files) >= 10, files
    for path in files:
        docs = [json.loads(path.read_text(encoding="utf-8"))] if path.suffix == ".json" else yaml_docs(path)
        assert docs, f"{path} is empty"
    # The YAML embedded in other YAML parses too.
    assert serve_config()["applications"]
    assert configmap_config()[0]["version"] == 1


def test_kubernetes_objects_are_well_formed_and_in_one_namespace():
    seen = set()
    for obj in k8s_objects():
        where = obj["_file"]
        assert {"apiVersion", "kind", "metadata"} <= set(obj), where
        name = obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{where}: {obj['kind']} {name}"
        key = (obj["kind"], name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    assert ("Namespace", NAMESPACE) in seen


def test_kustomization_applies_every_manifest_but_the_secret():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    for res in listed:
        assert (DEPLOY / res).is_file(), res
    manifests = {str(p.relative_to(DEPLOY)) for p in [*(DEPLOY / "kubernetes").glob("*.yaml"),
                                                      *(DEPLOY / "kuberay").glob("*.yaml")]}
    # The Secret is created from a random value by hand (its placeholder is refused on purpose).
    assert listed == manifests - {"kubernetes/secret.yaml"}


def test_services_and_budgets_select_existing_pods():
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in k8s_objects()
                  if o["kind"] in ("Deployment", "StatefulSet")]
    for obj in k8s_objects():
        if obj["kind"] == "Service":
            selector = obj["spec"]["selector"]
        elif obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"]["selector"]["matchLabels"]
        else:
            continue
        assert any(selector.items() <= labels.items() for labels in pod_labels), obj["metadata"]["name"]
    for workload in (o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")):
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            workload["spec"]["template"]["metadata"]["labels"].items(), workload["metadata"]["name"]


# --- the muxgate config ----------------------------------------------------------------------------

def test_cluster_configs_validate_with_muxgate_schema():
    from gateway.config import parse_config

    data, _ = configmap_config()
    config = parse_config(strip_pending_keys(data), "deploy/kubernetes/configmap.yaml")
    assert config.server.host == "0.0.0.0", "in a pod the gateway must listen on the pod IP, not loopback"
    assert config.store.url.startswith("redis://"), "many gateways share one store: Redis, not SQLite"
    assert config.pool.backend == "ray"
    assert not config.keys, "cluster keys live in the store, not in a ConfigMap"
    assert not config.admin.key, "the admin key comes from the Secret, never from the ConfigMap"
    assert not config.zoo.build_on_start, "gateways must not build models; the GPU image carries them"
    ray_up = parse_config(strip_pending_keys(yaml.safe_load((DEPLOY / "ray" / "muxgate.yaml").read_text())),
                          "deploy/ray/muxgate.yaml")
    assert ray_up.server.host == "0.0.0.0" and ray_up.store.url.startswith("redis://")


def test_pending_config_keys_are_the_documented_ones():
    data, _ = configmap_config()
    assert data["pool"]["deploy"] is False, "the gateways attach to the RayService's pool, never deploy it"
    text = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for section, key in PENDING_CONFIG_KEYS:
        assert f"{section}.{key}" in text, f"docs/DEPLOY.md must explain the pending key {section}.{key}"


def test_fractional_gpus_have_an_explicit_device_budget():
    for name, data in (("configmap", configmap_config()[0]),
                       ("ray/muxgate.yaml", yaml.safe_load((DEPLOY / "ray" / "muxgate.yaml").read_text()))):
        pool = data["pool"]
        if 0 < pool["num_gpus"] < 1:
            # The default budget is the replica's share of the card, which leaves no room for CUDA contexts.
            assert pool.get("device_budget_mb"), name
            per_gpu = int(1 / pool["num_gpus"])
            assert per_gpu * pool["device_budget_mb"] <= GPU_MEMORY_MB, f"{name}: more than the GPU holds"


# --- the gateway's port, command and secrets -------------------------------------------------------

def test_gateway_port_agrees_everywhere():
    data, _ = configmap_config()
    port = data["server"]["port"]
    container = gateway_container()
    assert container_port(container, "http") == port
    # liveness and start-up: the process answers; readiness: the store and the pool answer too
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert container_port(container, http["port"]) == port, probe
    service = find("Service", "muxgate-gateway")
    (svc_port,) = service["spec"]["ports"]
    assert container_port(container, svc_port["targetPort"]) == port
    annotations = gateway_deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    # The images' default command serves the embedded default config on the same port.
    assert yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["server"]["port"] == port
    for variant, path in DOCKERFILES.items():
        instructions = dockerfile(path)
        assert [rest for op, rest in instructions if op == "EXPOSE"] == [str(port)], variant
        (health,) = [rest for op, rest in instructions if op == "HEALTHCHECK"]
        assert f"127.0.0.1:{port}/healthz" in health, variant


def test_gateway_command_reads_the_mounted_config_and_joins_the_pool_head():
    container = gateway_container()
    args = [expand_env(container, a) for a in container["args"]]
    assert args[:2] == ["muxgate", "serve"]
    _, config_key = configmap_config()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway_deployment()["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "muxgate-config")
    assert flag(args, "--config") == f"{mounts[config_volume]}/{config_key}"

    address = flag(args, "--ray-address")
    # Ray Client (ray://) cannot carry the streaming DeploymentHandle the gateway uses, so the
    # gateway joins the cluster as a node and attaches to the head's GCS address directly.
    assert not address.startswith("ray://"), address
    host, port = address.rsplit(":", 1)
    assert host == f"{rayservice()['metadata']['name']}-head-svc"
    (head,) = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert container_port(head, "gcs-server") == int(port)
    assert container["command"] == ["/opt/muxgate/bin/gateway-entrypoint.sh"]
    assert env_value(container, "MUXGATE_RAY_ADDRESS") == address


def test_gateway_secrets_exist_and_the_placeholder_admin_key_is_refused():
    from gateway.tenancy.wiring import MIN_ADMIN_KEY_LENGTH

    secret = yaml_docs(DEPLOY / "kubernetes" / "secret.yaml")[0]
    data, _ = configmap_config()
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway_container()["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert data["admin"]["key_env"] in refs, "the admin key variable the config names comes from the Secret"
    assert data["store"].get("pepper_env", "MUXGATE_KEY_PEPPER") in refs
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        if not ref.get("optional"):
            assert ref["key"] in secret["stringData"], ref
    # A copy-pasted manifest must not yield a working admin key that is public in this repository.
    assert len(secret["stringData"]["MUXGATE_ADMIN_KEY"]) < MIN_ADMIN_KEY_LENGTH


# --- Redis -----------------------------------------------------------------------------------------

def test_redis_service_matches_the_store_url_and_persists():
    data, _ = configmap_config()
    url = urlparse(data["store"]["url"])
    service = find("Service", url.hostname)
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == url.port
    redis = find("StatefulSet", "muxgate-redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container_port(container, svc_port["targetPort"]) == 6379
    args = container["args"]
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--maxmemory-policy") == "noeviction", "evicting keys would drop budgets and API keys"
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    data_mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims}
    assert flag(args, "--dir") in data_mounts, "Redis must write its files onto the persistent volume"
    assert find("Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"

    policy = find("NetworkPolicy", "muxgate-redis")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        redis["spec"]["template"]["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    allowed = rule["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= gateway_deployment()["spec"]["template"]["metadata"]["labels"].items()
    assert rule["ports"][0]["port"] == url.port


def test_gateway_settlement_journal_is_on_a_volume_that_outlives_the_container():
    data, _ = configmap_config()
    journal = data["store"]["journal_dir"]
    container = gateway_container()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert journal in mounts, "store.journal_dir must be a mounted volume, not the container's own layer"
    volumes = {v["name"]: v for v in gateway_deployment()["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[journal]]
    assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory", \
        "a disk-backed emptyDir survives a container restart (a memory one counts against the pod's memory)"


# --- the RayService --------------------------------------------------------------------------------

def test_rayservice_deploys_the_pool_application_from_the_builder():
    rs = rayservice()
    assert rs["apiVersion"] == "ray.io/v1"
    config = serve_config()
    (app,) = config["applications"]
    assert app["name"] == module_constant(REPO / "workers" / "serve_app.py", "APP_NAME") == "pool"
    # The gateways are the only HTTP surface, as with `muxgate serve` (deploy_pool disables proxies).
    assert config["proxy_location"] == "Disabled" and app["route_prefix"] is None

    module, _, function = app["import_path"].partition(":")
    source = DEPLOY / "serve" / f"{module}.py"
    assert source.is_file(), app["import_path"]
    tree = ast.parse(source.read_text(encoding="utf-8"))
    (builder,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    assert len(builder.args.args) == 1, "Serve calls an application builder with exactly one argument"
    assert set(app["args"]) <= module_constant(source, "KNOWN_ARGS")

    # Every Ray node reads the same config file as the gateways.
    _, config_key = configmap_config()
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]
                  if volumes[m["name"]].get("configMap", {}).get("name") == "muxgate-config"}
        assert {str(Path(app["args"]["config"]).parent)} == mounts, container["name"]
        assert Path(app["args"]["config"]).name == config_key
        assert env_value(container, "MUXGATE_CONFIG") == app["args"]["config"]
        # Explicit probes: KubeRay's injected worker probe would wait for a Serve proxy there is none of.
        assert container["readinessProbe"]["httpGet"]["path"] == "/api/healthz", container["name"]
        assert "livenessProbe" in container, container["name"]


def test_builder_is_importable_in_both_images():
    for variant, path in DOCKERFILES.items():
        instructions = dockerfile(path)
        env = " ".join(rest for op, rest in instructions if op == "ENV")
        pythonpath = re.search(r"PYTHONPATH=(\S+)", env).group(1).split(":")
        copies = [rest for op, rest in instructions if op == "COPY" and "muxgate_pool_app.py" in rest]
        assert copies, variant
        destination = copies[0].split()[-1].rstrip("/")
        assert destination in pythonpath, variant


def test_gpu_worker_group_fits_the_pool_section():
    data, _ = configmap_config()
    pool = data["pool"]
    cluster = rayservice()["spec"]["rayClusterConfig"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0", "no replica may land on the head"
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    params = group["rayStartParams"]
    gpus, cpus = int(params["num-gpus"]), int(params["num-cpus"])
    assert gpus == int(limits["nvidia.com/gpu"]) and cpus == int(limits["cpu"])
    assert container["resources"]["requests"] == limits, "GPU workers run with Guaranteed QoS"

    per_node = min(int(gpus / pool["num_gpus"]), int(cpus / pool["num_cpus"]))
    assert per_node >= 1
    assert pool["replicas"] <= per_node * group["replicas"], "pool replicas must fit on the GPU workers"
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert pool["torch_threads"] <= pool["num_cpus"]
    # Pinned warm copies of the replicas on a node, plus the object store, inside the memory limit.
    gib = 1024 ** 3
    memory = int(limits["memory"].removesuffix("Gi")) * gib
    pinned = per_node * pool["host_budget_mb"] * 1024 ** 2
    assert pinned + int(params["object-store-memory"]) < memory * 0.75


# --- images and versions ---------------------------------------------------------------------------

def test_images_and_versions_agree():
    version = pyproject()["project"]["version"]
    ray_req, torch_req = requirement("ray"), requirement("torch")
    ray_versions = set()
    for variant, path in DOCKERFILES.items():
        args = dockerfile_args(path)
        ray_versions.add(args["RAY_VERSION"])
        assert args["RAY_VERSION"] in ray_req.specifier, f"{variant}: outside pyproject's {ray_req}"
        assert args["BASE_IMAGE"].startswith(f"rayproject/ray:{args['RAY_VERSION']}-py311"), variant
        assert args["TORCH_VERSION"] in torch_req.specifier, f"{variant}: torch must match pyproject's pin"
        assert [r for op, r in dockerfile(path) if op == "FROM"] == ["${BASE_IMAGE}"]
    assert len(ray_versions) == 1, "gateways, head and workers must run one Ray release"
    (ray_version,) = ray_versions
    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray_version

    cluster = rayservice()["spec"]["rayClusterConfig"]
    images = {"gateway": gateway_container()["image"],
              "head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
              "gpu": cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]}
    assert images["gateway"].endswith(f":{version}-cpu") and images["head"] == images["gateway"]
    assert images["gpu"].endswith(f":{version}-cuda")
    assert images["gpu"].rsplit(":", 1)[0] == images["gateway"].rsplit(":", 1)[0]

    ray_up = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    assert ray_up["docker"]["image"].startswith(f"rayproject/ray:{ray_version}-py311")
    setup = " ".join(ray_up["setup_commands"])
    assert f'"ray[serve]=={ray_version}"' in setup
    assert f'"torch=={dockerfile_args(DOCKERFILES["cuda"])["TORCH_VERSION"]}"' in setup


def test_dockerfiles_run_muxgate_as_non_root_and_copy_what_exists():
    for variant, path in DOCKERFILES.items():
        instructions = dockerfile(path)
        users = [rest for op, rest in instructions if op == "USER"]
        assert users and users[-1] not in ("root", "0"), variant
        assert [rest for op, rest in instructions if op == "ENTRYPOINT"] == ['["muxgate"]'], variant
        ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
        for op, rest in instructions:
            if op != "COPY":
                continue
            sources = [s for s in shlex.split(rest)[:-1] if not s.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"{variant}: COPY {src}"
                top = src.rstrip("/")
                # The .dockerignore excludes everything, then re-includes what the image copies.
                assert any(line.lstrip("!").rstrip("/") == top for line in ignore if line.startswith("!")), \
                    f"{variant}: {src} is not re-included in {path.name}.dockerignore"
        assert "*" in ignore and "!.venv" not in ignore and "!var" not in ignore


def test_gateway_entrypoint_is_valid_bash():
    script = DEPLOY / "docker" / "gateway-entrypoint.sh"
    assert script.stat().st_mode & 0o111, "the entrypoint must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


# --- ray up ----------------------------------------------------------------------------------------

def test_ray_up_cluster_keeps_gcs_off_the_redis_port():
    cluster = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "ray" / "muxgate.yaml").read_text())
    assert cluster["provider"]["type"] in ("aws", "gcp")
    assert cluster["head_node_type"] in cluster["available_node_types"]
    head_start = " ".join(cluster["head_start_ray_commands"])
    gcs_port = int(re.search(r"ray start --head\b.*?--port=(\d+)", head_start).group(1))
    store = urlparse(config["store"]["url"])
    assert store.hostname in ("127.0.0.1", "localhost"), "Redis runs on the head node"
    assert gcs_port != store.port, "Ray's GCS and Redis would both want the same port on the head"
    assert f"--port {store.port}" in head_start, "the head starts Redis on the store.url port"
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{gcs_port}" in worker_start
    assert config["pool"]["ray_address"].endswith(f":{gcs_port}")
    assert "--num-cpus=0" in head_start, "no replica may land on the head (it also runs Redis and the gateway)"
    assert any("muxgate zoo build" in c and config["zoo"]["dir"] in c for c in cluster["worker_setup_commands"])
    workers = [t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) * int(1 / config["pool"]["num_gpus"]) >= config["pool"]["replicas"]


# --- Prometheus ------------------------------------------------------------------------------------

def test_prometheus_scrapes_the_gateways_metrics_path():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    annotations = gateway_deployment()["spec"]["template"]["metadata"]["annotations"]
    port = configmap_config()[0]["server"]["port"]

    k8s = jobs["muxgate-gateway"]
    assert k8s["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NAMESPACE]
    sources = {s for rule in k8s["relabel_configs"] for s in rule.get("source_labels", [])}
    for annotation in annotations:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)
        assert meta in sources, f"prometheus.yml ignores the {annotation} annotation"
    default_path = [r["replacement"] for r in k8s["relabel_configs"]
                    if r.get("target_label") == "__metrics_path__" and "source_labels" not in r]
    assert default_path == ["/metrics"] == [annotations["prometheus.io/path"]]
    assert [r["target_label"] for r in k8s["relabel_configs"] if r.get("target_label") == "pod"] == ["pod"]

    static = jobs["muxgate-gateway-static"]
    assert static["metrics_path"] == "/metrics"
    for job in (k8s, static):  # /metrics needs the admin key (server.public_metrics is off)
        assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    data, _ = configmap_config()
    assert not data["server"].get("public_metrics", False)
    for target in static["static_configs"][0]["targets"]:
        assert target.endswith(f":{port}")


# --- Grafana ---------------------------------------------------------------------------------------

@cache
def exported_metrics() -> dict[str, set[str]]:
    """Every series name muxgate's /metrics can expose, with its labels (from the real definitions)."""
    from prometheus_client import CollectorRegistry

    from gateway.http.metrics import GatewayMetrics
    from gateway.pool_metrics import PoolMetricsCollector

    families: list[tuple[str, str, tuple]] = []
    registries = [GatewayMetrics().registry]
    try:  # tenancy metrics are optional here: their module may change shape under other work
        from gateway.tenancy.metrics import LedgerBufferCollector, TenancyMetrics

        registry = CollectorRegistry()
        TenancyMetrics(registry)
        registries.append(registry)
        stub = types.SimpleNamespace(buffered=0, replayed=0, dropped=0, pending=0, journal_errors=0, journal=None)
        families += [(f.name, f.type, tuple(f._labelnames)) for f in LedgerBufferCollector(stub).collect()]
    except (ImportError, TypeError):
        pass
    for registry in registries:
        for collector in registry._collector_to_names:
            families.append((collector._name, collector._type, tuple(collector._labelnames)))
    families += [(f.name, f.type, tuple(f._labelnames)) for f in PoolMetricsCollector().collect()]

    out: dict[str, set[str]] = {}
    for name, kind, labels in families:
        if kind == "counter":
            out[f"{name}_total"] = set(labels)
        elif kind == "histogram":
            out[f"{name}_bucket"] = set(labels) | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = set(labels)
        else:
            out[name] = set(labels)
    return out


def dashboard_exprs(dash: dict) -> list[tuple[dict, str]]:
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel, target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((var, var["query"]["query"]))
    return out


def test_dashboard_uses_only_metrics_and_labels_muxgate_exports():
    dash = json.loads((DEPLOY / "grafana" / "muxgate-dashboard.json").read_text())
    exported = exported_metrics()
    # Sanity: the definitions were read, counters carry _total, histograms _bucket.
    assert {"muxgate_requests_total", "muxgate_ttft_seconds_bucket", "muxgate_pool_swap_in_seconds_total",
            "muxgate_pool_bytes", "muxgate_requests_in_flight"} <= set(exported)
    known = {**PENDING_METRICS, **exported}
    used = set()
    for owner, expr in dashboard_exprs(dash):
        names = set(re.findall(r"\bmuxgate_\w+", expr))
        assert names, f"{owner.get('title', owner.get('name'))}: {expr}"
        unknown = names - set(known)
        assert not unknown, f"{owner.get('title')}: unknown metrics {unknown} in {expr}"
        used |= names
        for metric, matchers in re.findall(r"\b(muxgate_\w+)\{([^}]*)\}", expr):
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert labels <= known[metric] | TARGET_LABELS, f"{metric}{{{matchers}}}: unknown labels"
        grouped = {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                   for label in group.split(",") if label.strip()}
        available = set().union(*(known[n] for n in names)) | TARGET_LABELS
        assert grouped <= available, f"{owner.get('title')}: grouping by {grouped - available} in {expr}"
        if "histogram_quantile" in expr:
            assert re.search(r"by \([^)]*\ble\b", expr), f"histogram_quantile needs `le` kept: {expr}"
    for panel in dash["panels"]:
        pending = {n for t in panel.get("targets", []) for n in re.findall(r"\bmuxgate_\w+", t["expr"])
                   if n in PENDING_METRICS and n not in exported}
        if pending:
            assert panel["description"].startswith("PENDING"), panel["title"]
    # The panels the deployment promises.
    for metric in ("muxgate_requests_total", "muxgate_request_latency_seconds_bucket", "muxgate_ttft_seconds_bucket",
                   "muxgate_tokens_total", "muxgate_errors_total", "muxgate_requests_in_flight",
                   "muxgate_pool_resident_models", "muxgate_pool_bytes", "muxgate_pool_loads_total",
                   "muxgate_pool_evictions_total", "muxgate_pool_swap_in_seconds_total", "muxgate_pool_queue_depth",
                   *PENDING_METRICS):
        assert metric in used, f"no panel shows {metric}"


def test_dashboard_is_importable():
    dash = json.loads((DEPLOY / "grafana" / "muxgate-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), f"{panel['title']}: every panel says what it shows"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")) + [DEPLOY / "kuberay" / "rayservice.yaml"],
                         ids=lambda p: p.name)
def test_manifests_explain_themselves(path):
    """Conventions: comments say why; every manifest opens with one."""
    assert path.read_text(encoding="utf-8").lstrip().startswith("#"), path
