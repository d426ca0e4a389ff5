#!/usr/bin/env python3
"""loopvol's end-to-end tier: both drivers against a real one-node Kubernetes.

Brings up the cluster kit from ../shared/k8s (relative to the repository root)
in a short scratch dir, runs loopvol-csi and the CSI sidecars as host
processes (the sidecars all started at once, as in a pod), installs the
FlexVolume driver, and runs each case below against kubelet, the scheduler,
the controllers and the sidecars. After every case it checks that nothing of
ours is left: no mount under the kubelet's pods and plugins dirs or the
FlexVolume state dir, no loop device backed by a pool file, no image in the
pool. `cluster.sh down` always runs at the end.

Without the kit (or without root) the tier skips loudly; with
LOOPVOL_REQUIRE_K8S=1 (CI) a skip is a failure. Prints each case's wall time
and a closing `e2e: N passed, N failed` line.

    tests/e2e/e2e.py [CASE...]          # all cases, or only the named ones
    LOOPVOL_E2E_KEEP=1 tests/e2e/e2e.py  # keep the scratch dir's logs

Stdlib only; kubectl is the kit's. Pods use hostNetwork and the kit's local
busybox image; `kubectl logs` does not work there, so logs are read from
DIR/pod-logs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT.parent / "shared" / "k8s"
REQUIRE = os.environ.get("LOOPVOL_REQUIRE_K8S") == "1"
IMAGE = "loopvol.test/busybox:1"
DRIVER = "loopvol.csi.io"
FLEX_DRIVER = "loopvol/loopvol"
GI = 1 << 30
MI = 1 << 20


class CaseFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def skip(reason: str) -> None:
    print(f"SKIPPED: k8s e2e: {reason}", flush=True)
    print("  (the cluster kit lives in ../shared/k8s beside the repository; run as root)", flush=True)
    if REQUIRE:
        print("LOOPVOL_REQUIRE_K8S=1: a skipped e2e tier is a failure", flush=True)
        print("e2e: 0 passed, 1 failed")
        sys.exit(1)
    sys.exit(0)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CaseFailed(what)


def wait_until(what: str, fn, timeout: float = 90, interval: float = 0.5):
    """Polls fn until it returns something truthy; bounded, never asserted on time."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except CaseFailed:
            raise
        except Exception as e:  # noqa: BLE001 - a transient kubectl error is retried
            last = e
            if time.monotonic() >= deadline:
                raise CaseFailed(f"{what}: gave up after {timeout:.0f}s: {last}") from e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise CaseFailed(f"{what}: gave up after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


# ----------------------------------------------------------------- the cluster


class Cluster:
    def __init__(self, exe_dir: Path):
        self.exe_dir = exe_dir
        self.dir = Path(tempfile.mkdtemp(prefix="lve2e.", dir="/tmp"))
        self.pool = self.dir / "pool"
        # The central controller's own, empty pool (the resizer Deployment's).
        self.central_pool = self.dir / "central-pool"
        self.central_socket = self.dir / "central" / "csi.sock"
        self.flex_state = self.dir / "flex"
        self.env: dict[str, str] = {}
        self.up_done = False

    # -- processes
    def kit(self, *args: str, check_rc: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.run([str(KIT / "cluster.sh"), *args], capture_output=True, text=True, env=e)
        if check_rc and p.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p

    def up(self) -> None:
        log(f"cluster up in {self.dir}")
        t = time.monotonic()
        self.up_done = True
        self.kit("up", str(self.dir))
        for line in (self.dir / "env").read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                self.env[k] = v.strip("'\"")
        self.kroot = Path(self.env["KIT_KUBELET_ROOT"])
        self.flexdir = Path(self.env["KIT_VOLUME_PLUGIN_DIR"])
        self.node = self.env["KIT_NODE_NAME"]
        self.socket = self.kroot / "plugins" / DRIVER / "csi.sock"
        log(f"cluster up ({time.monotonic() - t:.1f}s)")

    def down(self) -> None:
        if not self.up_done:
            return
        log("cluster down")
        p = self.kit("down", str(self.dir), check_rc=False)
        sys.stdout.write(p.stderr[-2000:])
        if p.returncode != 0:
            log(f"cluster.sh down exited {p.returncode}")

    def kubectl(self, *args: str, input: str | None = None, check_rc: bool = True) -> str:
        p = subprocess.run(
            [str(self.dir / "bin" / "kubectl"), "--kubeconfig", self.env["KUBECONFIG"], *args],
            input=input, capture_output=True, text=True,
        )
        if check_rc and p.returncode != 0:
            raise CaseFailed(f"kubectl {' '.join(args)}: {p.stderr.strip()[-1500:]}")
        return p.stdout

    def apply(self, *objs: dict) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def get(self, kind: str, name: str, ns: str | None = "default") -> dict | None:
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        if ns:
            args += ["-n", ns]
        out = self.kubectl(*args)
        return json.loads(out) if out.strip() else None

    def delete(self, kind: str, *names: str, wait: bool = True) -> None:
        if names:
            self.kubectl("delete", kind, *names, "--ignore-not-found", f"--wait={str(wait).lower()}", "--timeout=120s")

    # -- the drivers
    def start_driver(self) -> None:
        """The node plugin; it applies its PVs' VolumeAttributesClasses, which
        the central controller only checks."""
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.pool.mkdir(parents=True, exist_ok=True)
        self.kit("run", str(self.dir), "loopvol-csi", str(self.exe_dir / "loopvol-csi"),
                 "--endpoint", f"unix://{self.socket}", "--node-id", self.node, "--pool", str(self.pool),
                 "--log-format", "json", "--follow-volume-attributes-classes",
                 f"--kubeconfig={self.dir / 'kubeconfig'}")
        wait_until("the driver's socket", self.socket.exists, timeout=30)

    def start_central_controller(self) -> None:
        """What deploy/'s resizer Deployment runs beside csi-resizer: a
        loopvol-csi with an empty pool of its own that defers expansion and
        ModifyVolume to the node holding the volume."""
        self.central_socket.parent.mkdir(parents=True, exist_ok=True)
        self.central_pool.mkdir(parents=True, exist_ok=True)
        self.kit("run", str(self.dir), "loopvol-controller", str(self.exe_dir / "loopvol-csi"),
                 "--endpoint", f"unix://{self.central_socket}", "--node-id", "central",
                 "--pool", str(self.central_pool), "--log-format", "json",
                 "--defer-expansion-to-node", "--defer-modify-to-node")
        wait_until("the central controller's socket", self.central_socket.exists, timeout=30)

    def stop_driver(self) -> None:
        self.kit("stop", str(self.dir), "loopvol-csi")

    def start_sidecars(self) -> None:
        """All at once, as the containers of a pod start (this is what made
        concurrent Probes collide, issue 13)."""
        s = str(self.socket)
        sidecars = [
            ["csi-node-driver-registrar", f"--csi-address={s}", f"--kubelet-registration-path={s}",
             f"--plugin-registration-path={self.env['KIT_PLUGINS_REGISTRY']}"],
            ["csi-provisioner", f"--csi-address={s}", "--node-deployment=true", "--strict-topology=true",
             "--immediate-topology=false", "--enable-capacity=true", "--capacity-ownerref-level=-1",
             "--extra-create-metadata=true", "--default-fstype=ext4", "--leader-election=false",
             "--capacity-poll-interval=5s"],
            # As in deploy/: the resizer talks to the central controller, not the node plugin.
            ["csi-resizer", f"--csi-address={self.central_socket}", "--leader-election=false",
             "--handle-volume-inuse-error=false"],
            ["csi-snapshotter", f"--csi-address={s}", "--node-deployment=true", "--leader-election=false",
             "--feature-gates=CSIVolumeGroupSnapshot=true"],
            ["snapshot-controller", "--leader-election=false", "--enable-distributed-snapshotting=true",
             "--feature-gates=CSIVolumeGroupSnapshot=true"],
            ["livenessprobe", f"--csi-address={s}", "--health-port=19808"],
        ]
        procs = [subprocess.Popen([str(KIT / "cluster.sh"), "sidecar", str(self.dir), *argv],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for argv in sidecars]
        for p, argv in zip(procs, sidecars):
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"starting {argv[0]} failed: {err[-1000:]}")
        self.sidecars = [argv[0] for argv in sidecars]
        self.sidecar_args = {argv[0]: argv[1:] for argv in sidecars}

    def restart_exited_sidecars(self) -> list[str]:
        """What kubelet does for a pod's containers: csi-provisioner,
        csi-resizer and csi-snapshotter exit when they lose the driver's
        connection ("Lost connection to CSI driver, exiting")."""
        exited = [s for s in self.sidecars if not self.alive(s)]
        for name in exited:
            self.kit("sidecar", str(self.dir), name, *self.sidecar_args[name])
        return exited

    def alive(self, ident: str) -> bool:
        f = self.dir / "pids" / f"{ident}.pid"
        if not f.exists():
            return False
        pid, start = f.read_text().split()[:2]
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        # state is field 3 of stat, the start time field 22 (as cluster.sh checks)
        return stat[0] != "Z" and stat[19] == start

    def install_flex(self) -> Path:
        config = self.dir / "flex.json"
        config.write_text(json.dumps({"pool": str(self.pool), "stateDir": str(self.flex_state),
                                      "defaultFsType": "ext4", "defaultSize": "1Gi"}))
        out = subprocess.run([str(self.exe_dir / "loopvol"), "install", "--plugin-dir", str(self.flexdir),
                              "--config", str(config)], capture_output=True, text=True)
        if out.returncode != 0 or '"Success"' not in out.stdout:
            raise RuntimeError(f"loopvol install failed: {out.stdout} {out.stderr}")
        return config

    # -- pods
    def pod_logs(self, name: str) -> str:
        root = self.dir / "pod-logs"
        texts = []
        for d in sorted(root.glob(f"default_{name}_*")):
            for f in sorted(d.glob("*/*.log")):
                for line in f.read_text(errors="replace").splitlines():
                    # CRI format: <time> <stream> <P|F> <text>
                    parts = line.split(" ", 3)
                    texts.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(texts)

    def events(self, name: str) -> str:
        return self.kubectl("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}",
                            "-o", "custom-columns=REASON:.reason,MESSAGE:.message", "--no-headers")

    def run_pod(self, spec: dict, timeout: float = 120) -> str:
        """Runs a pod to completion; its script's exit status is the check."""
        name = spec["metadata"]["name"]
        self.apply(spec)

        def finished():
            p = self.get("pod", name)
            phase = (p or {}).get("status", {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        try:
            phase = wait_until(f"pod {name} to finish", finished, timeout=timeout)
        except CaseFailed as e:
            raise CaseFailed(f"{e}\nevents:\n{self.events(name)}\nlog:\n{self.pod_logs(name)}") from None
        logs = self.pod_logs(name)
        if phase != "Succeeded":
            raise CaseFailed(f"pod {name} failed; log:\n{logs}\nevents:\n{self.events(name)}")
        self.delete("pod", name)
        return logs

    def start_pod(self, spec: dict, ready_line: str = "ready", timeout: float = 120) -> dict:
        """Starts a long-running pod and waits until its log says it is ready."""
        name = spec["metadata"]["name"]
        self.apply(spec)

        def ready():
            p = self.get("pod", name)
            if (p or {}).get("status", {}).get("phase") == "Failed":
                raise CaseFailed(f"pod {name} failed: {self.pod_logs(name)}")
            return p if ready_line in self.pod_logs(name).splitlines() else None

        try:
            return wait_until(f"pod {name} to be ready", ready, timeout=timeout)
        except CaseFailed as e:
            raise CaseFailed(f"{e}\nevents:\n{self.events(name)}") from None

    def pod_volume_dir(self, pod: dict, plugin: str, volume: str) -> Path:
        """Where kubelet mounted a pod's volume on the host."""
        uid = pod["metadata"]["uid"]
        return self.kroot / "pods" / uid / "volumes" / plugin / volume

    # -- leftovers
    def leftovers(self) -> list[str]:
        found = []
        watched = [self.kroot / "pods", self.kroot / "plugins" / "kubernetes.io", self.flex_state, self.pool]
        for mp in mounts():
            if any(mp == str(w) or mp.startswith(f"{w}/") for w in watched):
                # kubelet's own service-account token tmpfs of a pod being torn down
                if "kubernetes.io~projected" in mp:
                    found.append(f"mount {mp} (projected)")
                else:
                    found.append(f"mount {mp}")
        for dev, backing in loop_devices():
            if backing.startswith(f"{self.pool}/"):
                found.append(f"loop device {dev} -> {backing}")
        for sub in ("volumes", "snapshots"):
            d = self.pool / sub
            if d.is_dir():
                found += [f"image {f}" for f in sorted(d.glob("*.img"))]
        return found

    def forget_flex_volume(self, vol_id: str) -> None:
        """FlexVolume has no delete call: a case removes the images it made."""
        wait_until(f"{vol_id} detached", lambda: not any(b.startswith(f"{self.pool}/volumes/{vol_id}.")
                                                         for _, b in loop_devices()), timeout=60)
        for f in (self.pool / "volumes").glob(f"{vol_id}.*"):
            f.unlink()


def _proc_state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        out.append(mp.replace("\\040", " "))
    return out


def loop_devices() -> list[tuple[str, str]]:
    out = []
    for d in Path("/sys/block").glob("loop*"):
        try:
            backing = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        out.append((f"/dev/{d.name}", backing.removesuffix(" (deleted)")))
    return out


# ----------------------------------------------------------------- object makers


def pod(name: str, script: str, volumes: list[dict], mounts_: list[dict] | None = None,
        devices: list[dict] | None = None, security: dict | None = None) -> dict:
    container = {"name": "c", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", script],
                 "volumeMounts": mounts_ if mounts_ is not None else [{"name": "v", "mountPath": "/data"}]}
    if devices:
        container["volumeDevices"] = devices
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"hostNetwork": True, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "securityContext": security or {}, "containers": [container], "volumes": volumes}}


def pvc_vol(claim: str, name: str = "v", read_only: bool = False) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def flex_vol(name: str, vol_id: str, fs: str = "ext4", size: str = "1Gi", read_only: bool = False,
             **options: str) -> dict:
    return {"name": name, "flexVolume": {"driver": FLEX_DRIVER, "fsType": fs, "readOnly": read_only,
                                         "options": {"volumeID": vol_id, "size": size, **options}}}


def pvc(name: str, sc: str = "loopvol-ext4", size: str = "1Gi", block: bool = False, source: dict | None = None,
        labels: dict | None = None) -> dict:
    spec = {"storageClassName": sc, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if block:
        spec["volumeMode"] = "Block"
    if source:
        spec["dataSource"] = source
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


# ----------------------------------------------------------------- the cases
# Each takes the cluster, raises CaseFailed (or any error) on failure and
# deletes what it created; the runner then checks for leftovers.


def csi_concurrent_liveness_probes(c: Cluster) -> None:
    """livenessprobe's /healthz calls Probe once per request; kubelet, the
    sidecars and the livenessprobe probe at once in a real pod. 64 concurrent
    health checks must all be healthy (a failed one restarts the driver's
    container; concurrent Probes used to collide on one temp file)."""
    import concurrent.futures
    import urllib.error
    import urllib.request

    def healthz(_):
        try:
            with urllib.request.urlopen("http://127.0.0.1:19808/healthz", timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    wait_until("livenessprobe serving", lambda: healthz(0)[0] == 200, timeout=30)
    for _ in range(4):
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(healthz, range(64)))
        bad = [a for a in answers if a[0] != 200]
        check(not bad, f"{len(bad)} of 64 concurrent health checks failed: {bad[:3]}")


GRPCIO = "grpcio==1.85.3"
GRPC_CLIENT = r"""
import sys, grpc
sock = sys.argv[1]
# Default options, then :authority forced to the socket path, as gRPC C-core
# and grpc-java send it; h2 alone resets both forms (issue 13).
for options in ([], [("grpc.default_authority", sock)]):
    channel = grpc.insecure_channel("unix:" + sock, options=options)
    ready = channel.unary_unary("/csi.v1.Identity/Probe")(b"", timeout=30)
    assert ready == b"\n\x02\x08\x01", (options, ready)
    info = channel.unary_unary("/csi.v1.Identity/GetPluginInfo")(b"", timeout=30)
    assert b"loopvol.csi.io" in info, (options, info)
    print("served", options)
"""


def csi_grpc_core_client_is_served(c: Cluster) -> None:
    """A gRPC C-core client (Python grpcio, from PyPI into a venv under
    target/) calls the driver's real socket, also with the socket path as
    :authority."""
    venv = ROOT / "target" / "e2e-venv"
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import grpc"], capture_output=True).returncode != 0 if python.exists() else True:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", GRPCIO], capture_output=True, text=True)
        check(pip.returncode == 0, f"pip install {GRPCIO}: {pip.stderr[-1500:]}")
    out = subprocess.run([str(python), "-c", GRPC_CLIENT, str(c.socket)], capture_output=True, text=True, timeout=120)
    check(out.returncode == 0 and out.stdout.count("served") == 2, f"grpcio client: {out.stdout} {out.stderr[-2000:]}")


def csi_dynamic_provisioning_keeps_data(c: Cluster) -> None:
    """WaitForFirstConsumer + storage capacity tracking; data survives pod
    delete/recreate; deleting the PVC removes the image."""

    def capacity():
        out = json.loads(c.kubectl("get", "csistoragecapacities", "-A", "-o", "json"))
        return [i for i in out["items"] if i.get("storageClassName") == "loopvol-ext4"
                and _quantity(i.get("capacity", "0")) > GI]

    caps = wait_until("CSIStorageCapacity for loopvol-ext4", capacity, timeout=60)
    check(caps[0]["nodeTopology"]["matchLabels"].get(f"topology.{DRIVER}/node") == c.node,
          f"capacity is per node: {caps[0]['nodeTopology']}")
    c.apply(pvc("data"))
    time.sleep(2)
    claim = c.get("pvc", "data")
    check(claim["status"]["phase"] == "Pending", "WaitForFirstConsumer: no volume before a pod")
    c.run_pod(pod("writer", "set -e; grep ' /data ext4 ' /proc/mounts; echo kept-42 > /data/f; sync", [pvc_vol("data")]))
    pv = c.get("pvc", "data")["spec"]["volumeName"]
    handle = c.get("pv", pv, ns=None)["spec"]["csi"]["volumeHandle"]
    image = c.pool / "volumes" / f"{handle}.img"
    check(image.exists(), f"{image} exists")
    c.run_pod(pod("reader", "set -e; test \"$(cat /data/f)\" = kept-42", [pvc_vol("data")]))
    c.delete("pvc", "data")
    wait_until(f"PV {pv} deleted", lambda: c.get("pv", pv, ns=None) is None, timeout=60)
    check(not image.exists(), f"deleting the PVC removed {image}")


def flex_inline_ext4_xfs_fsgroup_readonly(c: Cluster) -> None:
    """FlexVolume inline volumes: ext4 and xfs side by side with fsGroup, then
    the ext4 one again read-only with its data."""
    vols = [flex_vol("e4", "e2e-flex-e4", "ext4", "1Gi"), flex_vol("xf", "e2e-flex-xf", "xfs", "400Mi")]
    mounts_ = [{"name": "e4", "mountPath": "/e4"}, {"name": "xf", "mountPath": "/xf"}]
    script = ("set -e; grep ' /e4 ext4 ' /proc/mounts; grep ' /xf xfs ' /proc/mounts; "
              "test \"$(stat -c %g /e4)\" = 2000; test \"$(stat -c %g /xf)\" = 2000; "
              "echo flex-e4 > /e4/f; echo flex-xf > /xf/f; sync; df -k /e4 /xf")
    c.run_pod(pod("flex-rw", script, vols, mounts_, security={"fsGroup": 2000}))
    ro = [flex_vol("e4", "e2e-flex-e4", "ext4", "1Gi", read_only=True)]
    c.run_pod(pod("flex-ro", "set -e; grep ' /e4 ext4 ro' /proc/mounts; test \"$(cat /e4/f)\" = flex-e4; "
                  "if touch /e4/g 2>/dev/null; then echo writable; exit 1; fi",
                  ro, [{"name": "e4", "mountPath": "/e4"}]))
    c.forget_flex_volume("e2e-flex-e4")
    c.forget_flex_volume("e2e-flex-xf")


def flex_bad_option_is_a_pod_event(c: Cluster) -> None:
    """A bad option fails the mount with a clear pod event, and leaks nothing."""
    c.apply(pod("flex-bad", "true", [flex_vol("v", "e2e-flex-bad", size="lots")]))

    def event():
        ev = c.events("flex-bad")
        return ev if "FailedMount" in ev else None

    ev = wait_until("a FailedMount event", event, timeout=90)
    check("size" in ev and "lots" in ev, f"the event names the option: {ev}")
    c.delete("pod", "flex-bad")
    check(not (c.pool / "volumes" / "e2e-flex-bad.img").exists(), "no image was made for a bad option")


def csi_snapshot_restore_and_clone(c: Cluster) -> None:
    """VolumeSnapshot of a PVC, a PVC restored from it and a clone of the PVC
    both hold the data."""
    c.apply(pvc("src"))
    c.run_pod(pod("src-writer", "set -e; echo snap-me > /data/f; sync", [pvc_vol("src")]))
    c.apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "snap"},
             "spec": {"volumeSnapshotClassName": "loopvol", "source": {"persistentVolumeClaimName": "src"}}})
    wait_until("snapshot ready", lambda: (c.get("volumesnapshot", "snap") or {}).get("status", {}).get("readyToUse"))
    c.apply(pvc("restored", source={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}),
            pvc("cloned", source={"kind": "PersistentVolumeClaim", "name": "src"}))
    c.run_pod(pod("from-snap", "set -e; test \"$(cat /data/f)\" = snap-me", [pvc_vol("restored")]))
    c.run_pod(pod("from-clone", "set -e; test \"$(cat /data/f)\" = snap-me", [pvc_vol("cloned")]))
    c.delete("pvc", "restored", "cloned")
    c.delete("volumesnapshot", "snap")
    c.delete("pvc", "src")
    _wait_no_pvs(c)
    wait_until("snapshot images removed", lambda: not list((c.pool / "snapshots").glob("*.img")), timeout=60)


def csi_expansion_xfs_online(c: Cluster) -> None:
    """The resizer grows a mounted xfs volume; the pod sees the new size
    without a restart."""
    c.apply(pvc("grow-xfs", sc="loopvol-xfs", size="512Mi"))
    p = c.start_pod(pod("grow-xfs", "echo ready; sleep 3600", [pvc_vol("grow-xfs")]))
    pv = c.get("pvc", "grow-xfs")["spec"]["volumeName"]
    mnt = c.pod_volume_dir(p, "kubernetes.io~csi", pv) / "mount"
    before = _fs_bytes(mnt)
    check(before < 600 * MI, f"xfs starts at about 512Mi: {before}")
    c.kubectl("patch", "pvc", "grow-xfs", "-p", '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}')
    wait_until("PVC capacity 1Gi", lambda: c.get("pvc", "grow-xfs")["status"].get("capacity", {}).get("storage") == "1Gi",
               timeout=120)
    wait_until("xfs grown online", lambda: _fs_bytes(mnt) > 900 * MI, timeout=60)
    check(c.get("pod", "grow-xfs")["status"]["phase"] == "Running", "the pod kept running")
    c.delete("pod", "grow-xfs")
    c.delete("pvc", "grow-xfs")
    _wait_no_pvs(c)


def csi_expansion_ext4_grows_at_next_stage(c: Cluster) -> None:
    """ext4 online growth needs CAP_SYS_RESOURCE, which these machines lack:
    the image grows now and the filesystem when the volume is next staged."""
    c.apply(pvc("grow-e4", size="256Mi"))
    c.start_pod(pod("grow-e4", "echo ready; sleep 3600", [pvc_vol("grow-e4")]))
    c.kubectl("patch", "pvc", "grow-e4", "-p", '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}')
    pv = c.get("pvc", "grow-e4")["spec"]["volumeName"]

    def pv_grown():
        return _quantity(c.get("pv", pv, ns=None)["spec"]["capacity"]["storage"]) >= GI

    # The resizer's central controller defers to the node: kubelet's
    # NodeExpandVolume grows the image now; the filesystem cannot grow while
    # it is mounted here (EPERM), so the pod keeps its old size.
    wait_until("PV resized by the resizer", pv_grown, timeout=120)
    handle = c.get("pv", pv, ns=None)["spec"]["csi"]["volumeHandle"]
    image = c.pool / "volumes" / f"{handle}.img"
    wait_until("image grown by NodeExpandVolume", lambda: image.stat().st_size >= GI, timeout=120)
    c.delete("pod", "grow-e4")
    c.run_pod(pod("grow-e4-again", "set -e; df -k /data; test $(df -k /data | awk 'NR==2 {print $2}') -gt 900000",
                  [pvc_vol("grow-e4")]))
    wait_until("PVC capacity 1Gi", lambda: c.get("pvc", "grow-e4")["status"].get("capacity", {}).get("storage") == "1Gi",
               timeout=60)
    c.delete("pvc", "grow-e4")
    _wait_no_pvs(c)


def csi_modify_volume_reaches_the_node(c: Cluster) -> None:
    """A PVC switches VolumeAttributesClass under a running pod. The resizer
    calls ControllerModifyVolume on the central controller, which has an
    empty pool and only checks the parameters (--defer-modify-to-node); the
    resizer then sets the PV's class, and the node plugin, watching PVs
    (--follow-volume-attributes-classes), applies it: the pod's blkio/io
    cgroup limits for the volume's loop device change and direct I/O is
    switched off."""
    vac = lambda name, params: {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass",  # noqa: E731
                                "metadata": {"name": name}, "driverName": DRIVER, "parameters": params}
    c.apply(vac("e2e-vac-a", {"readIOPS": "100", "writeIOPS": "100"}),
            vac("e2e-vac-b", {"readIOPS": "200", "directIO": "false"}),
            vac("e2e-vac-bad", {"fsType": "xfs"}))
    claim = pvc("modify")
    claim["spec"]["volumeAttributesClassName"] = "e2e-vac-a"
    c.apply(claim)
    p = c.start_pod(pod("modify", "echo ready; sleep 3600", [pvc_vol("modify")]))
    uid = p["metadata"]["uid"]
    pv = c.get("pvc", "modify")["spec"]["volumeName"]
    handle = c.get("pv", pv, ns=None)["spec"]["csi"]["volumeHandle"]
    loop = wait_until("the volume's loop device", lambda: next(
        (Path(d).name for d, b in loop_devices() if b.endswith(f"/{handle}.img")), None), timeout=30)
    majmin = Path(f"/sys/block/{loop}/dev").read_text().strip()
    dio = Path(f"/sys/block/{loop}/loop/dio")
    limits = lambda: _pod_io_limits(uid, majmin)  # noqa: E731
    # Class A came with CreateVolume's mutable parameters.
    wait_until("class A's limits in the pod's cgroup",
               lambda: limits() if limits() == {"riops": 100, "wiops": 100} else None, timeout=30)
    check(dio.read_text().strip() == "1", f"direct I/O is on by default: dio={dio.read_text().strip()}")
    t = time.monotonic()
    c.kubectl("patch", "pvc", "modify", "--type=merge", "-p", '{"spec":{"volumeAttributesClassName":"e2e-vac-b"}}')
    wait_until("PVC status.currentVolumeAttributesClassName e2e-vac-b",
               lambda: c.get("pvc", "modify")["status"].get("currentVolumeAttributesClassName") == "e2e-vac-b",
               timeout=60)
    # No riops/wiops key: that rule is gone (unlimited).
    got = wait_until("class B's limits in the pod's cgroup",
                     lambda: limits() if limits() == {"riops": 200} else None, timeout=60)
    wait_until("direct I/O switched off", lambda: dio.read_text().strip() == "0", timeout=30)
    # cgroup v1 throttles only a cgroup's own tasks: the containers' cgroups
    # (made after NodePublish) carry the rule too.
    containers = _container_io_limits(uid, majmin)
    if containers is not None:
        check(len(containers) >= 1, "the pod has container cgroups")
        wait_until("class B's limits in every container cgroup of the pod",
                   lambda: all(c_ == {"riops": 200} for c_ in _container_io_limits(uid, majmin) or []), timeout=30)
    log(f"class B in force {time.monotonic() - t:.1f}s after the patch: {got}")
    central = (c.dir / "logs" / "loopvol-controller.log").read_text(errors="replace")
    check(any("owning node applies" in line and handle in line for line in central.splitlines()),
          "the central controller deferred the modify to the node")
    node = (c.dir / "logs" / "loopvol-csi.log").read_text(errors="replace")
    check(any("applied the PV's VolumeAttributesClass" in line and handle in line and "e2e-vac-b" in line
              for line in node.splitlines()), "the node plugin logged applying class B")

    # A class with a parameter that is not mutable: the central controller
    # refuses it, the PVC says Infeasible, and the volume keeps class B.
    c.kubectl("patch", "pvc", "modify", "--type=merge", "-p", '{"spec":{"volumeAttributesClassName":"e2e-vac-bad"}}')
    wait_until("PVC modify status Infeasible", lambda: (c.get("pvc", "modify")["status"].get("modifyVolumeStatus")
                                                         or {}).get("status") == "Infeasible", timeout=60)
    check(c.get("pvc", "modify")["status"].get("currentVolumeAttributesClassName") == "e2e-vac-b", "still class B")
    check(limits() == {"riops": 200}, f"class B's limits unchanged: {limits()}")

    # The node plugin is down while the PVC goes back to class A: the
    # resizer records it on the PV all the same, and the node applies it
    # from its initial list when it is back.
    c.stop_driver()
    c.kubectl("patch", "pvc", "modify", "--type=merge", "-p", '{"spec":{"volumeAttributesClassName":"e2e-vac-a"}}')
    wait_until("PVC status.currentVolumeAttributesClassName e2e-vac-a while the node plugin is down",
               lambda: c.get("pvc", "modify")["status"].get("currentVolumeAttributesClassName") == "e2e-vac-a",
               timeout=60)
    check(limits() == {"riops": 200}, f"nothing applied while the node plugin is down: {limits()}")
    c.start_driver()
    _restart_sidecars_after_driver(c)
    wait_until("class A's limits again after the node plugin's restart",
               lambda: limits() if limits() == {"riops": 100, "wiops": 100} else None, timeout=60)
    check(dio.read_text().strip() == "0", "class A names no directIO: it stays off")

    check(c.get("pod", "modify")["status"]["phase"] == "Running", "the pod kept running")
    c.delete("pod", "modify")
    c.delete("pvc", "modify")
    _wait_no_pvs(c)
    c.delete("volumeattributesclass", "e2e-vac-a", "e2e-vac-b", "e2e-vac-bad")


def _pod_cgroup(uid: str) -> tuple[Path, bool]:
    """A pod's cgroup (kubelet's cgroupfs or systemd layout) in the hierarchy
    that controls block I/O, and whether that is cgroup v1."""
    root = Path("/sys/fs/cgroup")
    names = {f"pod{uid}", f"kubepods-pod{uid.replace('-', '_')}.slice"}
    v1 = root / "blkio"
    base = v1 if (v1 / "kubepods").is_dir() or (v1 / "kubepods.slice").is_dir() else root
    dirs = [d for top in ("kubepods", "kubepods.slice") for d in [base / top, *(base / top).rglob("*")]
            if d.is_dir() and (d.name in names or d.name.endswith(f"-pod{uid.replace('-', '_')}.slice"))]
    check(len(dirs) == 1, f"one cgroup of pod {uid} under {base}: {dirs}")
    return dirs[0], base == v1


def _io_limits_in(cgroup: Path, v1: bool, majmin: str) -> dict[str, int]:
    """The I/O limits on one device in one cgroup: v1 blkio.throttle.* or v2
    io.max, as {"riops", "wiops", "rbps", "wbps"}; unlimited ones left out."""
    out: dict[str, int] = {}
    if v1:
        for key, f in (("riops", "read_iops_device"), ("wiops", "write_iops_device"),
                       ("rbps", "read_bps_device"), ("wbps", "write_bps_device")):
            for line in (cgroup / f"blkio.throttle.{f}").read_text().splitlines():
                dev, _, value = line.partition(" ")
                if dev == majmin and int(value) > 0:
                    out[key] = int(value)
    else:
        for line in (cgroup / "io.max").read_text().splitlines():
            dev, _, rest = line.partition(" ")
            if dev == majmin:
                for kv in rest.split():
                    k, _, v = kv.partition("=")
                    if v != "max":
                        out[k] = int(v)
    return out


def _pod_io_limits(uid: str, majmin: str) -> dict[str, int]:
    """The I/O limits on one device in a pod's cgroup."""
    cgroup, v1 = _pod_cgroup(uid)
    return _io_limits_in(cgroup, v1, majmin)


def _container_io_limits(uid: str, majmin: str) -> list[dict[str, int]] | None:
    """On cgroup v1 (where limits are not hierarchical), the limits in each
    container cgroup below the pod's; None on v2 (the pod's rule holds)."""
    cgroup, v1 = _pod_cgroup(uid)
    if not v1:
        return None
    return [_io_limits_in(d, True, majmin) for d in sorted(cgroup.iterdir()) if d.is_dir()]


def csi_raw_block(c: Cluster) -> None:
    """volumeMode: Block through the real kubelet: bytes written to the device
    are there for the next pod."""
    c.apply(pvc("blk", sc="loopvol-block", size="64Mi", block=True))
    dev = [{"name": "v", "devicePath": "/dev/xvda"}]
    c.run_pod(pod("blk-writer", "set -e; test -b /dev/xvda; echo block-data | dd of=/dev/xvda conv=fsync 2>/dev/null",
                  [pvc_vol("blk")], mounts_=[], devices=dev))
    c.run_pod(pod("blk-reader", "set -e; test \"$(head -c 10 /dev/xvda)\" = block-data", [pvc_vol("blk")],
                  mounts_=[], devices=dev))
    c.delete("pvc", "blk")
    _wait_no_pvs(c)


def csi_ephemeral_inline(c: Cluster) -> None:
    """A CSI ephemeral inline volume lives and dies with its pod."""
    vol = {"name": "v", "csi": {"driver": DRIVER, "volumeAttributes": {"size": "400Mi", "fsType": "xfs"}}}
    p = c.start_pod(pod("scratch", "set -e; grep ' /data xfs ' /proc/mounts; echo ready; sleep 3600", [vol]))
    check(list((c.pool / "volumes").glob("*.img")), "the ephemeral volume has an image while the pod runs")
    check(p["status"]["phase"] == "Running", "running")
    c.delete("pod", "scratch")
    wait_until("ephemeral image removed", lambda: not list((c.pool / "volumes").glob("*.img")), timeout=60)


def csi_volume_group_snapshot(c: Cluster) -> None:
    """A VolumeGroupSnapshot of two labelled PVCs; one is restored from its
    member snapshot.

    csi-snapshotter v8.6.0 with --node-deployment (how deploy/ runs it, and
    the kit's node snapshotter here) never handles a VolumeGroupSnapshotContent:
    it gets no managed-by node label, and the group content waits forever
    (seen in this tier). On
    this one-node cluster a second, cluster-wide snapshotter is started for
    the case, which tests the driver's GroupController through the real
    sidecars; deploy/ has no such snapshotter yet."""
    c.kit("sidecar", str(c.dir), "csi-snapshotter", f"--csi-address={c.socket}", "--leader-election=false",
          "--feature-gates=CSIVolumeGroupSnapshot=true", env={"KIT_SIDECAR_ID": "csi-snapshotter-group"})
    try:
        _group_snapshot(c)
    finally:
        c.kit("stop", str(c.dir), "csi-snapshotter-group", check_rc=False)


def _group_snapshot(c: Cluster) -> None:
    c.apply(pvc("g-data", labels={"group": "g1"}), pvc("g-wal", sc="loopvol-xfs", size="400Mi", labels={"group": "g1"}))
    c.run_pod(pod("g-writer", "set -e; echo group-d > /d/f; echo group-w > /w/f; sync",
                  [pvc_vol("g-data", "d"), pvc_vol("g-wal", "w")],
                  [{"name": "d", "mountPath": "/d"}, {"name": "w", "mountPath": "/w"}]))
    c.apply({"apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot", "metadata": {"name": "gs"},
             "spec": {"volumeGroupSnapshotClassName": "loopvol",
                      "source": {"selector": {"matchLabels": {"group": "g1"}}}}})
    gs = wait_until("group snapshot ready",
                    lambda: (lambda g: g if (g or {}).get("status", {}).get("readyToUse") else None)(
                        c.get("volumegroupsnapshot", "gs")), timeout=120)
    snaps = json.loads(c.kubectl("get", "volumesnapshots", "-o", "json"))["items"]
    members = {s["spec"]["source"].get("persistentVolumeClaimName"): s["metadata"]["name"] for s in snaps}
    check({"g-data", "g-wal"} <= set(members), f"one member snapshot per PVC: {members} ({gs['status']})")
    c.apply(pvc("g-restored", source={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                      "name": members["g-data"]}))
    c.run_pod(pod("g-reader", "set -e; test \"$(cat /data/f)\" = group-d", [pvc_vol("g-restored")]))
    c.delete("pvc", "g-restored")
    c.delete("volumegroupsnapshot", "gs")
    c.delete("pvc", "g-data", "g-wal")
    _wait_no_pvs(c)
    wait_until("member snapshots removed", lambda: not json.loads(c.kubectl("get", "volumesnapshots", "-o", "json"))["items"],
               timeout=60)
    wait_until("snapshot images removed", lambda: not list((c.pool / "snapshots").glob("*.img")), timeout=60)


def flex_pv_migrated_to_csi_live(c: Cluster) -> None:
    """A FlexVolume PV in use is migrated to CSI with `loopvol-csi
    migrate-flexvolume` (the live PV object piped in), and its data is there."""
    flex_pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "flex-pv"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                        "flexVolume": {"driver": FLEX_DRIVER, "fsType": "ext4",
                                       "options": {"volumeID": "e2e-flex-pv", "size": "1Gi"}},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [c.node]}]}]}}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "flex-pv"},
             "spec": {"storageClassName": "", "volumeName": "flex-pv", "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    c.apply(flex_pv, claim)
    c.run_pod(pod("flex-pv-writer", "set -e; grep ' /data ext4 ' /proc/mounts; echo migrate-me > /data/f; sync",
                  [pvc_vol("flex-pv")]))
    live = c.kubectl("get", "pv", "flex-pv", "-o", "yaml")
    out = subprocess.run([str(c.exe_dir / "loopvol-csi"), "--pool", str(c.pool), "migrate-flexvolume"],
                         input=live, capture_output=True, text=True)
    check(out.returncode == 0, f"migrate-flexvolume: {out.stderr}")
    check("volumeHandle: e2e-flex-pv" in out.stdout, f"the CSI PV takes over the volume: {out.stdout}")
    c.delete("pvc", "flex-pv")
    c.delete("pv", "flex-pv")
    c.kubectl("apply", "-f", "-", input=out.stdout)
    csi_pv = next(d for d in _yaml_names(out.stdout))
    c.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "flex-pv"},
             "spec": {"storageClassName": c.get("pv", csi_pv, ns=None)["spec"].get("storageClassName", ""),
                      "volumeName": csi_pv, "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}})
    c.run_pod(pod("flex-pv-reader", "set -e; test \"$(cat /data/f)\" = migrate-me", [pvc_vol("flex-pv")]))
    check(c.get("pv", csi_pv, ns=None)["spec"]["csi"]["driver"] == DRIVER, "now a CSI volume")
    c.delete("pvc", "flex-pv")
    c.delete("pv", csi_pv)
    c.forget_flex_volume("e2e-flex-pv")


def _flex_pv(name: str, vol_id: str, fs: str, size: str, node: str, sc: str = "") -> list[dict]:
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
          "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": sc,
                   "flexVolume": {"driver": FLEX_DRIVER, "fsType": fs, "options": {"volumeID": vol_id, "size": size}},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
             "spec": {"storageClassName": sc, "volumeName": name, "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": size}}}}
    return [pv, claim]


def flex_pv_expansion(c: Cluster) -> None:
    """FlexVolume PVs grow when their PVC asks for more: kube-controller-manager
    calls expandvolume, kubelet expandfs. xfs grows online; ext4 (no
    CAP_SYS_RESOURCE here) when the volume is next mounted."""
    c.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "flex-expand"},
             "provisioner": "kubernetes.io/no-provisioner", "allowVolumeExpansion": True,
             "volumeBindingMode": "Immediate"},
            *_flex_pv("flex-xfs", "e2e-flex-gx", "xfs", "400Mi", c.node, "flex-expand"),
            *_flex_pv("flex-e4", "e2e-flex-ge", "ext4", "256Mi", c.node, "flex-expand"))
    vols = [pvc_vol("flex-xfs", "x"), pvc_vol("flex-e4", "e")]
    p = c.start_pod(pod("flex-grow", "echo ready; sleep 3600", vols,
                        [{"name": "x", "mountPath": "/x"}, {"name": "e", "mountPath": "/e"}]))
    xmnt = c.pod_volume_dir(p, "loopvol~loopvol", "flex-xfs")
    check(_fs_bytes(xmnt) < 450 * MI, f"xfs starts at 400Mi: {_fs_bytes(xmnt)}")
    for claim in ("flex-xfs", "flex-e4"):
        c.kubectl("patch", "pvc", claim, "-p", '{"spec":{"resources":{"requests":{"storage":"800Mi"}}}}')
    wait_until("xfs grown online", lambda: _fs_bytes(xmnt) > 700 * MI, timeout=120)
    # kubelet's expandfs grows the ext4 image too; its online growth is
    # refused here (EPERM), which kubelet retries while the pod keeps running.
    image = c.pool / "volumes" / "e2e-flex-ge.img"
    wait_until("ext4 image grown by expandfs", lambda: image.stat().st_size >= 800 * MI, timeout=120)
    check(c.get("pod", "flex-grow")["status"]["phase"] == "Running", "the pod kept running")
    c.delete("pod", "flex-grow")
    c.run_pod(pod("flex-grown", "set -e; df -k /x /e; test $(df -k /e | awk 'NR==2 {print $2}') -gt 700000; "
                  "test $(df -k /x | awk 'NR==2 {print $2}') -gt 700000", vols,
                  [{"name": "x", "mountPath": "/x"}, {"name": "e", "mountPath": "/e"}]))
    c.delete("pvc", "flex-xfs", "flex-e4")
    c.delete("pv", "flex-xfs", "flex-e4")
    c.delete("storageclass", "flex-expand")
    c.forget_flex_volume("e2e-flex-gx")
    c.forget_flex_volume("e2e-flex-ge")


def csi_driver_restarted_under_running_pods(c: Cluster) -> None:
    """loopvol-csi restarts while a pod uses its volume: the mount keeps
    working, and after the restart the driver unpublishes and deletes it."""
    c.apply(pvc("steady"))
    p = c.start_pod(pod("steady", "echo ready; sleep 3600", [pvc_vol("steady")]))
    pv = c.get("pvc", "steady")["spec"]["volumeName"]
    mnt = c.pod_volume_dir(p, "kubernetes.io~csi", pv) / "mount"
    (mnt / "before").write_text("1")
    c.stop_driver()
    c.start_driver()
    _restart_sidecars_after_driver(c)
    (mnt / "after").write_text("2")
    check((mnt / "before").read_text() == "1", "data written before the restart is there")
    check(c.get("pod", "steady")["status"]["phase"] == "Running", "the pod kept running")
    wait_until("Probe answers after the restart", lambda: c.alive("loopvol-csi") and c.alive("livenessprobe"), timeout=30)
    c.delete("pod", "steady")
    c.run_pod(pod("steady-check", "set -e; test -f /data/before && test -f /data/after", [pvc_vol("steady")]))
    c.delete("pvc", "steady")
    _wait_no_pvs(c)


def _restart_sidecars_after_driver(c: Cluster) -> None:
    """The sidecars that exit when the driver goes away restart, as in a pod."""
    try:
        wait_until("the sidecars noticed the restart", lambda: not c.alive("csi-provisioner"), timeout=10)
    except CaseFailed:
        pass  # a provisioner that reconnects is fine too
    restarted = c.restart_exited_sidecars()
    log(f"restarted sidecars: {restarted}")


def flex_survives_kubelet_restart(c: Cluster) -> None:
    """kubelet restarts under a pod with a FlexVolume inline volume: the
    mount stays, and the restarted kubelet tears it down on pod delete."""
    p = c.start_pod(pod("flex-steady", "echo ready; sleep 3600", [flex_vol("v", "e2e-flex-kr", "xfs", "400Mi")]))
    mnt = c.pod_volume_dir(p, "loopvol~loopvol", "v")
    check(str(mnt) in mounts(), f"{mnt} is mounted")
    restart_kubelet(c)
    wait_until("node Ready again", lambda: '"Ready"' in c.kubectl("get", "node", c.node, "-o", "json") and
               _node_ready(c), timeout=90)
    check(str(mnt) in mounts(), "the mount survived the kubelet restart")
    check(c.get("pod", "flex-steady")["status"]["phase"] == "Running", "the pod kept running")
    c.delete("pod", "flex-steady")
    wait_until("unmounted by the restarted kubelet", lambda: str(mnt) not in mounts(), timeout=60)
    c.forget_flex_volume("e2e-flex-kr")


def restart_kubelet(c: Cluster) -> None:
    pidfile = c.dir / "pids" / "kubelet.pid"
    pid = int(pidfile.read_text().split()[0])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    os.kill(pid, signal.SIGTERM)
    wait_until("kubelet stopped", lambda: not Path(f"/proc/{pid}").exists() or _proc_state(str(pid)) == "Z", timeout=30)
    c.kit("run", str(c.dir), "kubelet", *[a.decode() for a in argv],
          env={k.decode(): v.decode() for k, v in env.items()})


def _node_ready(c: Cluster) -> bool:
    node = json.loads(c.kubectl("get", "node", c.node, "-o", "json"))
    return any(x["type"] == "Ready" and x["status"] == "True" for x in node["status"]["conditions"])


def _wait_no_pvs(c: Cluster) -> None:
    wait_until("all PVs deleted", lambda: not json.loads(c.kubectl("get", "pv", "-o", "json"))["items"], timeout=90)


def _yaml_names(text: str):
    for line in text.splitlines():
        if line.startswith("  name: "):
            yield line.split(":", 1)[1].strip()


def _fs_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _quantity(q: str) -> float:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for u, m in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * m
    return float(q)


CASES = [
    csi_concurrent_liveness_probes,
    csi_grpc_core_client_is_served,
    csi_dynamic_provisioning_keeps_data,
    flex_inline_ext4_xfs_fsgroup_readonly,
    csi_snapshot_restore_and_clone,
    csi_expansion_xfs_online,
    csi_expansion_ext4_grows_at_next_stage,
    csi_modify_volume_reaches_the_node,
    csi_raw_block,
    csi_ephemeral_inline,
    flex_bad_option_is_a_pod_event,
    csi_volume_group_snapshot,
    flex_pv_migrated_to_csi_live,
    flex_pv_expansion,
    csi_driver_restarted_under_running_pods,
    flex_survives_kubelet_restart,
]


# ----------------------------------------------------------------- the runner


def cleanup_after_failure(c: Cluster) -> None:
    """Deletes whatever a failed case left, so the next case starts clean.
    Objects whose finalizers a stuck sidecar would never remove (a group
    snapshot that never became ready) lose them after a short wait."""
    kinds = ["pod", "volumegroupsnapshot", "volumesnapshot", "pvc"]
    for kind in kinds:
        c.kubectl("delete", kind, "--all", "--wait=false", check_rc=False)
    stuck = kinds + ["volumegroupsnapshotcontent", "volumesnapshotcontent", "pv"]

    def gone():
        return not c.kubectl("get", ",".join(kinds), "-o", "name", check_rc=False).strip()

    try:
        wait_until("objects of the failed case deleted", gone, timeout=30)
    except CaseFailed:
        for kind in stuck:
            for name in c.kubectl("get", kind, "-o", "name", check_rc=False).split():
                c.kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check_rc=False)
    for kind in ("volumegroupsnapshotcontent", "volumesnapshotcontent", "pv"):
        c.kubectl("delete", kind, "--all", "--wait=true", "--timeout=30s", check_rc=False)
    try:
        wait_until("leftovers gone", lambda: not [x for x in c.leftovers() if not x.startswith("image")], timeout=60)
    except CaseFailed:
        pass
    # Images of FlexVolume volumes and retained PVs: nothing deletes them.
    for sub in ("volumes", "snapshots"):
        for f in (c.pool / sub).glob("*"):
            if not any(b == str(f) for _, b in loop_devices()):
                f.unlink()


def main() -> int:
    if not (KIT / "cluster.sh").exists():
        skip(f"{KIT} not found (cluster kit missing)")
    if os.geteuid() != 0:
        skip("not running as root")
    wanted = set(sys.argv[1:])
    cases = [f for f in CASES if not wanted or f.__name__ in wanted]
    if wanted - {f.__name__ for f in CASES}:
        print(f"unknown cases: {sorted(wanted - {f.__name__ for f in CASES})}", file=sys.stderr)
        return 2
    profile = os.environ.get("LOOPVOL_E2E_PROFILE", "debug")
    build = ["cargo", "build", "--locked", "-p", "loopvol-csi", "-p", "loopvol-flexvolume"]
    if profile == "release":
        build.append("--release")
    subprocess.run(build, cwd=ROOT, check=True)
    exe_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / profile

    started = time.monotonic()
    results: list[tuple[str, bool, float]] = []
    c = Cluster(exe_dir)
    ok_setup = False
    try:
        try:
            c.up()
            c.start_driver()
            c.start_central_controller()
            c.start_sidecars()
            for f in ("csidriver.yaml", "storageclasses.yaml", "snapshotclasses.yaml"):
                c.kubectl("apply", "-f", str(ROOT / "deploy/kubernetes/base/csi" / f))
            c.install_flex()
            wait_until("CSINode lists loopvol", lambda: DRIVER in c.kubectl("get", "csinode", c.node, "-o", "json"),
                       timeout=60)
            ok_setup = True
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            results.append(("setup", False, time.monotonic() - started))
        if ok_setup:
            for case in cases:
                log(f"--- {case.__name__}")
                t = time.monotonic()
                ok = True
                try:
                    case(c)
                    # Teardown is asynchronous (kubelet unmounts after the pod
                    # object is gone): wait, bounded, for nothing to be left.
                    wait_until("nothing of the case left", lambda: not c.leftovers(), timeout=60)
                except Exception as e:  # noqa: BLE001
                    ok = False
                    print(f"FAILED {case.__name__}: {e}", flush=True)
                    if not isinstance(e, CaseFailed):
                        traceback.print_exc()
                if not ok:
                    if c.leftovers():
                        print(f"  leftovers: {c.leftovers()}", flush=True)
                    cleanup_after_failure(c)
                elapsed = time.monotonic() - t
                results.append((case.__name__, ok, elapsed))
                log(f"{'ok  ' if ok else 'FAIL'} {case.__name__} ({elapsed:.1f}s)")
            # Every sidecar must still run: csi-resizer exits when its first
            # Probe fails, and concurrent Probes used to collide (issue 13).
            dead = [s for s in c.sidecars if not c.alive(s)]
            results.append(("sidecars_still_running", not dead, 0.0))
            if dead:
                print(f"FAILED sidecars_still_running: {dead} exited", flush=True)
    finally:
        if not all(ok for _, ok, _ in results):
            keep = ROOT / "target" / "e2e-logs"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(c.dir / "logs", keep, dirs_exist_ok=True) if (c.dir / "logs").exists() else None
            log(f"cluster logs kept in {keep}")
        c.down()
        stray_mounts = [m for m in mounts() if m.startswith(f"{c.dir}/")]
        stray_loops = [f"{d} -> {b}" for d, b in loop_devices() if b.startswith(f"{c.dir}/")]
        if stray_mounts or stray_loops:
            results.append(("clean_after_down", False, 0.0))
            print(f"FAILED clean_after_down: mounts {stray_mounts} loops {stray_loops}", flush=True)
        elif os.environ.get("LOOPVOL_E2E_KEEP") != "1":
            shutil.rmtree(c.dir, ignore_errors=True)

    total = time.monotonic() - started
    print("\ncase wall times:")
    for name, ok, secs in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<45} {secs:6.1f}s")
    print(f"  total (with cluster up/down): {total:.1f}s")
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"e2e: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
